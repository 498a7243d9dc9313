"""SQLite sessions for the stores that keep state in a database file (the document table, the job
queue): a connection per operation, one transaction, closed afterwards. Also what counts as the
storage failing (`is_storage_error`), which callers retry instead of blaming the request."""

import sqlite3
from collections.abc import Iterator, Mapping
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


def is_storage_error(exc: BaseException) -> bool:
    """Whether `exc` is the storage failing rather than the work being wrong: a full disk, an I/O
    error, a locked or damaged database file. Such work may succeed once the disk is back, so it
    is retried; a constraint or programming error of SQLite would fail the same way again."""
    if isinstance(exc, sqlite3.OperationalError):  # "database or disk is full", "disk I/O error", locked
        return True
    if isinstance(exc, sqlite3.DatabaseError):  # its subclasses (IntegrityError, ...) are the caller's fault
        return type(exc) is sqlite3.DatabaseError  # "database disk image is malformed"
    return isinstance(exc, OSError)  # ENOSPC, EIO, ... from plain files


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
