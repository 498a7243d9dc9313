"""The edit table in PostgreSQL, for replicas that share one: the interface and the rules of the
SQLite table (indexer/edits.py), one row per (index, edit id). Changes take the index's edit
lock (so the change counter grows in commit order) and notify the replicas at commit, on the
channel the document changes use, so every replica applies an edit at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from indexer.edits import (
    COLUMNS,
    Edit,
    EditChanges,
    EditVector,
    NewEdit,
    changes_of,
    edits_of,
    new_edit_id,
    too_many,
)
from ragserve.postgres import CHANNEL, EDITS_LOCK, NOW, Database

if TYPE_CHECKING:
    import psycopg

MIGRATIONS = [
    """
    CREATE TABLE ragserve_edits (
        index_name text NOT NULL,
        id text NOT NULL,
        question text NOT NULL,
        answer text NOT NULL,
        statement text,
        note text,
        created_by text NOT NULL,
        created_at double precision NOT NULL,
        deleted_by text,
        deleted_at double precision,
        seq bigint NOT NULL,
        PRIMARY KEY (index_name, id)
    );
    CREATE INDEX ragserve_edits_seq ON ragserve_edits (index_name, seq);
    """,
    "ALTER TABLE ragserve_edits ADD COLUMN vector_model text, ADD COLUMN vector bytea;",  # indexer/edits.py EditVector
]


class PostgresEditStore:
    def __init__(self, db: Database, index_name: str) -> None:
        self.db = db
        self.index_name = index_name
        db.migrate("edits", MIGRATIONS)

    def create(self, edit: NewEdit, actor: str, limit: int, vector: EditVector | None = None) -> Edit:
        with self.db.transaction() as conn:
            seq = self._lock(conn)
            live = conn.execute(
                "SELECT COUNT(*) FROM ragserve_edits WHERE index_name = %s AND deleted_at IS NULL", (self.index_name,)
            ).fetchone()
            assert live is not None
            if live[0] >= limit:
                raise too_many(limit)
            text = (edit.question, edit.answer, edit.statement, edit.note)
            stored = (vector.model, vector.data) if vector else (None, None)
            row = conn.execute(
                f"INSERT INTO ragserve_edits (index_name, {COLUMNS}) "
                f"VALUES (%s, %s, %s, %s, %s, %s, %s, {NOW}, NULL, NULL, %s, %s, %s) RETURNING {COLUMNS}",
                (self.index_name, new_edit_id(), *text, actor, seq + 1, *stored),
            )
            created = edits_of(row)[0]
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.index_name))
        return created

    def delete(self, edit_id: str, actor: str) -> Edit | None:
        with self.db.transaction() as conn:
            seq = self._lock(conn)
            rows = conn.execute(
                f"UPDATE ragserve_edits SET deleted_by = %s, deleted_at = {NOW}, seq = %s "
                f"WHERE index_name = %s AND id = %s AND deleted_at IS NULL RETURNING {COLUMNS}",
                (actor, seq + 1, self.index_name, edit_id),
            )
            found = edits_of(rows)
            if found:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.index_name))
        return found[0] if found else None

    def get(self, edit_id: str) -> Edit | None:
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM ragserve_edits WHERE index_name = %s AND id = %s", (self.index_name, edit_id)
            )
            found = edits_of(rows)
        return found[0] if found else None

    def list(self, include_deleted: bool, after: str | None, limit: int) -> list[Edit]:
        live = "" if include_deleted else "AND deleted_at IS NULL"
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM ragserve_edits WHERE index_name = %s AND id > %s {live} ORDER BY id LIMIT %s",
                (self.index_name, after or "", limit),
            )
            return edits_of(rows)

    def changes_since(self, seq: int) -> EditChanges:
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM ragserve_edits WHERE index_name = %s AND seq > %s ORDER BY seq",
                (self.index_name, seq),
            )
            return changes_of(edits_of(rows), seq)

    def head(self) -> int:
        with self.db.transaction() as conn:
            return self._head(conn)

    def _lock(self, conn: psycopg.Connection[Any]) -> int:
        """Take the index's edit lock for this transaction; the counter's value now."""
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (EDITS_LOCK, self.index_name))
        return self._head(conn)

    def _head(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM ragserve_edits WHERE index_name = %s", (self.index_name,)
        ).fetchone()
        assert row is not None
        return int(row[0])
