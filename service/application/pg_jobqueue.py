"""The job queue in PostgreSQL, shared by every replica of an index: the interface and the rules of
service/application/jobqueue.py (leases, one job of a kind at a time, owners record the end).

Taking a job is one transaction: a transaction-scoped advisory lock of (index, kind) orders the
takers, a job of the kind still under lease means "not now", and the oldest queued or interrupted
job is locked with `SELECT ... FOR UPDATE SKIP LOCKED` and leased. Leases and heartbeats use the
database's clock, so replicas whose clocks disagree still agree on who holds what.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from ragserve.postgres import JOBS_LOCK, NOW, Database
from service.application.jobqueue import (
    EMPTY_PAYLOAD,
    FINISHED,
    JOB_COLUMNS,
    PENDING,
    TAKE_COLUMNS,
    Job,
    check_room,
    job_of,
    taken,
)

MIGRATIONS = [
    """
    CREATE TABLE ragserve_jobs (
        id text PRIMARY KEY,
        index_name text NOT NULL,
        kind text NOT NULL,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        state text NOT NULL,
        payload text NOT NULL,
        result text NOT NULL DEFAULT '{}',
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        upserts integer NOT NULL DEFAULT 0,
        deletes integer NOT NULL DEFAULT 0,
        attempts integer NOT NULL DEFAULT 0,
        owner text,
        lease_until double precision NOT NULL DEFAULT 0
    );
    CREATE INDEX ragserve_jobs_state ON ragserve_jobs (index_name, kind, state, seq);
    CREATE INDEX ragserve_jobs_finished ON ragserve_jobs (state, updated_at);
    CREATE INDEX ragserve_jobs_owner ON ragserve_jobs (owner) WHERE state = 'running';
    """,
]


class PostgresJobQueue:
    def __init__(self, db: Database, index_name: str, max_pending: int, owner: str, lease_s: float) -> None:
        self.db = db
        self.index_name = index_name
        self.max_pending = max_pending
        self.owner = owner
        self.lease_s = lease_s
        db.migrate("jobs", MIGRATIONS)

    def enqueue(self, kind: str, payload: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        counts = len(payload.get("upsert", [])), len(payload.get("delete", []))
        with self.db.transaction() as conn:
            # the count and the insert under one lock: two replicas cannot both take the last place
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (JOBS_LOCK, self.index_name))
            row = conn.execute(
                f"SELECT COUNT(*) FROM ragserve_jobs WHERE index_name = %s AND {PENDING}", (self.index_name,)
            ).fetchone()
            check_room(int(row[0]) if row else 0, self.max_pending)
            conn.execute(
                "INSERT INTO ragserve_jobs (id, index_name, kind, state, payload, created_at, updated_at, "
                f"upserts, deletes) VALUES (%s, %s, %s, 'queued', %s, {NOW}, {NOW}, %s, %s)",
                (job_id, self.index_name, kind, json.dumps(payload, ensure_ascii=False), *counts),
            )
        return job_id

    def job(self, job_id: str) -> Job | None:
        with self.db.transaction() as conn:
            query = f"SELECT {JOB_COLUMNS} FROM ragserve_jobs WHERE id = %s AND index_name = %s"
            return job_of(conn.execute(query, (job_id, self.index_name)).fetchone())

    def pending(self, kind: str) -> bool:
        return self.count_pending(kind) > 0

    def count_pending(self, kind: str) -> int:
        with self.db.transaction() as conn:
            row = conn.execute(
                f"SELECT COUNT(*) FROM ragserve_jobs WHERE index_name = %s AND kind = %s AND {PENDING}",
                (self.index_name, kind),
            ).fetchone()
        return int(row[0]) if row else 0

    def next_queued(self, kind: str) -> Job | None:
        with self.db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (JOBS_LOCK, f"{self.index_name}/{kind}"))
            held = conn.execute(
                "SELECT 1 FROM ragserve_jobs WHERE index_name = %s AND kind = %s AND state = 'running' "
                f"AND lease_until >= {NOW} LIMIT 1",
                (self.index_name, kind),
            ).fetchone()
            if held is not None:
                return None  # one job of a kind at a time, across replicas
            row = conn.execute(
                f"SELECT {TAKE_COLUMNS} FROM ragserve_jobs WHERE index_name = %s AND kind = %s AND {PENDING} "
                "ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
                (self.index_name, kind),
            ).fetchone()
            if row is None:
                return None
            job = taken(kind, row)
            conn.execute(
                f"UPDATE ragserve_jobs SET state = 'running', owner = %s, lease_until = {NOW} + %s, "
                f"attempts = %s, updated_at = {NOW} WHERE id = %s",
                (self.owner, self.lease_s, job.attempts, job.id),
            )
        return job

    def finish(self, job_id: str, state: str, result: dict[str, Any]) -> bool:
        return self._update(
            f"state = %s, result = %s, payload = %s, owner = NULL, updated_at = {NOW}",
            (state, json.dumps(result), EMPTY_PAYLOAD),
            job_id,
        )

    def retry(self, job_id: str, attempts: int, error: str) -> bool:
        result = {"counts": {}, "errors": {}, "last_error": error}
        return self._update(
            f"state = 'queued', attempts = %s, result = %s, owner = NULL, updated_at = {NOW}",
            (attempts, json.dumps(result)),
            job_id,
        )

    def _update(self, assignments: str, values: tuple[Any, ...], job_id: str) -> bool:
        """Change a running job that this owner holds; whether it did."""
        with self.db.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE ragserve_jobs SET {assignments} WHERE id = %s AND owner = %s AND state = 'running'",
                (*values, job_id, self.owner),
            )
            return cursor.rowcount == 1

    def renew(self) -> int:
        with self.db.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE ragserve_jobs SET lease_until = {NOW} + %s WHERE owner = %s AND state = 'running'",
                (self.lease_s, self.owner),
            )
            return cursor.rowcount

    def release(self) -> int:
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE ragserve_jobs SET state = 'queued', owner = NULL, lease_until = 0 "
                "WHERE owner = %s AND state = 'running'",
                (self.owner,),
            )
            return cursor.rowcount

    def prune(self, kind: str, finished_before: float) -> int:
        with self.db.transaction() as conn:
            cursor = conn.execute(
                f"DELETE FROM ragserve_jobs WHERE {FINISHED} AND updated_at < %s AND index_name = %s AND kind = %s",
                (finished_before, self.index_name, kind),
            )
            return cursor.rowcount
