"""The document table in PostgreSQL, for replicas that share one: the same interface and the same
rules as the SQLite table (indexer/documents.py), one row per (index, document id).

A batch is applied under a transaction-scoped advisory lock of its index, so batches commit one
after another and the change counter grows in commit order: a replica that follows the table with
`changes_since(last seen)` can never skip a change that commits late. Each batch notifies the
replicas (NOTIFY, delivered at commit) so they catch up at once instead of at their next poll.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from indexer.documents import CHANGE_COLUMNS, Applied, Changes, changes_of, content_sha256
from ragserve.postgres import CHANNEL, DOCUMENTS_LOCK, NOW, Database
from ragserve.types import Document

if TYPE_CHECKING:
    import psycopg

MIGRATIONS = [
    """
    CREATE TABLE ragserve_documents (
        index_name text NOT NULL,
        id text NOT NULL,
        title text NOT NULL,
        text text NOT NULL,
        metadata text NOT NULL,
        sha256 text NOT NULL,
        deleted boolean NOT NULL DEFAULT false,
        updated_at double precision NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY (index_name, id)
    );
    CREATE INDEX ragserve_documents_seq ON ragserve_documents (index_name, seq);
    """,
]

UPSERT = f"""
INSERT INTO ragserve_documents (index_name, id, title, text, metadata, sha256, deleted, updated_at, seq)
VALUES (%s, %s, %s, %s, %s, %s, %s, {NOW}, %s)
ON CONFLICT (index_name, id) DO UPDATE SET title = excluded.title, text = excluded.text,
    metadata = excluded.metadata, sha256 = excluded.sha256, deleted = excluded.deleted,
    updated_at = excluded.updated_at, seq = excluded.seq
"""


class PostgresDocumentStore:
    def __init__(self, db: Database, index_name: str) -> None:
        self.db = db
        self.index_name = index_name
        db.migrate("documents", MIGRATIONS)

    def apply(self, upsert: Sequence[Document], delete: Sequence[str]) -> Applied:
        counts = {"upserted": 0, "unchanged": 0, "deleted": 0, "not_found": 0}
        changed: list[str] = []
        removed: list[str] = []
        ids = [d.id for d in upsert] + list(delete)
        with self.db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (DOCUMENTS_LOCK, self.index_name))
            seq = self._head(conn)
            rows = conn.execute(
                "SELECT id, sha256, deleted FROM ragserve_documents WHERE index_name = %s AND id = ANY(%s)",
                (self.index_name, ids),
            )
            known: dict[str, tuple[str, bool]] = {doc_id: (sha, gone) for doc_id, sha, gone in rows}
            writes = []
            for doc in upsert:
                sha = content_sha256(doc)
                if known.get(doc.id) == (sha, False):
                    counts["unchanged"] += 1
                    continue
                seq += 1
                metadata = json.dumps(doc.metadata, ensure_ascii=False)
                writes.append((self.index_name, doc.id, doc.title, doc.text, metadata, sha, False, seq))
                counts["upserted"] += 1
                changed.append(doc.id)
            for doc_id in delete:
                if doc_id in known and known[doc_id][1]:
                    counts["not_found"] += 1
                    continue
                seq += 1  # a tombstone also hides a document that only an index version holds
                writes.append((self.index_name, doc_id, "", "", "{}", "", True, seq))
                counts["deleted"] += 1
                removed.append(doc_id)
            if writes:
                with conn.cursor() as cursor:
                    cursor.executemany(UPSERT, writes)
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.index_name))
        return Applied(changed, removed, counts)

    def changes_since(self, seq: int) -> Changes:
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT {CHANGE_COLUMNS} FROM ragserve_documents WHERE index_name = %s AND seq > %s ORDER BY seq",
                (self.index_name, seq),
            )
            return changes_of(rows, seq)

    def head(self) -> int:
        with self.db.transaction() as conn:
            return self._head(conn)

    def _head(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM ragserve_documents WHERE index_name = %s", (self.index_name,)
        ).fetchone()
        assert row is not None
        return int(row[0])
