"""Background jobs: document batches and index refreshes, queued (service/application/jobqueue.py)
and run by two workers.

Document batches are applied to the document table and then to the serving delta index, so an
acknowledged (`done`) document is searchable at once. Refreshes (compaction, or a switch to an
existing version) can take minutes, so they have a worker of their own and never hold up
ingestion. When the delta outgrows `compact_after_chunks`, a refresh is queued automatically.

A worker outlives its storage failing (disk full, I/O errors): an error of the queue is logged,
shown by `health()`, and retried after a wait that doubles up to a limit; a job that fails on a
storage error runs again (in its place in the queue) up to `max_attempts` times. Only `stop()`
ends a worker.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from indexer.documents import DocumentStore
from ragserve.errors import OverloadedError, RagserveError, StorageUnavailableError
from ragserve.storage import is_storage_error
from ragserve.types import Document
from service.application.indexes import IndexManager
from service.application.jobqueue import DOCUMENTS_JOB, REFRESH_JOB, Job, JobQueue, documents_payload

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # an idle worker looks at the queue this often (a submission wakes it at once)
PRUNE_EVERY_S = 60.0  # finished jobs past their retention are deleted at most this often


@dataclass(frozen=True, slots=True)
class JobPolicy:
    """How workers retry and how long finished jobs are kept (from the settings)."""

    max_attempts: int  # runs of a job that fails on a storage error
    backoff_max_s: float
    retention_s: float
    backoff_first_s: float = 0.5  # not a setting: the first wait, doubled after each failure

    def backoff_s(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row: doubling from the first wait."""
        doublings = min(max(failures - 1, 0), 30)
        return min(self.backoff_max_s, self.backoff_first_s * float(2**doublings))


class Worker:
    """One thread that runs the queued jobs of one kind, in order, until `stop()`."""

    def __init__(self, queue: JobQueue, kind: str, run: Callable[[Job], dict[str, Any]], policy: JobPolicy) -> None:
        self.queue = queue
        self.kind = kind
        self.policy = policy
        self._run_job = run
        self.state = "idle"  # idle | running | backing_off
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # Unix time
        self._failures = 0  # store errors in a row (the backoff)
        self._next_prune = 0.0  # monotonic time; 0: prune at the start
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"ragserve-{kind}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Stop at the next batch boundary: a job in progress runs to its end and is recorded."""
        self._stop.set()
        self.wake.set()

    def join(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the thread to end; whether it did."""
        self._thread.join(timeout=max(0.0, timeout_s))
        return not self._thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> bool:
        self.request_stop()
        return self.join(timeout_s)

    def health(self) -> dict[str, Any]:
        """What /readyz shows of this worker; `pending` is None when the queue cannot be read."""
        try:
            pending: int | None = self.queue.count_pending(self.kind)
        except Exception as exc:  # the report must not fail with the store
            log.debug("counting pending %s jobs failed: %s", self.kind, exc)
            pending = None
        return {
            "alive": self._thread.is_alive(),
            "state": self.state,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "pending": pending,
        }

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # the queue failed (disk full, I/O): wait, then try again
                self.state = "backing_off"  # before the error shows: health() never pairs it with "idle"
                self._store_failed("reading the queue", exc)
                self._back_off()

    def _step(self) -> None:
        """Take the next job and run it, or wait for one."""
        self._prune_if_due()
        self.wake.clear()  # before looking: a submission after this wakes the wait below
        job = self.queue.next_queued(self.kind)
        self._failures = 0
        if job is None:
            self.state = "idle"
            if not self._stop.is_set():  # a stop before the clear above left no wake-up
                self.wake.wait(timeout=IDLE_POLL_S)
            return
        self.state = "running"
        if job.interrupted and job.attempts >= self.policy.max_attempts:  # it may be what kills its workers
            reason = f"interrupted {job.attempts} times (its worker died or hung): not run again"
            log.error("%s job %s %s", self.kind, job.id, reason)
            self._record(lambda: self.queue.finish(job.id, "failed", {"counts": {}, "errors": {"*": reason}}))
            return
        record, retry_in = self._run(job)
        self._record(record)
        if retry_in:  # the storage failed under the job: give it time before the job runs again
            self.state = "backing_off"
            self._stop.wait(timeout=retry_in)

    def _run(self, job: Job) -> tuple[Callable[[], bool], float]:
        """Run `job`; the write that records its end, and how long to wait before it runs again
        (0 unless it was queued again)."""
        try:
            result = self._run_job(job)
        except Exception as exc:  # the job records why; the worker goes on with the next one
            return self._failure(job, exc)
        return (lambda: self.queue.finish(job.id, "done", result)), 0.0

    def _failure(self, job: Job, exc: Exception) -> tuple[Callable[[], bool], float]:
        reason = str(exc)
        if is_storage_error(exc):
            attempts = job.attempts + 1
            self._note(f"{self.kind} job {job.id}, attempt {attempts} of {self.policy.max_attempts}", exc)
            reason = f"storage error: {exc}"
            if attempts < self.policy.max_attempts:
                return (lambda: self.queue.retry(job.id, attempts, reason)), self.policy.backoff_s(attempts)
            reason = f"{reason} (after {attempts} attempts)"
        elif not isinstance(exc, RagserveError):
            log.exception("%s job %s failed", self.kind, job.id)
        return (lambda: self.queue.finish(job.id, "failed", {"counts": {}, "errors": {"*": reason}})), 0.0

    def _record(self, write: Callable[[], bool]) -> None:
        """Record how a job ended, retrying while the store refuses (the job stays `running`
        meanwhile). On stop it gives up: the job's lease runs out and it runs again, which is
        harmless. A write that finds the job taken over (this worker's lease ran out) is dropped:
        the run of the worker that took it over counts."""
        while True:
            try:
                if not write():
                    log.warning("%s worker: a job it ran was taken over by another worker", self.kind)
                self._failures = 0
                return
            except Exception as exc:
                self._store_failed("recording a job's end", exc)
                if self._stop.is_set():
                    return
                self._back_off()

    def _prune_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_S  # also after a failure: pruning can wait
        removed = self.queue.prune(self.kind, time.time() - self.policy.retention_s)
        if removed:
            log.info("deleted %d finished %s jobs past their retention", removed, self.kind)

    def _store_failed(self, doing: str, exc: Exception) -> None:
        self._failures += 1
        self._note(doing, exc)

    def _note(self, doing: str, exc: Exception) -> None:
        """Log a failure and keep it for `health()`."""
        self.last_error, self.last_error_at = f"{doing}: {exc}", time.time()
        if is_storage_error(exc):
            log.warning("%s worker: %s failed: %s", self.kind, doing, exc)
        else:
            log.error("%s worker: %s failed", self.kind, doing, exc_info=exc)

    def _back_off(self) -> None:
        """Wait before the next try; a submission (the store took a write) or stop cuts it short."""
        self.state = "backing_off"
        self.wake.wait(timeout=self.policy.backoff_s(self._failures))
        self.wake.clear()


class Jobs:
    def __init__(
        self,
        queue: JobQueue,
        documents: DocumentStore,
        indexes: IndexManager,
        compact_after_chunks: int,
        policy: JobPolicy,
    ) -> None:
        self.queue = queue
        self.documents = documents
        self.indexes = indexes
        self.compact_after_chunks = compact_after_chunks
        self.policy = policy
        self._documents = Worker(queue, DOCUMENTS_JOB, self._apply_documents, self.policy)
        # A replica serving some shards holds only their changes: refreshes run where all are served.
        self._refresh = None if indexes.partial else Worker(queue, REFRESH_JOB, self._apply_refresh, self.policy)

    def submit_documents(self, upsert: list[Document], delete: list[str]) -> str:
        job_id = self._enqueue(DOCUMENTS_JOB, documents_payload(upsert, delete))
        self._documents.wake.set()
        return job_id

    def submit_refresh(self, name: str, version: str | None) -> str:
        """Queue a refresh of index `name`: a compaction, or a switch to `version`. Both are
        checked now, so an unknown index or version is refused before a job exists."""
        self.indexes.check(name)
        if version is not None:
            self.indexes.registry.path_of(version)
        job_id = self._enqueue(REFRESH_JOB, {"index": name, "version": version})
        if self._refresh is not None:
            self._refresh.wake.set()
        return job_id

    def _enqueue(self, kind: str, payload: dict[str, Any]) -> str:
        """Store a job, or raise StorageUnavailableError: no id is handed out for a job that
        was not stored."""
        try:
            return self.queue.enqueue(kind, payload)
        except Exception as exc:
            if is_storage_error(exc):
                raise StorageUnavailableError(f"the job could not be stored ({exc}); retry later") from exc
            raise

    def job(self, job_id: str) -> Job | None:
        """A job's state, item counts (`upserts`, `deletes`) and result; its payload is not read."""
        try:
            return self.queue.job(job_id)
        except Exception as exc:
            if is_storage_error(exc):
                raise StorageUnavailableError(f"the job could not be read ({exc}); retry later") from exc
            raise

    def health(self) -> dict[str, dict[str, Any]]:
        """Per worker (`documents`, `refresh`): alive, state, last_error, last_error_at, pending."""
        return {worker.kind: worker.health() for worker in self._workers}

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop both workers at a batch boundary, waiting `timeout_s` in all; whether both ended."""
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.request_stop()
        return all([worker.join(deadline - time.monotonic()) for worker in self._workers])

    @property
    def _workers(self) -> tuple[Worker, ...]:
        return (self._documents,) if self._refresh is None else (self._documents, self._refresh)

    def _apply_documents(self, job: Job) -> dict[str, Any]:
        applied = self.documents.apply(job.upsert, job.delete)
        problems = self.indexes.catch_up()
        if self._delta_too_big():
            self._queue_compaction()
        errors = {doc_id: problems[doc_id] for doc_id in applied.changed if doc_id in problems}
        return {"counts": applied.counts, "errors": errors}

    def _delta_too_big(self) -> bool:
        return 0 < self.compact_after_chunks <= self.indexes.delta_chunks

    def _queue_compaction(self) -> None:
        """Queue a refresh unless one is pending; the batch is applied already, so a queue that
        is full or failing only postpones it (the next batch tries again)."""
        try:
            if not self.queue.pending(REFRESH_JOB):
                log.info("delta holds %d chunks: queueing a compaction", self.indexes.delta_chunks)
                self.submit_refresh(self.indexes.registry.name, None)
        except Exception as exc:
            if not (isinstance(exc, (OverloadedError, StorageUnavailableError)) or is_storage_error(exc)):
                raise
            log.warning("could not queue a compaction: %s", exc)

    def _apply_refresh(self, job: Job) -> dict[str, Any]:
        name, version = job.payload["index"], job.payload["version"]
        result = self.indexes.switch(name, version) if version else self.indexes.refresh(name)
        return {"counts": {}, "errors": {}, "index": asdict(result)}
