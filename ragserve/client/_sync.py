"""The synchronous client: `Client("http://127.0.0.1:8000", token=...)`."""

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TypeVar

import httpx

from ragserve.client import _ops
from ragserve.client._core import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_PENDING_JOBS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    Attempts,
    Call,
    DocumentLike,
    IngestPlan,
    Op,
    Poller,
    ProgressFn,
    RetryPolicy,
    client_headers,
    is_failure,
)
from ragserve.client._errors import error_from_response, network_error
from ragserve.client._sse import AnswerStream, is_event_stream
from ragserve.client._types import (
    Adapter,
    AdapterLoaded,
    Adapters,
    Answer,
    DefaultAdapter,
    DoneEvent,
    Edit,
    Index,
    IngestResult,
    Job,
    Readiness,
    Retrieval,
    StreamEvent,
    Switch,
)
from ragserve.types import RetrievalMode

T = TypeVar("T")


class Client:
    """A ragserve server's API. Refusals that ask to come back (429, 503) are retried up to
    `max_retries` times with exponential backoff, waiting at least their Retry-After; so are
    connection failures of requests that change nothing. Error responses raise the domain
    exception the server raised (ragserve/errors.py: UnknownReaderError, UnauthorizedError, ...),
    codes it does not know an APIError; no answer at all raises a NetworkError."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = RetryPolicy(max_retries)
        self._http = httpx.Client(
            base_url=self.base_url, headers=client_headers(token, headers), timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # --- questions ---------------------------------------------------------------------------

    def ask(
        self,
        question: str,
        *,
        top_k: int | None = None,
        reader: str | None = None,
        retrieval: RetrievalMode | str | None = None,
        extractive: bool | None = None,
        adapter: str | None = None,
        abstain: bool | None = None,
        edits: bool | None = None,
    ) -> Answer:
        """An answer from the indexed documents, with its citations; options left None keep the
        server's defaults. `abstain`: refuse when the passages do not support an answer; `edits`
        False: ignore the edit memory."""
        options = {"top_k": top_k, "reader": reader, "retrieval": retrieval, "extractive": extractive}
        options |= {"abstain": abstain, "edits": edits}
        return self._run(_ops.ask(question, adapter=adapter, **options))

    def ask_stream(
        self,
        question: str,
        *,
        top_k: int | None = None,
        reader: str | None = None,
        retrieval: RetrievalMode | str | None = None,
        extractive: bool | None = None,
        adapter: str | None = None,
        abstain: bool | None = None,
        edits: bool | None = None,
    ) -> Iterator[StreamEvent]:
        """The answer as it is written: a CitationsEvent, TokenEvents, then a DoneEvent with the
        whole Answer. An error mid-way raises its domain exception."""
        options = {"top_k": top_k, "reader": reader, "retrieval": retrieval, "extractive": extractive}
        options |= {"abstain": abstain, "edits": edits}
        call = _ops.ask_stream(question, adapter=adapter, **options)
        response = self._send(call, stream=True)
        try:
            if not is_event_stream(response):
                response.read()
                yield DoneEvent(Answer.of(response.json()))
                return
            stream = AnswerStream(self.base_url + call.path)
            for line in response.iter_lines():
                if (event := stream.feed(line)) is not None:
                    yield event
            if (event := stream.finish()) is not None:
                yield event
        except httpx.TransportError as exc:
            raise network_error(exc, self.base_url + call.path) from exc
        finally:
            response.close()

    def retrieve(
        self, query: str, *, top_k: int | None = None, retrieval: RetrievalMode | str | None = None
    ) -> Retrieval:
        """The passages a question would be answered from, best first (no reader)."""
        return self._run(_ops.retrieve(query, top_k=top_k, retrieval=retrieval))

    # --- documents and jobs ------------------------------------------------------------------

    def ingest(
        self,
        documents: Iterable[DocumentLike],
        *,
        delete: Sequence[str] = (),
        batch_size: int = DEFAULT_BATCH_SIZE,
        wait: bool = True,
        progress: ProgressFn | None = None,
        max_pending_jobs: int = DEFAULT_MAX_PENDING_JOBS,
        job_timeout: float | None = None,
    ) -> IngestResult:
        """Upsert `documents` (Document objects or {id, title, text, metadata} mappings) and
        delete the ids in `delete`, `batch_size` to a job. With `wait`, at most
        `max_pending_jobs` are queued at a time and every one is followed to its end;
        `progress` gets an IngestProgress after each batch sent and each job finished."""
        plan = IngestPlan(progress, max_pending_jobs)
        for body in plan.batches(documents, delete, batch_size):
            while wait and plan.full:
                plan.finished(self.wait_job(plan.oldest, timeout=job_timeout))
            plan.sent(self._run(_ops.submit(body)), body)
        while wait and plan.pending:
            plan.finished(self.wait_job(plan.oldest, timeout=job_timeout))
        return plan.result()

    def job(self, job_id: str) -> Job:
        return self._run(_ops.job(job_id))

    def wait_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        """The job once it is done or failed; JobTimeoutError if that takes over `timeout` seconds."""
        poller = Poller(job_id, timeout, time.monotonic())
        while not (job := self.job(job_id)).finished:
            time.sleep(poller.next_delay(job, time.monotonic()))
        return job

    # --- index administration (admin token) --------------------------------------------------

    def indexes(self) -> tuple[Index, ...]:
        """The index the server serves: its versions, the serving one, the live replicas."""
        return self._run(_ops.indexes())

    def refresh(
        self, name: str | None = None, *, version: str | None = None, wait: bool = True, timeout: float | None = None
    ) -> Job:
        """Compact the serving version and the document changes since into a new version and
        serve it (or serve the existing `version`): a job, followed to its end with `wait`.
        `name`: the index; default the one the server serves."""
        job_id = self._run(_ops.refresh(name or self._index_name(), version))
        return self.wait_job(job_id, timeout=timeout) if wait else self.job(job_id)

    def rollback(self, version: str, *, name: str | None = None) -> Switch:
        """Serve an earlier version again."""
        return self._run(_ops.rollback(name or self._index_name(), version))

    def _index_name(self) -> str:
        return self.indexes()[0].name

    # --- reader adapters (admin token) -------------------------------------------------------

    def adapters(self) -> Adapters:
        return self._run(_ops.adapters())

    def load_adapter(self, name: str, path: str | None = None) -> AdapterLoaded:
        """Load (or replace) adapter `name`: from a folder `path` on the server, else from its
        adapter directory or the bundled ones."""
        return self._run(_ops.load_adapter(name, path))

    def unload_adapter(self, name: str) -> Adapter:
        return self._run(_ops.unload_adapter(name))

    def set_default_adapter(self, name: str) -> DefaultAdapter:
        """The adapter of requests that name none ('none': the base model), until the server restarts."""
        return self._run(_ops.set_default_adapter(name))

    # --- the edit memory (admin token) -------------------------------------------------------

    def create_edit(self, question: str, answer: str, *, statement: str | None = None, note: str | None = None) -> Edit:
        """Correct one fact: `question` (and its paraphrases) are answered `answer` from now on."""
        return self._run(_ops.create_edit(question, answer, statement, note))

    def edits(self, *, include_deleted: bool = False) -> tuple[Edit, ...]:
        """Every live edit (with the deleted ones: the audit trail), page after page."""
        found: list[Edit] = []
        after: str | None = None
        while True:
            page, after = self._run(_ops.edits_page(include_deleted, after))
            found += page
            if after is None:
                return tuple(found)

    def edit(self, edit_id: str) -> Edit:
        return self._run(_ops.get_edit(edit_id))

    def delete_edit(self, edit_id: str) -> Edit:
        """Undo an edit: its questions are answered from the documents again."""
        return self._run(_ops.delete_edit(edit_id))

    # --- operations --------------------------------------------------------------------------

    def ready(self) -> Readiness:
        return self._run(_ops.ready())

    def _run(self, op: Op[T]) -> T:
        response = self._send(op.call)
        return op.parse(response)

    def _send(self, call: Call, stream: bool = False) -> httpx.Response:
        """The final answer to `call`, after the retries it earns; an error answer raised."""
        attempts = Attempts(self.retry, call, self.base_url)
        while True:
            request = self._http.build_request(call.method, call.path, json=call.json)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                time.sleep(attempts.after_transport_error(exc))
                continue
            if (delay := attempts.after_response(response)) is None:
                break
            response.close()
            time.sleep(delay)
        if is_failure(response, call):
            try:
                response.read()
            except httpx.TransportError as exc:
                raise network_error(exc, attempts.url) from exc
            finally:
                response.close()
            error, cause = error_from_response(response)
            raise error from cause
        return response
