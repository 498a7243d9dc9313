"""SQLite sessions for the stores that keep state in a database file (the document table, the job
queue): a connection per operation, one transaction, closed afterwards."""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def session(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection in a transaction that commits when the block ends (rolls back on error)."""
    db = sqlite3.connect(path, timeout=30)
    try:
        with db:
            yield db
    finally:
        db.close()


def create(path: Path, schema: str, table: str, migrations: dict[str, str], indexes: str) -> list[str]:
    """Create `table` (write-ahead log on), add the columns of `migrations` (name -> definition)
    that a table created before them lacks, then the indexes; returns the columns added."""
    with session(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
        added = add_missing_columns(db, table, migrations)
        db.executescript(indexes)
    return added


def add_missing_columns(db: sqlite3.Connection, table: str, columns: dict[str, str]) -> list[str]:
    """`ALTER TABLE ... ADD COLUMN` for each column of `columns` (name -> definition) that the
    table, created before the column existed, lacks; returns the columns added."""
    present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    added = [name for name in columns if name not in present]
    for name in added:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {columns[name]}")
    return added
