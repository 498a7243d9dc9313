"""Background jobs: document batches and index refreshes, queued (service/application/jobqueue.py)
and run by two workers.

Document batches are applied to the document table and then to the serving delta index, so an
acknowledged (`done`) document is searchable at once. Refreshes (compaction, or a switch to an
existing version) can take minutes, so they have a worker of their own and never hold up
ingestion. When the delta outgrows `compact_after_chunks`, a refresh is queued automatically.
"""

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from indexer.documents import DocumentStore
from ragserve.errors import RagserveError
from ragserve.types import Document
from service.application.indexes import IndexManager
from service.application.jobqueue import DOCUMENTS_JOB, REFRESH_JOB, Job, JobQueue, documents_payload

log = logging.getLogger(__name__)


class Worker:
    """One thread that runs the queued jobs of one kind, in order."""

    def __init__(self, queue: JobQueue, kind: str, run: Callable[[Job], dict[str, Any]]) -> None:
        self.queue = queue
        self.kind = kind
        self._run_job = run
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"ragserve-{kind}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.queue.next_queued(self.kind)
            if job is None:
                self.wake.wait(timeout=1.0)
                self.wake.clear()
                continue
            try:
                self.queue.finish(job.id, "done", self._run_job(job))
            except Exception as exc:  # the job records why; the worker goes on with the next one
                if not isinstance(exc, RagserveError):
                    log.exception("%s job %s failed", self.kind, job.id)
                self.queue.finish(job.id, "failed", {"counts": {}, "errors": {"*": str(exc)}})


class Jobs:
    def __init__(
        self, queue: JobQueue, documents: DocumentStore, indexes: IndexManager, compact_after_chunks: int
    ) -> None:
        self.queue = queue
        self.documents = documents
        self.indexes = indexes
        self.compact_after_chunks = compact_after_chunks
        self._documents = Worker(queue, DOCUMENTS_JOB, self._apply_documents)
        self._refresh = Worker(queue, REFRESH_JOB, self._apply_refresh)

    def submit_documents(self, upsert: list[Document], delete: list[str]) -> str:
        job_id = self.queue.enqueue(DOCUMENTS_JOB, documents_payload(upsert, delete))
        self._documents.wake.set()
        return job_id

    def submit_refresh(self, name: str, version: str | None) -> str:
        """Queue a refresh of index `name`: a compaction, or a switch to `version`. Both are
        checked now, so an unknown index or version is refused before a job exists."""
        self.indexes.check(name)
        if version is not None:
            self.indexes.registry.path_of(version)
        job_id = self.queue.enqueue(REFRESH_JOB, {"index": name, "version": version})
        self._refresh.wake.set()
        return job_id

    def job(self, job_id: str) -> Job | None:
        return self.queue.job(job_id)

    def stop(self) -> None:
        self._documents.stop()
        self._refresh.stop()

    def _apply_documents(self, job: Job) -> dict[str, Any]:
        applied = self.documents.apply(job.upsert, job.delete)
        problems = self.indexes.catch_up()
        if self._delta_too_big() and not self.queue.pending(REFRESH_JOB):
            log.info("delta holds %d chunks: queueing a compaction", self.indexes.delta_chunks)
            self.submit_refresh(self.indexes.registry.name, None)
        errors = {doc_id: problems[doc_id] for doc_id in applied.changed if doc_id in problems}
        return {"counts": applied.counts, "errors": errors}

    def _delta_too_big(self) -> bool:
        return 0 < self.compact_after_chunks <= self.indexes.delta_chunks

    def _apply_refresh(self, job: Job) -> dict[str, Any]:
        name, version = job.payload["index"], job.payload["version"]
        result = self.indexes.switch(name, version) if version else self.indexes.refresh(name)
        return {"counts": {}, "errors": {}, "index": asdict(result)}
