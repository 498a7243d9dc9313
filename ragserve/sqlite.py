"""SQLite sessions for the stores that keep state in a database file (the document table, the job
queue, the replica list): a connection per operation, one transaction, closed afterwards. A
writing session (`write=True`) takes the database's write lock when it begins, so read-then-write
transactions of several processes on one file run one after another instead of failing midway.
What counts as the storage failing is ragserve/storage.py's `is_storage_error`."""

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def session(path: Path, write: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection in a transaction that commits when the block ends (rolls back on error);
    `write`: the transaction holds the write lock from its first statement (BEGIN IMMEDIATE)."""
    db = sqlite3.connect(path, timeout=30)
    try:
        with db:
            if write:
                db.execute("BEGIN IMMEDIATE")
            yield db
    finally:
        db.close()


def create(
    path: Path,
    schema: str,
    table: str,
    migrations: dict[str, str],
    indexes: str,
    backfill: Mapping[str, str] | None = None,
) -> list[str]:
    """Create `table` (write-ahead log on), add the columns of `migrations` (name -> definition)
    that a table created before them lacks, then the indexes; returns the columns added.

    `backfill` (column -> statement) fills a column that was just added for the rows that
    predate it; the statement runs in the same transaction as the `ALTER TABLE`, so it runs
    exactly once: a crash in between leaves neither."""
    with session(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
        db.execute("BEGIN IMMEDIATE")
        added = add_missing_columns(db, table, migrations)
        for column in added:
            if backfill and column in backfill:
                db.execute(backfill[column])
        db.commit()
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
