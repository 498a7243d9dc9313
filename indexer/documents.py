"""The document table and the ingestion job queue of a named index, in one SQLite file.

Documents are upserted by id and content hash (re-sending the same document changes nothing) and
deleted by marking a tombstone, so that a deletion outlives restarts until the next compaction.
Jobs keep their whole batch, their state and per-document results; a job found `running` at
start-up was interrupted and is queued again (applying a batch twice is harmless).
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
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    payload TEXT NOT NULL,
    result TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
"""


def content_sha256(doc: Document) -> str:
    payload = json.dumps([doc.title, doc.text, doc.metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    state: str  # queued | running | done | failed
    upsert: list[Document]
    delete: list[str]
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one batch changed."""

    changed: list[Document]  # new or different content: to (re)index
    removed: list[str]  # ids whose documents are gone (deleted)
    counts: dict[str, int]
    errors: dict[str, str]


class DocumentStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._write = threading.Lock()  # one writer; readers use their own connections
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def enqueue(self, upsert: list[Document], delete: list[str]) -> str:
        job_id = uuid.uuid4().hex
        payload = json.dumps(
            {"upsert": [[d.id, d.title, d.text, d.metadata] for d in upsert], "delete": delete}, ensure_ascii=False
        )
        now = time.time()
        with self._write, self._connect() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute(
                "INSERT INTO jobs (id, seq, state, payload, created_at, updated_at) VALUES (?, ?, 'queued', ?, ?, ?)",
                (job_id, seq, payload, now, now),
            )
        return job_id

    def job(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT id, state, payload, result FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def next_queued(self) -> Job | None:
        with self._write, self._connect() as db:
            row = db.execute(
                "SELECT id, state, payload, result FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
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
        changed: list[Document] = []
        removed: list[str] = []
        now = time.time()
        with self._write, self._connect() as db:
            for doc in job.upsert:
                sha = content_sha256(doc)
                row = db.execute("SELECT sha256, deleted FROM documents WHERE id = ?", (doc.id,)).fetchone()
                if row is not None and row == (sha, 0):
                    counts["unchanged"] += 1
                    continue
                db.execute(
                    "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, 0, ?)",
                    (doc.id, doc.title, doc.text, json.dumps(doc.metadata, ensure_ascii=False), sha, now),
                )
                counts["upserted"] += 1
                changed.append(doc)
            for doc_id in job.delete:
                row = db.execute("SELECT deleted FROM documents WHERE id = ?", (doc_id,)).fetchone()
                if row is not None and row[0] == 1:
                    counts["not_found"] += 1
                    continue
                # a tombstone also hides a document that only the serving index version holds
                db.execute("INSERT OR REPLACE INTO documents VALUES (?, '', '', '{}', '', 1, ?)", (doc_id, now))
                counts["deleted"] += 1
                removed.append(doc_id)
        return Applied(changed, removed, counts, {})

    def live(self) -> Iterator[Document]:
        with self._connect() as db:
            for doc_id, title, text, metadata in db.execute(
                "SELECT id, title, text, metadata FROM documents WHERE deleted = 0 ORDER BY id"
            ):
                yield Document(doc_id, title, text, json.loads(metadata))

    def tombstones(self) -> set[str]:
        with self._connect() as db:
            return {row[0] for row in db.execute("SELECT id FROM documents WHERE deleted = 1")}


def _job(row: tuple[str, str, str, str]) -> Job:
    job_id, state, payload, result = row
    data = json.loads(payload)
    upsert = [Document(i, t, x, m) for i, t, x, m in data["upsert"]]
    return Job(job_id, state, upsert, list(data["delete"]), json.loads(result))
