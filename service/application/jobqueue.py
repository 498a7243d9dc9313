"""The job queue behind a small interface (`JobQueue`), with SQLite behind it (`SqliteJobQueue`,
in the same database file as the document table).

Jobs (`documents` batches and index `refresh`es) keep their whole request, their state and their
result; a job found `running` at start-up was interrupted and is queued again (running either
kind twice is harmless).
"""

import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ragserve.sqlite import create, session
from ragserve.types import Document

SCHEMA = """
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
MIGRATIONS = {"kind": "TEXT NOT NULL DEFAULT 'documents'"}  # columns added since the first release
INDEXES = "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(kind, state, seq);"
DOCUMENTS_JOB = "documents"
REFRESH_JOB = "refresh"
SELECT_JOB = "SELECT id, kind, state, payload, result FROM jobs"


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


def documents_payload(upsert: Sequence[Document], delete: Sequence[str]) -> dict[str, Any]:
    return {"upsert": [[d.id, d.title, d.text, d.metadata] for d in upsert], "delete": list(delete)}


class JobQueue(Protocol):
    def enqueue(self, kind: str, payload: dict[str, Any]) -> str:
        """A new queued job; its id."""

    def job(self, job_id: str) -> Job | None: ...

    def pending(self, kind: str) -> bool:
        """Whether a job of this kind is queued or running."""

    def next_queued(self, kind: str) -> Job | None:
        """The oldest queued job of this kind, now marked running."""

    def finish(self, job_id: str, state: str, result: dict[str, Any]) -> None: ...


class SqliteJobQueue:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._write = threading.Lock()  # one writer; readers use their own connections
        create(path, SCHEMA, "jobs", MIGRATIONS, INDEXES)
        with session(path) as db:
            db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")

    def enqueue(self, kind: str, payload: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        with self._write, session(self.path) as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute(
                "INSERT INTO jobs (id, kind, seq, state, payload, created_at, updated_at) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                (job_id, kind, seq, json.dumps(payload, ensure_ascii=False), now, now),
            )
        return job_id

    def job(self, job_id: str) -> Job | None:
        with session(self.path) as db:
            row = db.execute(f"{SELECT_JOB} WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def pending(self, kind: str) -> bool:
        with session(self.path) as db:
            row = db.execute("SELECT 1 FROM jobs WHERE kind = ? AND state IN ('queued', 'running')", (kind,))
            return row.fetchone() is not None

    def next_queued(self, kind: str) -> Job | None:
        with self._write, session(self.path) as db:
            row = db.execute(
                f"{SELECT_JOB} WHERE kind = ? AND state = 'queued' ORDER BY seq LIMIT 1", (kind,)
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', updated_at = ? WHERE id = ?", (time.time(), row[0]))
        return _job(row)

    def finish(self, job_id: str, state: str, result: dict[str, Any]) -> None:
        with self._write, session(self.path) as db:
            db.execute(
                "UPDATE jobs SET state = ?, result = ?, updated_at = ? WHERE id = ?",
                (state, json.dumps(result), time.time(), job_id),
            )


def _job(row: tuple[str, str, str, str, str]) -> Job:
    job_id, kind, state, payload, result = row
    return Job(job_id, kind, state, json.loads(payload), json.loads(result))
