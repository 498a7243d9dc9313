"""Bounded job state: a limit of pending jobs, retention of finished ones, item counts stored at
enqueue (a job is read without its payload, which is dropped when it finishes), and databases
created before these columns."""

import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ragserve.errors import TooManyJobsError
from ragserve.types import Document
from service.application.jobqueue import DOCUMENTS_JOB, REFRESH_JOB, documents_payload
from service.application.jobs import Worker
from tests.defaults import JOBS, sqlite_queue

DOCS = [Document("a", "A", "alpha"), Document("b", "B", "beta")]
FIRST_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, state TEXT NOT NULL, payload TEXT NOT NULL,
    result TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, updated_at REAL NOT NULL
);
"""


def raw(path: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        with db:
            return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_enqueue_beyond_the_pending_limit_is_refused_with_the_setting_named(tmp_path: Path) -> None:
    queue = sqlite_queue(tmp_path / "jobs.sqlite", max_pending=2)
    first = queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    queue.enqueue(REFRESH_JOB, {"index": "default", "version": None})  # all kinds count
    with pytest.raises(TooManyJobsError, match=r"limit \(setting max_pending_jobs\) is 2"):
        queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    assert raw(tmp_path / "jobs.sqlite", "SELECT COUNT(*) FROM jobs") == [(2,)]  # nothing stored
    running = queue.next_queued(DOCUMENTS_JOB)
    assert running is not None and running.id == first
    with pytest.raises(TooManyJobsError):  # a running job is still pending
        queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    queue.finish(first, "done", {"counts": {}})
    queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))


def test_a_job_is_read_with_its_counts_and_without_its_payload(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    queue = sqlite_queue(path)
    job_id = queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, ["gone"]))
    queued = queue.job(job_id)
    assert queued is not None and (queued.state, queued.upserts, queued.deletes) == ("queued", 2, 1)
    assert queued.payload == {}  # job() never reads (or parses) the payload
    running = queue.next_queued(DOCUMENTS_JOB)
    assert running is not None and [d.id for d in running.upsert] == ["a", "b"] and running.delete == ["gone"]
    queue.finish(job_id, "done", {"counts": {"upserted": 2}})
    done = queue.job(job_id)
    assert done is not None and (done.state, done.upserts, done.deletes) == ("done", 2, 1)
    assert done.result == {"counts": {"upserted": 2}}
    assert raw(path, "SELECT payload FROM jobs") == [("{}",)]  # the request is dropped once finished


def test_finished_jobs_are_deleted_after_their_retention(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    queue = sqlite_queue(path)
    ids = [queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, [])) for _ in range(4)]
    for job_id, state in zip(ids[:3], ["done", "failed", "done"], strict=True):
        assert queue.next_queued(DOCUMENTS_JOB) is not None
        queue.finish(job_id, state, {})
    raw(path, "UPDATE jobs SET updated_at = ? WHERE id IN (?, ?)", (time.time() - 100, ids[0], ids[1]))
    assert queue.prune(REFRESH_JOB, time.time() - 50) == 0  # per kind
    assert queue.prune(DOCUMENTS_JOB, time.time() - 50) == 2
    assert [queue.job(i) is None for i in ids] == [True, True, False, False]  # recent and queued stay
    plan = raw(path, "EXPLAIN QUERY PLAN DELETE FROM jobs WHERE state IN ('done', 'failed') AND updated_at < 0")
    assert "jobs_finished" in str(plan)  # cheap: an index of state and finishing time


def test_the_worker_prunes_at_start(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    queue = sqlite_queue(path)
    old = queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    assert queue.next_queued(DOCUMENTS_JOB) is not None
    queue.finish(old, "done", {})
    raw(path, "UPDATE jobs SET updated_at = ?", (time.time() - 3600,))
    worker = Worker(queue, DOCUMENTS_JOB, lambda job: {}, replace(JOBS, retention_s=60))
    try:
        deadline = time.monotonic() + 5
        while queue.job(old) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queue.job(old) is None
    finally:
        assert worker.stop(5)


def test_a_database_of_the_first_release_is_migrated_and_backfilled_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    raw(path, FIRST_SCHEMA)
    rows = [
        ("j1", 1, "done", documents_payload(DOCS, ["x", "y", "z"])),
        ("j2", 2, "running", documents_payload(DOCS[:1], [])),
    ]
    for job_id, seq, state, payload in rows:
        raw(path, "INSERT INTO jobs VALUES (?, ?, ?, ?, '{}', 0, 0)", (job_id, seq, state, json.dumps(payload)))
    queue = sqlite_queue(path)
    j1, j2 = queue.job("j1"), queue.job("j2")
    assert j1 is not None and (j1.kind, j1.upserts, j1.deletes, j1.attempts) == ("documents", 2, 3, 0)
    assert j2 is not None and (j2.state, j2.upserts, j2.deletes) == ("running", 1, 0)  # interrupted, no lease
    raw(path, "UPDATE jobs SET upserts = 99 WHERE id = 'j1'")
    again = sqlite_queue(path).job("j1")  # the backfill ran with the migration, not at every start
    assert again is not None and again.upserts == 99
    taken = queue.next_queued(DOCUMENTS_JOB)  # its lease (none) has run out: taken over at once
    assert taken is not None and taken.id == "j2" and [d.id for d in taken.upsert] == ["a"] and taken.interrupted
    assert queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))


def test_the_document_table_of_the_first_release_gets_its_change_counter(tmp_path: Path) -> None:
    from indexer.documents import SqliteDocumentStore

    path = tmp_path / "documents.sqlite"
    raw(
        path,
        "CREATE TABLE documents (id TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL, "
        "metadata TEXT NOT NULL, sha256 TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL)",
    )
    raw(path, "INSERT INTO documents VALUES ('old', 'Old', 'old text', '{}', 'x', 0, 0)")
    store = SqliteDocumentStore(path)
    changes = store.changes_since(0)
    assert [d.id for d in changes.live] == ["old"] and changes.seq == 1
    assert store.apply([Document("new", "New", "new text")], []).changed == ["new"]
    assert store.changes_since(1).seq == 2
