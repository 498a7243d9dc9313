"""The document table and the job queue of a named index, in one SQLite file.

Documents are upserted by id and content hash (re-sending the same document changes nothing) and
deleted by marking a tombstone, so that a deletion also hides what older index versions hold.
Every change takes the next value of a change counter (`seq`): an index version records the
counter it includes, and its delta index is the set of changes after it.

Jobs (`documents` batches and index `refresh`es) keep their whole request, their state and their
result; a job found `running` at start-up was interrupted and is queued again (running either
kind twice is harmless).
"""

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.sources import Document

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
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    payload TEXT NOT NULL,
    result TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'documents'
);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(kind, state, seq);
CREATE INDEX IF NOT EXISTS documents_seq ON documents(seq);
"""
# Columns added since the first release, for tables created before them.
MIGRATIONS = {
    ("documents", "seq"): "ALTER TABLE documents ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
    ("jobs", "kind"): "ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'documents'",
}
DOCUMENTS_JOB = "documents"
REFRESH_JOB = "refresh"


def content_sha256(doc: Document) -> str:
    payload = json.dumps([doc.title, doc.text, doc.metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: str  # documents | refresh
    state: str  # queued | running | done | failed
    payload: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def upsert(self) -> list[Document]:
        return [Document(i, t, x, m) for i, t, x, m in self.payload.get("upsert", [])]

    @property
    def delete(self) -> list[str]:
        return list(self.payload.get("delete", []))


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


class DocumentStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._write = threading.Lock()  # one writer; readers use their own connections
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            for (table, column), statement in MIGRATIONS.items():
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(statement)
                    if column == "seq":
                        db.execute("UPDATE documents SET seq = rowid")
            db.executescript(INDEXES)
            db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def enqueue_documents(self, upsert: list[Document], delete: list[str]) -> str:
        return self.enqueue(
            DOCUMENTS_JOB, {"upsert": [[d.id, d.title, d.text, d.metadata] for d in upsert], "delete": delete}
        )

    def enqueue(self, kind: str, payload: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        with self._write, self._connect() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute(
                "INSERT INTO jobs (id, kind, seq, state, payload, created_at, updated_at) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                (job_id, kind, seq, json.dumps(payload, ensure_ascii=False), now, now),
            )
        return job_id

    def job(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute(f"{SELECT_JOB} WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def pending(self, kind: str) -> bool:
        """Whether a job of this kind is queued or running."""
        with self._connect() as db:
            row = db.execute("SELECT 1 FROM jobs WHERE kind = ? AND state IN ('queued', 'running')", (kind,))
            return row.fetchone() is not None

    def next_queued(self, kind: str) -> Job | None:
        with self._write, self._connect() as db:
            row = db.execute(
                f"{SELECT_JOB} WHERE kind = ? AND state = 'queued' ORDER BY seq LIMIT 1", (kind,)
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', updated_at = ? WHERE id = ?", (time.time(), row[0]))
        return _job(row)

    def finish(self, job_id: str, state: str, result: dict[str, Any]) -> None:
        with self._write, self._connect() as db:
            db.execute(
                "UPDATE jobs SET state = ?, result = ?, updated_at = ? WHERE id = ?",
                (state, json.dumps(result), time.time(), job_id),
            )

    def apply(self, job: Job) -> Applied:
        """Apply a batch in one transaction: upserts by id and content hash, then deletions."""
        counts = {"upserted": 0, "unchanged": 0, "deleted": 0, "not_found": 0}
        changed: list[str] = []
        removed: list[str] = []
        now = time.time()
        with self._write, self._connect() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM documents").fetchone()[0]
            for doc in job.upsert:
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
            for doc_id in job.delete:
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
        live: list[Document] = []
        deleted: list[str] = []
        last = seq
        with self._connect() as db:
            for doc_id, title, text, metadata, gone, row_seq in db.execute(
                "SELECT id, title, text, metadata, deleted, seq FROM documents WHERE seq > ? ORDER BY seq", (seq,)
            ):
                if gone:
                    deleted.append(doc_id)
                else:
                    live.append(Document(doc_id, title, text, json.loads(metadata)))
                last = row_seq
        return Changes(live, deleted, last)


SELECT_JOB = "SELECT id, kind, state, payload, result FROM jobs"


def _job(row: tuple[str, str, str, str, str]) -> Job:
    job_id, kind, state, payload, result = row
    return Job(job_id, kind, state, json.loads(payload), json.loads(result))
