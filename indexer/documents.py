"""The document table of a named index: every document ever ingested, by id, behind a small
interface (`DocumentStore`) with SQLite behind it (`SqliteDocumentStore`), or PostgreSQL when
replicas share it (indexer/pg_documents.py).

Documents are upserted by id and content hash (re-sending the same document changes nothing) and
deleted by marking a tombstone, so that a deletion also hides what older index versions hold.
Every change takes the next value of a change counter (`seq`): an index version records the
counter it includes, and its delta index is the set of changes after it. Changes commit in
counter order (one writer at a time), so a reader that has seen counter value n has seen every
change up to n: following the table is reading what comes after the last value seen.
"""

import hashlib
import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ragserve.sqlite import create, session
from ragserve.types import Document

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0
);
"""
# Columns added since the first release, for tables created before them, and how their rows are
# filled in (once, with the column: ragserve/sqlite.py `create`).
MIGRATIONS = {"seq": "INTEGER NOT NULL DEFAULT 0"}
BACKFILL = {"seq": "UPDATE documents SET seq = rowid"}
INDEXES = "CREATE INDEX IF NOT EXISTS documents_seq ON documents(seq);"


def content_sha256(doc: Document) -> str:
    payload = json.dumps([doc.title, doc.text, doc.metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one batch changed."""

    changed: list[str]  # ids of new or different documents
    removed: list[str]  # ids of deleted documents
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Changes:
    """The state of every document changed after some counter value."""

    live: list[Document]  # upserted (their current content)
    deleted: list[str]  # deleted
    seq: int  # the highest counter value included


CHANGE_COLUMNS = "id, title, text, metadata, deleted, seq"  # what `changes_of` reads, in this order


def changes_of(rows: Iterable[Sequence[Any]], seq: int) -> Changes:
    """The changes after counter value `seq` from rows of CHANGE_COLUMNS in counter order (both stores)."""
    live: list[Document] = []
    deleted: list[str] = []
    last = seq
    for doc_id, title, text, metadata, gone, row_seq in rows:
        if gone:
            deleted.append(doc_id)
        else:
            live.append(Document(doc_id, title, text, json.loads(metadata)))
        last = row_seq
    return Changes(live, deleted, last)


class DocumentStore(Protocol):
    def apply(self, upsert: Sequence[Document], delete: Sequence[str]) -> Applied:
        """Apply one batch atomically: upserts by id and content hash, then deletions."""

    def changes_since(self, seq: int) -> Changes:
        """Every document changed after counter value `seq`, in counter order."""

    def head(self) -> int:
        """The counter value of the latest change (0: none yet)."""


class SqliteDocumentStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._write = threading.Lock()  # one writer; readers use their own connections
        create(path, SCHEMA, "documents", MIGRATIONS, INDEXES, BACKFILL)

    def apply(self, upsert: Sequence[Document], delete: Sequence[str]) -> Applied:
        counts = {"upserted": 0, "unchanged": 0, "deleted": 0, "not_found": 0}
        changed: list[str] = []
        removed: list[str] = []
        now = time.time()
        with self._write, session(self.path, write=True) as db:  # other processes may write too
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM documents").fetchone()[0]
            for doc in upsert:
                sha = content_sha256(doc)
                row = db.execute("SELECT sha256, deleted FROM documents WHERE id = ?", (doc.id,)).fetchone()
                if row is not None and row == (sha, 0):
                    counts["unchanged"] += 1
                    continue
                seq += 1
                db.execute(
                    "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                    (doc.id, doc.title, doc.text, json.dumps(doc.metadata, ensure_ascii=False), sha, now, seq),
                )
                counts["upserted"] += 1
                changed.append(doc.id)
            for doc_id in delete:
                row = db.execute("SELECT deleted FROM documents WHERE id = ?", (doc_id,)).fetchone()
                if row is not None and row[0] == 1:
                    counts["not_found"] += 1
                    continue
                # a tombstone also hides a document that only an index version holds
                seq += 1
                db.execute("INSERT OR REPLACE INTO documents VALUES (?, '', '', '{}', '', 1, ?, ?)", (doc_id, now, seq))
                counts["deleted"] += 1
                removed.append(doc_id)
        return Applied(changed, removed, counts)

    def changes_since(self, seq: int) -> Changes:
        with session(self.path) as db:
            rows = db.execute(f"SELECT {CHANGE_COLUMNS} FROM documents WHERE seq > ? ORDER BY seq", (seq,))
            return changes_of(rows, seq)

    def head(self) -> int:
        with session(self.path) as db:
            seq: int = db.execute("SELECT COALESCE(MAX(seq), 0) FROM documents").fetchone()[0]
        return seq
