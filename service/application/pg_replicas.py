"""The serving pointer, the replica list and change notifications in PostgreSQL, for replicas on
several machines (the interfaces of service/application/replicas.py).

The pointer is a row per index, changed in a transaction that also notifies every replica
(NOTIFY is delivered at commit, so a replica that hears of a change reads it). Document batches
notify on the same channel (indexer/pg_documents.py). Notifications are a shortcut, not the
truth: a replica also polls, so one that missed a notification (its connection dropped) is late
by at most the poll interval.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from ragserve.postgres import CHANNEL, NOW, Database
from service.application.replicas import FORGET_AFTER_S, ReplicaState

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

MIGRATIONS = [
    """
    CREATE TABLE ragserve_serving (
        index_name text PRIMARY KEY,
        version text NOT NULL,
        updated_at double precision NOT NULL
    );
    CREATE TABLE ragserve_replicas (
        id text PRIMARY KEY,
        index_name text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        version text NOT NULL,
        seq bigint NOT NULL,
        state text NOT NULL,
        started_at double precision NOT NULL,
        heartbeat_at double precision NOT NULL
    );
    CREATE INDEX ragserve_replicas_heartbeat ON ragserve_replicas (index_name, heartbeat_at);
    """,
]


def migrate(db: Database) -> None:
    db.migrate("replicas", MIGRATIONS)


class PostgresPointer:
    def __init__(self, db: Database, index_name: str) -> None:
        self.db = db
        self.index_name = index_name
        migrate(db)

    def get(self) -> str | None:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT version FROM ragserve_serving WHERE index_name = %s", (self.index_name,))
            found = row.fetchone()
        return str(found[0]) if found else None

    def set(self, version: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                f"INSERT INTO ragserve_serving VALUES (%s, %s, {NOW}) ON CONFLICT (index_name) "
                "DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                (self.index_name, version),
            )
            self._notify(conn)

    def replace(self, expected: str | None, version: str) -> bool:
        with self.db.transaction() as conn:
            if expected is None:
                cursor = conn.execute(
                    f"INSERT INTO ragserve_serving VALUES (%s, %s, {NOW}) ON CONFLICT (index_name) DO NOTHING",
                    (self.index_name, version),
                )
            else:
                cursor = conn.execute(
                    f"UPDATE ragserve_serving SET version = %s, updated_at = {NOW} "
                    "WHERE index_name = %s AND version = %s",
                    (version, self.index_name, expected),
                )
            if cursor.rowcount != 1:
                return False
            self._notify(conn)
            return True

    def _notify(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.index_name))


class PostgresReplicaBoard:
    def __init__(self, db: Database, index_name: str) -> None:
        self.db = db
        self.index_name = index_name
        migrate(db)

    def beat(self, replica: ReplicaState) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO ragserve_replicas VALUES "
                f"(%s, %s, %s, %s, %s, %s, %s, %s, {NOW}) ON CONFLICT (id) DO UPDATE SET "
                "version = excluded.version, seq = excluded.seq, state = excluded.state, "
                "heartbeat_at = excluded.heartbeat_at",
                (
                    replica.id,
                    self.index_name,
                    replica.host,
                    replica.pid,
                    replica.version,
                    replica.seq,
                    replica.state,
                    replica.started_at,
                ),
            )
            conn.execute(f"DELETE FROM ragserve_replicas WHERE heartbeat_at < {NOW} - %s", (FORGET_AFTER_S,))

    def live(self, within_s: float) -> list[ReplicaState]:
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT id, host, pid, version, seq, state, started_at, heartbeat_at FROM ragserve_replicas "
                f"WHERE index_name = %s AND heartbeat_at >= {NOW} - %s ORDER BY started_at",
                (self.index_name, within_s),
            ).fetchall()
        return [ReplicaState(*row) for row in rows]

    def leave(self, replica_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM ragserve_replicas WHERE id = %s", (replica_id,))


class PostgresSignals:
    """Notifications for one index, on a connection of their own; reconnects when it drops."""

    def __init__(self, db: Database, index_name: str) -> None:
        self.db = db
        self.index_name = index_name
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = threading.Event()

    def wait(self, timeout_s: float) -> bool:
        if self._closed.is_set():
            return False
        try:
            if self._conn is None:
                self._conn = self.db.listener()
                return True  # changes may have come while it was not listening: look now
            notes = self._conn.notifies(timeout=timeout_s, stop_after=1)
            return any(note.payload == self.index_name for note in notes)
        except Exception as exc:  # the server restarted, the network dropped: poll until it is back
            log.warning("listening for changes failed (%s): polling until it reconnects", exc)
            self._drop()
            self._closed.wait(timeout_s)
            return False

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:
                log.debug("closing the listener: %s", exc)

    def close(self) -> None:
        self._closed.set()
        self._drop()
