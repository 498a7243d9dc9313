"""Ingestion: batches of upserts and deletes become jobs, a background worker applies them to the
document table and the delta index, so an acknowledged document is searchable at once."""

import logging
import threading

from indexer.documents import DocumentStore, Job
from indexer.sources import Document
from retriever.delta import DeltaIndex

log = logging.getLogger(__name__)


class Ingestion:
    def __init__(self, store: DocumentStore, delta: DeltaIndex) -> None:
        self.store = store
        self.delta = delta
        # Everything ingested so far goes back into the delta (it is not in any index version yet).
        delta.apply(list(store.live()), [], store.tombstones())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="ragserve-ingest", daemon=True)
        self._worker.start()

    def submit(self, upsert: list[Document], delete: list[str]) -> str:
        job_id = self.store.enqueue(upsert, delete)
        self._wake.set()
        return job_id

    def job(self, job_id: str) -> Job | None:
        return self.store.job(job_id)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self.store.next_queued()
            if job is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                applied = self.store.apply(job)
                problems = self.delta.apply(applied.changed, applied.removed, self.store.tombstones())
                self.store.finish(job.id, "done", {"counts": applied.counts, "errors": problems})
            except Exception as exc:  # the job records why; the worker goes on with the next one
                log.exception("ingestion job %s failed", job.id)
                self.store.finish(job.id, "failed", {"counts": {}, "errors": {"*": str(exc)}})
