"""PostgreSQL for the state that replicas share (`RAGSERVE_DATABASE_URL`): a psycopg 3 connection
pool, transactions, notifications, and versioned schema migrations.

Each component owns its tables and their migrations (a list of steps, applied in order, each once):
indexer/pg_documents.py, service/application/pg_jobqueue.py, service/application/pg_replicas.py.
`migrate` applies what a database lacks in one transaction under an advisory lock, so replicas
that start at once wait for each other and exactly one applies each step; a database migrated by
a newer ragserve is refused rather than written with an older schema in mind.

Times are the server's clock (`NOW`, Unix seconds), so replicas on machines whose clocks disagree
still agree on leases and heartbeats.

psycopg is an optional dependency (`pip install 'ragserve[postgres]'`); nothing imports this
module unless a database URL is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

NOW = "extract(epoch from clock_timestamp())::double precision"  # the server's clock, Unix seconds
CHANNEL = "ragserve_changes"  # one notification channel; the payload names the index that changed
MIGRATION_LOCK = 0x72616773  # the advisory lock migrations run under ('rags')
# advisory lock namespaces (the first key of pg_advisory_xact_lock(int, int)); the second is hashtext(index)
DOCUMENTS_LOCK = 1
JOBS_LOCK = 2
EDITS_LOCK = 3
CONNECT_TIMEOUT_S = 10
# Text in UTF-8 whatever the database's encoding: psycopg hands text of a SQL_ASCII database (the
# default of an initdb without a locale) back as bytes, which no store expects.
CONNECT_OPTIONS: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "client_encoding": "UTF8"}
POOL_WAIT_S = 5.0  # the longest a request waits for a connection before it is answered 503

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS ragserve_migrations (
    component text NOT NULL,
    version integer NOT NULL,
    applied_at double precision NOT NULL,
    PRIMARY KEY (component, version)
)
"""


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer ragserve than this one."""


def redacted(url: str) -> str:
    """`url` without its password, for logs and errors."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


class Database:
    """A pool of connections to one PostgreSQL database."""

    def __init__(self, url: str, pool_max: int) -> None:
        from psycopg_pool import ConnectionPool

        self.url = url
        self.pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_max,
            kwargs={**CONNECT_OPTIONS, "application_name": "ragserve"},
            timeout=POOL_WAIT_S,  # for a free connection, or a new one: a server that is down fails fast
            # a connection the server dropped (a restart, a failover) is replaced before it is
            # handed out, instead of failing the first request after the server is back
            check=ConnectionPool.check_connection,
            open=False,
            name="ragserve",
        )
        self.pool.open(wait=True, timeout=30)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection in a transaction: committed when the block ends, rolled back on error."""
        with self.pool.connection() as conn, conn.transaction():
            yield conn

    def listener(self, channel: str = CHANNEL) -> psycopg.Connection[Any]:
        """A connection of its own (not from the pool) that LISTENs on `channel`."""
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True, **CONNECT_OPTIONS, application_name="ragserve-listen")
        conn.execute(f"LISTEN {channel}")
        return conn

    def migrate(self, component: str, steps: Sequence[str]) -> list[int]:
        """Apply the steps of `component` that the database lacks (step i is version i + 1), in one
        transaction; returns the versions applied."""
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(MIGRATIONS_TABLE)
            rows = conn.execute("SELECT version FROM ragserve_migrations WHERE component = %s", (component,))
            done = {version for (version,) in rows}
            if done and max(done) > len(steps):
                raise SchemaTooNewError(
                    f"the database's {component!r} tables are at schema version {max(done)}, newer than this "
                    f"ragserve knows ({len(steps)}): run the newer ragserve, or another database"
                )
            applied = []
            for version, step in enumerate(steps, start=1):
                if version in done:
                    continue
                conn.execute(step.encode())  # bytes: several statements, no parameters
                conn.execute(
                    f"INSERT INTO ragserve_migrations VALUES (%s, %s, {NOW})",
                    (component, version),
                )
                applied.append(version)
        if applied:
            log.info("migrated %s tables to schema version %d", component, len(steps))
        return applied

    def close(self) -> None:
        self.pool.close()
