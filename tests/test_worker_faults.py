"""Job workers that outlive their storage failing: store errors are logged, shown by `health()`
and retried with a growing wait; jobs that fail on a storage error run again a bounded number of
times; the end of a job that cannot be recorded is retried; `stop()` is bounded; a submission the
store cannot take is refused. And a real full disk (a small tmpfs) under ingestion and compaction:
clear failures, no acknowledged document lost, the serving version kept, work resumed after."""

import errno
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ragserve.errors import InvalidInputError, StorageUnavailableError, TooManyJobsError
from ragserve.types import Document
from service.application.jobqueue import DOCUMENTS_JOB, Job, SqliteJobQueue, documents_payload
from service.application.jobs import JobPolicy, Jobs, Worker
from tests.defaults import JOBS, sqlite_queue

FAST = replace(JOBS, max_attempts=3, backoff_first_s=0.01, backoff_max_s=0.04)
DISK_FULL = sqlite3.OperationalError("database or disk is full")
DOCS = [Document("a", "A", "alpha")]


class FaultyQueue:
    """A real queue whose methods fail on demand, the way a full or failing disk makes them fail."""

    def __init__(self, inner: SqliteJobQueue) -> None:
        self.inner = inner
        self.faults: dict[str, int] = {}
        self.error: Exception = DISK_FULL

    def fail(self, method: str, times: int = 1_000_000, error: Exception = DISK_FULL) -> None:
        self.faults[method], self.error = times, error

    def heal(self) -> None:
        self.faults.clear()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.faults.get(name, 0) > 0:
                self.faults[name] -= 1
                raise self.error
            return target(*args, **kwargs)

        return call


class Runs:
    """A job function that fails as told and records the jobs it ran."""

    def __init__(self, *errors: Exception | None) -> None:
        self.errors = list(errors)
        self.ran: list[str] = []

    def __call__(self, job: Job) -> dict[str, Any]:
        self.ran.append(job.id)
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error
        return {"counts": {"upserted": 1}, "errors": {}}


def wait_for(condition: Callable[[], object], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def finished(queue: SqliteJobQueue, job_id: str) -> Job:
    wait_for(lambda: (job := queue.job(job_id)) is not None and job.state in ("done", "failed"))
    job = queue.job(job_id)
    assert job is not None
    return job


@pytest.fixture()
def queue(tmp_path: Path) -> SqliteJobQueue:
    return sqlite_queue(tmp_path / "documents.sqlite")


@pytest.fixture()
def worker_of(queue: SqliteJobQueue) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(run: Callable[[Job], dict[str, Any]], on: Any = None, policy: JobPolicy = FAST) -> Worker:
        started.append(Worker(on or queue, DOCUMENTS_JOB, run, policy))
        return started[-1]

    yield start
    for worker in started:
        worker.stop(5)


def test_the_backoff_doubles_from_half_a_second_up_to_its_limit() -> None:
    assert [replace(JOBS, backoff_max_s=30).backoff_s(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert replace(JOBS, backoff_max_s=0.2).backoff_s(1) == 0.2


@pytest.mark.parametrize("error", [DISK_FULL, sqlite3.OperationalError("disk I/O error"), RuntimeError("bug")])
def test_the_worker_survives_errors_of_the_queue_and_reports_them(
    queue: SqliteJobQueue, worker_of: Callable[..., Worker], error: Exception
) -> None:
    faulty = FaultyQueue(queue)
    faulty.fail("next_queued", 5, error)
    worker = worker_of(Runs(), on=faulty)
    wait_for(lambda: worker.last_error is not None)
    health = worker.health()
    assert health["alive"] and health["state"] == "backing_off" and str(error) in health["last_error"]
    assert health["last_error_at"] is not None and health["pending"] == 0
    job_id = queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    worker.wake.set()
    assert finished(queue, job_id).state == "done"  # once the store answers, work goes on
    assert worker.health()["alive"] and faulty.faults["next_queued"] == 0


def test_a_job_failing_on_storage_errors_runs_again_then_fails_with_the_reason(
    queue: SqliteJobQueue, worker_of: Callable[..., Worker]
) -> None:
    runs = Runs(DISK_FULL, OSError(errno.ENOSPC, "No space left on device"), DISK_FULL, None)
    job_id = queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    worker_of(runs)
    job = finished(queue, job_id)
    assert job.state == "failed" and len(runs.ran) == 3
    assert job.result["errors"] == {"*": "storage error: database or disk is full (after 3 attempts)"}
    assert job.attempts == 2  # the runs that were queued again


def test_a_job_that_succeeds_on_a_later_attempt_is_done(
    queue: SqliteJobQueue, worker_of: Callable[..., Worker]
) -> None:
    runs = Runs(OSError(errno.EIO, "Input/output error"), None)
    job_id = queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    worker_of(runs)
    job = finished(queue, job_id)
    assert job.state == "done" and job.attempts == 1 and len(runs.ran) == 2


@pytest.mark.parametrize("error", [InvalidInputError("bad document"), ValueError("bad value")])
def test_other_errors_fail_the_job_at_once(
    queue: SqliteJobQueue, worker_of: Callable[..., Worker], error: Exception
) -> None:
    runs = Runs(error)
    job_id = queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    worker_of(runs)
    job = finished(queue, job_id)
    assert job.state == "failed" and job.result["errors"] == {"*": str(error)} and len(runs.ran) == 1


def test_a_job_run_again_keeps_its_place_before_later_jobs(
    queue: SqliteJobQueue, worker_of: Callable[..., Worker]
) -> None:
    first = queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    second = queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    runs = Runs(DISK_FULL)
    worker_of(runs)
    assert finished(queue, second).state == "done" and finished(queue, first).state == "done"
    assert runs.ran == [first, first, second]  # a later batch never overtakes an earlier one


def test_an_end_that_cannot_be_recorded_is_recorded_later(
    queue: SqliteJobQueue, worker_of: Callable[..., Worker]
) -> None:
    faulty = FaultyQueue(queue)
    faulty.fail("finish", 4)
    runs = Runs()
    job_id = queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    worker = worker_of(runs, on=faulty)
    wait_for(lambda: worker.last_error is not None)
    running = queue.job(job_id)
    assert running is not None and running.state == "running"  # not acknowledged while it cannot be stored
    assert finished(queue, job_id).state == "done" and len(runs.ran) == 1  # not run again


def test_a_job_whose_end_was_never_recorded_runs_again_after_a_restart(
    queue: SqliteJobQueue, worker_of: Callable[..., Worker]
) -> None:
    faulty = FaultyQueue(queue)
    faulty.fail("finish")
    job_id = queue.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    worker = worker_of(Runs(), on=faulty)
    wait_for(lambda: worker.last_error is not None)
    assert worker.stop(5)  # gives up recording: the job stays running, under its lease
    restarted = sqlite_queue(queue.path, owner="next", lease_s=0.2)
    assert restarted.next_queued(DOCUMENTS_JOB) is None  # the lease holds
    raw_expire(queue.path)
    job = restarted.next_queued(DOCUMENTS_JOB)
    assert job is not None and job.id == job_id and job.interrupted and job.attempts == 1


def raw_expire(path: Path) -> None:
    """End every lease now, as time would."""
    with sqlite3.connect(path) as db:
        db.execute("UPDATE jobs SET lease_until = 0")


class NoIndexes:
    """Just enough of an IndexManager for jobs that never reach it."""

    partial = False

    class registry:
        name = "default"

        @staticmethod
        def path_of(version: str) -> Path:
            return Path(version)

    def check(self, name: str) -> None:
        pass


def taking(seconds: float) -> Callable[[Job], dict[str, Any]]:
    """A job function that takes this long."""

    def run(job: Job) -> dict[str, Any]:
        time.sleep(seconds)
        return {"counts": {}, "errors": {}}

    return run


def jobs_on(queue: Any, run: Callable[[Job], dict[str, Any]] | None = None) -> Jobs:
    jobs = Jobs(queue, None, NoIndexes(), 0, FAST)  # type: ignore[arg-type]
    if run is not None:
        jobs._documents._run_job = run
    return jobs


def test_stop_is_bounded_and_waits_for_a_batch_in_progress(queue: SqliteJobQueue) -> None:
    release, started = threading.Event(), threading.Event()

    def slow(job: Job) -> dict[str, Any]:
        started.set()
        release.wait(10)
        return {"counts": {}, "errors": {}}

    jobs = jobs_on(queue, slow)
    job_id = jobs.submit_documents(DOCS, [])
    assert started.wait(10)
    begun = time.monotonic()
    assert jobs.stop(0.3) is False  # the batch goes on past the timeout; stop returns anyway
    assert time.monotonic() - begun < 1.0
    release.set()
    assert jobs._documents.join(5)
    assert finished(queue, job_id).state == "done"  # the batch in progress was recorded
    assert not any(worker["alive"] for worker in jobs.health().values())


def test_stop_of_idle_workers_is_quick(queue: SqliteJobQueue) -> None:
    jobs = jobs_on(queue)
    begun = time.monotonic()
    assert jobs.stop(5) and time.monotonic() - begun < 0.5


def test_health_reports_each_worker(queue: SqliteJobQueue) -> None:
    jobs = jobs_on(queue, taking(0.5))
    try:
        jobs.submit_documents(DOCS, [])
        jobs.submit_documents(DOCS, [])
        health = jobs.health()
        assert set(health) == {"documents", "refresh"}
        for worker in health.values():
            assert set(worker) == {"alive", "state", "last_error", "last_error_at", "pending"}
            assert worker["alive"] and worker["last_error"] is None
        assert health["documents"]["pending"] == 2 and health["refresh"]["pending"] == 0
    finally:
        jobs.stop(5)


def test_a_submission_the_store_cannot_take_is_refused(queue: SqliteJobQueue) -> None:
    faulty = FaultyQueue(queue)
    jobs = jobs_on(faulty, taking(1.0))  # the first job is still pending when the second comes
    try:
        faulty.fail("enqueue")
        with pytest.raises(StorageUnavailableError, match="database or disk is full"):
            jobs.submit_documents(DOCS, [])
        with pytest.raises(StorageUnavailableError):
            jobs.submit_refresh("default", None)
        faulty.fail("job")
        with pytest.raises(StorageUnavailableError):
            jobs.job("0" * 32)
        faulty.heal()
        assert queue.count_pending(DOCUMENTS_JOB) == 0  # nothing was stored
        queue.max_pending = 1
        jobs.submit_documents(DOCS, [])
        with pytest.raises(TooManyJobsError):  # the limit is no storage failure
            jobs.submit_documents(DOCS, [])
    finally:
        jobs.stop(5)


# --- a real full disk ------------------------------------------------------------------------------

DISK_BYTES = 8 << 20
RESERVE_BYTES = 256 << 10  # freed to let SQLite write again, while a compaction still does not fit
BIG_METADATA = {"blob": "m" * (600 << 10)}  # makes the compacted version larger than the reserve
FACTS = {
    "observatory": "The Quillon observatory on Mount Aster opened in 1911.",
    "canal": "The Brisk canal links the lakes of Norvel and Tamsin since 1788.",
    "orchard": "The Pellan orchard grows forty kinds of winter pears.",
    "mill": "The Oderby windmill grinds rye for the bakers of Fenholt.",
}


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES, unmounted afterwards; skipped where mounting is not permitted."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {mount.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(path: Path) -> None:
    """Write `path` until the file system is full."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def wait_job(jobs: Jobs, job_id: str, seconds: float = 20) -> Job:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            job = jobs.job(job_id)
        except StorageUnavailableError:  # reading needs a little space too
            job = None
        if job is not None and job.state in ("done", "failed"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} not finished")


def test_a_full_disk_fails_jobs_clearly_loses_nothing_acknowledged_and_work_resumes(
    small_disk: Path, tiny_index: Path, cache_home: Path, encoder: Any
) -> None:
    from service.application.loading import load_indexes
    from service.settings import Settings

    settings = Settings(
        home=cache_home,
        index_path=tiny_index,
        registry_dir=small_disk / "registry",
        compact_after_chunks=0,
        job_max_attempts=2,
        worker_backoff_max_s=0.5,
    )
    serving = load_indexes(settings, encoder)
    indexes, jobs = serving.indexes, serving.jobs
    acknowledged: set[str] = set()

    def ingest(doc_id: str, **metadata: Any) -> str:
        return jobs.submit_documents([Document(doc_id, doc_id.title(), FACTS[doc_id], metadata)], [])

    def top(doc_id: str) -> str:
        return indexes.retriever.search(FACTS[doc_id], 3).passages[0].doc_id

    try:
        assert wait_job(jobs, ingest("observatory", **BIG_METADATA)).state == "done"
        acknowledged.add("observatory")
        served, versions = indexes.pointer.get(), indexes.registry.version_ids()
        (small_disk / "reserve").write_bytes(b"\0" * RESERVE_BYTES)
        fill(small_disk / "filler")

        # the disk is full: an ingestion is refused at once, or its job fails with the reason
        try:
            job = wait_job(jobs, ingest("canal"))
        except StorageUnavailableError as exc:
            assert "disk" in str(exc)  # "database or disk is full", "disk I/O error"
        else:
            assert job.state == "failed" and "storage error" in job.result["errors"]["*"], job
        assert top("observatory") == "observatory"  # searches go on, delta included
        wait_for(lambda: jobs.health()["documents"]["last_error"] is not None)
        assert all(worker["alive"] for worker in jobs.health().values())

        # room for the job queue but not for a new version: the compaction fails, nothing changes
        (small_disk / "reserve").unlink()
        job = wait_job(jobs, jobs.submit_refresh("default", None))
        assert job.state == "failed" and "storage error" in job.result["errors"]["*"], job.result
        assert "(after 2 attempts)" in job.result["errors"]["*"]
        assert (indexes.pointer.get(), indexes.registry.version_ids()) == (served, versions)
        assert indexes.retriever.index_version == served and top("observatory") == "observatory"

        # space is back: ingestion and compaction resume
        (small_disk / "filler").unlink()
        for doc_id in ("canal", "orchard"):
            assert wait_job(jobs, ingest(doc_id)).state == "done"
            acknowledged.add(doc_id)
        job = wait_job(jobs, jobs.submit_refresh("default", None))
        assert job.state == "done" and job.result["index"]["built"], job.result
        assert indexes.retriever.index_version == job.result["index"]["serving"] != served
        assert wait_job(jobs, ingest("mill")).state == "done"  # and into the delta of the new version
        acknowledged.add("mill")
        assert all(top(doc_id) == doc_id for doc_id in acknowledged)
    finally:
        assert serving.stop(10)

    # after a restart too: every acknowledged document is stored and found
    serving = load_indexes(settings, encoder)
    indexes = serving.indexes
    try:
        assert {d.id for d in indexes.store.changes_since(0).live} >= acknowledged
        assert all(top(doc_id) == doc_id for doc_id in acknowledged)
    finally:
        serving.stop(10)
