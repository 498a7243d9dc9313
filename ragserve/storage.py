"""What counts as the storage failing rather than the work being wrong, for every store the
service keeps state in (SQLite files, PostgreSQL, plain files). Such work may succeed once the
storage is back, so callers retry it instead of blaming the request."""

import sqlite3


def is_storage_error(exc: BaseException) -> bool:
    """A full disk, an I/O error, a locked or damaged database file, a database server that is
    down, restarting or unreachable. A constraint or programming error would fail the same way
    again, so it is not one."""
    if isinstance(exc, sqlite3.OperationalError):  # "database or disk is full", "disk I/O error", locked
        return True
    if isinstance(exc, sqlite3.DatabaseError):  # its subclasses (IntegrityError, ...) are the caller's fault
        return type(exc) is sqlite3.DatabaseError  # "database disk image is malformed"
    if _is_postgres_unavailable(exc):
        return True
    return isinstance(exc, OSError)  # ENOSPC, EIO, ... from plain files


def _is_postgres_unavailable(exc: BaseException) -> bool:
    """Connection lost or refused, server shutting down, disk full, pool exhausted, a deadlock or
    serialization failure: psycopg's OperationalError covers them all (and InterfaceError a
    connection closed under us). Without psycopg installed there is no such error."""
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
