"""The job queue behind a small interface (`JobQueue`), with SQLite behind it (`SqliteJobQueue`,
in the same database file as the document table).

Jobs (`documents` batches and index `refresh`es) keep their request (the payload) until they
finish, then only their state, item counts and result; a job found `running` at start-up was
interrupted and is queued again (running either kind twice is harmless). The state is bounded:
at most `max_pending` jobs are queued or running, and finished jobs are pruned after a retention
time (`prune`, on an index of state and finishing time).
"""

import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ragserve.errors import TooManyJobsError
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
    kind TEXT NOT NULL DEFAULT 'documents',
    upserts INTEGER NOT NULL DEFAULT 0,
    deletes INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
"""
# Columns added since the first release, for tables created before them, and how the rows that
# predate a column get its value (once, when it is added).
MIGRATIONS = {
    "kind": "TEXT NOT NULL DEFAULT 'documents'",
    "upserts": "INTEGER NOT NULL DEFAULT 0",
    "deletes": "INTEGER NOT NULL DEFAULT 0",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
}
BACKFILL = {
    "upserts": "UPDATE jobs SET upserts = COALESCE(json_array_length(payload, '$.upsert'), 0)",
    "deletes": "UPDATE jobs SET deletes = COALESCE(json_array_length(payload, '$.delete'), 0)",
}
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(kind, state, seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(state, updated_at);
"""
DOCUMENTS_JOB = "documents"
REFRESH_JOB = "refresh"
PENDING = "state IN ('queued', 'running')"
FINISHED = "state IN ('done', 'failed')"
EMPTY_PAYLOAD = "{}"  # what a finished job keeps of its request


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: str  # documents | refresh
    state: str  # queued | running | done | failed
    # The request: only on a job taken to run (`next_queued`); `job()` and finished jobs have {}.
    payload: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    upserts: int = 0  # items of the batch, counted at enqueue
    deletes: int = 0
    attempts: int = 0  # runs that failed on a storage error so far

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
        """A new queued job; its id. Raises TooManyJobsError when the pending limit is reached."""

    def job(self, job_id: str) -> Job | None:
        """A job's state, counts and result (not its payload)."""

    def pending(self, kind: str) -> bool:
        """Whether a job of this kind is queued or running."""

    def count_pending(self, kind: str) -> int:
        """How many jobs of this kind are queued or running."""

    def next_queued(self, kind: str) -> Job | None:
        """The oldest queued job of this kind, with its payload, now marked running."""

    def finish(self, job_id: str, state: str, result: dict[str, Any]) -> None:
        """Record the end of a job (done or failed) and drop its payload."""

    def retry(self, job_id: str, attempts: int, error: str) -> None:
        """Queue a job again after a failed run (its `attempts` so far); it keeps its place."""

    def prune(self, kind: str, finished_before: float) -> int:
        """Delete the jobs of this kind that finished before this time; how many."""


class SqliteJobQueue:
    def __init__(self, path: Path, max_pending: int = 1_000) -> None:
        self.path = path
        self.max_pending = max_pending
        self._write = threading.Lock()  # one writer; readers use their own connections
        create(path, SCHEMA, "jobs", MIGRATIONS, INDEXES, BACKFILL)
        with session(path) as db:
            db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")

    def enqueue(self, kind: str, payload: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        counts = len(payload.get("upsert", [])), len(payload.get("delete", []))
        with self._write, session(self.path) as db:
            self._check_room(db.execute(f"SELECT COUNT(*) FROM jobs WHERE {PENDING}").fetchone()[0])
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute(
                "INSERT INTO jobs (id, kind, seq, state, payload, created_at, updated_at, upserts, deletes) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, kind, seq, json.dumps(payload, ensure_ascii=False), now, now, *counts),
            )
        return job_id

    def _check_room(self, pending: int) -> None:
        if pending >= self.max_pending:
            raise TooManyJobsError(
                f"{pending} jobs are queued or running, the limit (setting max_pending_jobs) is "
                f"{self.max_pending}: retry when some have finished"
            )

    def job(self, job_id: str) -> Job | None:
        with session(self.path) as db:
            row = db.execute(
                "SELECT id, kind, state, result, upserts, deletes, attempts FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        if row is None:
            return None
        found, kind, state, result, upserts, deletes, attempts = row
        return Job(found, kind, state, {}, json.loads(result), upserts, deletes, attempts)

    def pending(self, kind: str) -> bool:
        with session(self.path) as db:
            row = db.execute(f"SELECT 1 FROM jobs WHERE kind = ? AND {PENDING}", (kind,))
            return row.fetchone() is not None

    def count_pending(self, kind: str) -> int:
        with session(self.path) as db:
            count: int = db.execute(f"SELECT COUNT(*) FROM jobs WHERE kind = ? AND {PENDING}", (kind,)).fetchone()[0]
        return count

    def next_queued(self, kind: str) -> Job | None:
        with self._write, session(self.path) as db:
            row = db.execute(
                "SELECT id, payload, upserts, deletes, attempts FROM jobs "
                "WHERE kind = ? AND state = 'queued' ORDER BY seq LIMIT 1",
                (kind,),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', updated_at = ? WHERE id = ?", (time.time(), row[0]))
        job_id, payload, upserts, deletes, attempts = row
        return Job(job_id, kind, "running", json.loads(payload), {}, upserts, deletes, attempts)

    def finish(self, job_id: str, state: str, result: dict[str, Any]) -> None:
        with self._write, session(self.path) as db:
            db.execute(
                "UPDATE jobs SET state = ?, result = ?, payload = ?, updated_at = ? WHERE id = ?",
                (state, json.dumps(result), EMPTY_PAYLOAD, time.time(), job_id),
            )

    def retry(self, job_id: str, attempts: int, error: str) -> None:
        result = {"counts": {}, "errors": {}, "last_error": error}
        with self._write, session(self.path) as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = ?, result = ?, updated_at = ? WHERE id = ?",
                (attempts, json.dumps(result), time.time(), job_id),
            )

    def prune(self, kind: str, finished_before: float) -> int:
        with self._write, session(self.path) as db:
            cursor = db.execute(
                f"DELETE FROM jobs WHERE {FINISHED} AND updated_at < ? AND kind = ?", (finished_before, kind)
            )
            return cursor.rowcount
