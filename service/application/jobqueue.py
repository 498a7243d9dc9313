"""The job queue behind a small interface (`JobQueue`), with SQLite behind it (`SqliteJobQueue`,
in the same database file as the document table), or PostgreSQL when replicas share it
(service/application/pg_jobqueue.py).

Jobs (`documents` batches and index `refresh`es) keep their request (the payload) until they
finish, then only their state, item counts and result. The state is bounded: at most
`max_pending` jobs are queued or running, and finished jobs are pruned after a retention time
(`prune`, on an index of state and finishing time).

Any process on the queue (every replica) may run any job, one job of a kind at a time across all
of them, oldest first: batches apply in the order they were acknowledged, and one refresh builds
at a time. Taking a job (`next_queued`) leases it to the taking process (`owner`) for `lease_s`;
the owner renews its leases while it runs (`renew`, from its heartbeat). A job whose lease ran out
was interrupted (its owner died or hung): the next taker runs it again, with `interrupted` set
and its `attempts` counted up (running either kind twice is harmless). An owner that stops in
good order hands its jobs back (`release`); the end of a job is recorded only by its owner, so a
process that lost its lease cannot overwrite the run of the one that took over.
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
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0
);
"""
# Columns added since the first release, for tables created before them, and how the rows that
# predate a column get its value (once, when it is added).
MIGRATIONS = {
    "kind": "TEXT NOT NULL DEFAULT 'documents'",
    "upserts": "INTEGER NOT NULL DEFAULT 0",
    "deletes": "INTEGER NOT NULL DEFAULT 0",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "owner": "TEXT",
    "lease_until": "REAL NOT NULL DEFAULT 0",  # 0: a job left running by a release without leases is free
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
    attempts: int = 0  # runs that failed on a storage error or were interrupted, so far
    interrupted: bool = False  # taken over from an owner whose lease ran out

    @property
    def upsert(self) -> list[Document]:
        return [Document(i, t, x, m) for i, t, x, m in self.payload.get("upsert", [])]

    @property
    def delete(self) -> list[str]:
        return list(self.payload.get("delete", []))


JOB_COLUMNS = "id, kind, state, result, upserts, deletes, attempts"  # what `job_of` reads, in this order


def job_of(row: Sequence[Any] | None) -> Job | None:
    """A job (without its payload) from a row of JOB_COLUMNS (both stores)."""
    if row is None:
        return None
    found, kind, state, result, upserts, deletes, attempts = row
    return Job(found, kind, state, {}, json.loads(result), upserts, deletes, attempts)


TAKE_COLUMNS = "id, payload, upserts, deletes, attempts, state"  # what `taken` reads, in this order


def taken(kind: str, row: Sequence[Any]) -> Job:
    """The job a row of TAKE_COLUMNS becomes once taken (both stores): running, with its payload;
    `interrupted`, and one more attempt counted, when it was running already (its lease ran out)."""
    job_id, payload, upserts, deletes, attempts, state = row
    interrupted = state == "running"
    return Job(job_id, kind, "running", json.loads(payload), {}, upserts, deletes, attempts + interrupted, interrupted)


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
        """The oldest queued (or interrupted) job of this kind, with its payload, now running and
        leased to this queue's owner; None when there is none or a job of this kind runs."""

    def finish(self, job_id: str, state: str, result: dict[str, Any]) -> bool:
        """Record the end of a job (done or failed) and drop its payload; False when this owner
        no longer holds the job (its lease ran out and another took it over)."""

    def retry(self, job_id: str, attempts: int, error: str) -> bool:
        """Queue a job again after a failed run (its `attempts` so far); it keeps its place."""

    def renew(self) -> int:
        """Extend the leases of this owner's running jobs; how many."""

    def release(self) -> int:
        """Queue this owner's running jobs again (it stops); how many."""

    def prune(self, kind: str, finished_before: float) -> int:
        """Delete the jobs of this kind that finished before this time; how many."""


class SqliteJobQueue:
    def __init__(self, path: Path, max_pending: int, owner: str, lease_s: float) -> None:
        self.path = path
        self.max_pending = max_pending
        self.owner = owner
        self.lease_s = lease_s
        self._write = threading.Lock()  # one writer per process; processes take the file's write lock
        create(path, SCHEMA, "jobs", MIGRATIONS, INDEXES, BACKFILL)

    def enqueue(self, kind: str, payload: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        counts = len(payload.get("upsert", [])), len(payload.get("delete", []))
        with self._write, session(self.path, write=True) as db:
            check_room(db.execute(f"SELECT COUNT(*) FROM jobs WHERE {PENDING}").fetchone()[0], self.max_pending)
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute(
                "INSERT INTO jobs (id, kind, seq, state, payload, created_at, updated_at, upserts, deletes) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, kind, seq, json.dumps(payload, ensure_ascii=False), now, now, *counts),
            )
        return job_id

    def job(self, job_id: str) -> Job | None:
        with session(self.path) as db:
            return job_of(db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def pending(self, kind: str) -> bool:
        with session(self.path) as db:
            row = db.execute(f"SELECT 1 FROM jobs WHERE kind = ? AND {PENDING}", (kind,))
            return row.fetchone() is not None

    def count_pending(self, kind: str) -> int:
        with session(self.path) as db:
            count: int = db.execute(f"SELECT COUNT(*) FROM jobs WHERE kind = ? AND {PENDING}", (kind,)).fetchone()[0]
        return count

    def next_queued(self, kind: str) -> Job | None:
        now = time.time()
        with self._write, session(self.path, write=True) as db:
            held = "SELECT 1 FROM jobs WHERE kind = ? AND state = 'running' AND lease_until >= ?"
            if db.execute(held, (kind, now)).fetchone() is not None:
                return None  # one job of a kind at a time, across processes
            row = db.execute(
                f"SELECT {TAKE_COLUMNS} FROM jobs WHERE kind = ? AND {PENDING} ORDER BY seq LIMIT 1", (kind,)
            ).fetchone()
            if row is None:
                return None
            job = taken(kind, row)
            db.execute(
                "UPDATE jobs SET state = 'running', owner = ?, lease_until = ?, attempts = ?, updated_at = ? "
                "WHERE id = ?",
                (self.owner, now + self.lease_s, job.attempts, now, job.id),
            )
        return job

    def finish(self, job_id: str, state: str, result: dict[str, Any]) -> bool:
        with self._write, session(self.path) as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, result = ?, payload = ?, owner = NULL, updated_at = ? "
                "WHERE id = ? AND owner = ? AND state = 'running'",
                (state, json.dumps(result), EMPTY_PAYLOAD, time.time(), job_id, self.owner),
            )
            return cursor.rowcount == 1

    def retry(self, job_id: str, attempts: int, error: str) -> bool:
        result = {"counts": {}, "errors": {}, "last_error": error}
        with self._write, session(self.path) as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'queued', attempts = ?, result = ?, owner = NULL, updated_at = ? "
                "WHERE id = ? AND owner = ? AND state = 'running'",
                (attempts, json.dumps(result), time.time(), job_id, self.owner),
            )
            return cursor.rowcount == 1

    def renew(self) -> int:
        with self._write, session(self.path) as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_until = ? WHERE owner = ? AND state = 'running'",
                (time.time() + self.lease_s, self.owner),
            )
            return cursor.rowcount

    def release(self) -> int:
        with self._write, session(self.path) as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = 0 WHERE owner = ? AND state = 'running'",
                (self.owner,),
            )
            return cursor.rowcount

    def prune(self, kind: str, finished_before: float) -> int:
        with self._write, session(self.path) as db:
            cursor = db.execute(
                f"DELETE FROM jobs WHERE {FINISHED} AND updated_at < ? AND kind = ?", (finished_before, kind)
            )
            return cursor.rowcount


def check_room(pending: int, max_pending: int) -> None:
    if pending >= max_pending:
        raise TooManyJobsError(
            f"{pending} jobs are queued or running, the limit (setting max_pending_jobs) is "
            f"{max_pending}: retry when some have finished"
        )
