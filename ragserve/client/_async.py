"""The asynchronous client: `AsyncClient("http://127.0.0.1:8000", token=...)`, the same operations
as `Client` (ragserve/client/_sync.py), awaited; `ask_stream` is an async iterator."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
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


class AsyncClient:
    """A ragserve server's API, for asyncio. Refusals that ask to come back (429, 503) are retried up to
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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = RetryPolicy(max_retries)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=client_headers(token, headers), timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    close = aclose

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- questions ---------------------------------------------------------------------------

    async def ask(
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
        return await self._run(_ops.ask(question, adapter=adapter, **options))

    async def ask_stream(
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
    ) -> AsyncIterator[StreamEvent]:
        """The answer as it is written: a CitationsEvent, TokenEvents, then a DoneEvent with the
        whole Answer. An error mid-way raises its domain exception."""
        options = {"top_k": top_k, "reader": reader, "retrieval": retrieval, "extractive": extractive}
        options |= {"abstain": abstain, "edits": edits}
        call = _ops.ask_stream(question, adapter=adapter, **options)
        response = await self._send(call, stream=True)
        try:
            if not is_event_stream(response):
                await response.aread()
                yield DoneEvent(Answer.of(response.json()))
                return
            stream = AnswerStream(self.base_url + call.path)
            async for line in response.aiter_lines():
                if (event := stream.feed(line)) is not None:
                    yield event
            if (event := stream.finish()) is not None:
                yield event
        except httpx.TransportError as exc:
            raise network_error(exc, self.base_url + call.path) from exc
        finally:
            await response.aclose()

    async def retrieve(
        self, query: str, *, top_k: int | None = None, retrieval: RetrievalMode | str | None = None
    ) -> Retrieval:
        """The passages a question would be answered from, best first (no reader)."""
        return await self._run(_ops.retrieve(query, top_k=top_k, retrieval=retrieval))

    # --- documents and jobs ------------------------------------------------------------------

    async def ingest(
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
                plan.finished(await self.wait_job(plan.oldest, timeout=job_timeout))
            plan.sent(await self._run(_ops.submit(body)), body)
        while wait and plan.pending:
            plan.finished(await self.wait_job(plan.oldest, timeout=job_timeout))
        return plan.result()

    async def job(self, job_id: str) -> Job:
        return await self._run(_ops.job(job_id))

    async def wait_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        """The job once it is done or failed; JobTimeoutError if that takes over `timeout` seconds."""
        poller = Poller(job_id, timeout, time.monotonic())
        while not (job := await self.job(job_id)).finished:
            await asyncio.sleep(poller.next_delay(job, time.monotonic()))
        return job

    # --- index administration (admin token) --------------------------------------------------

    async def indexes(self) -> tuple[Index, ...]:
        """The index the server serves: its versions, the serving one, the live replicas."""
        return await self._run(_ops.indexes())

    async def refresh(
        self, name: str | None = None, *, version: str | None = None, wait: bool = True, timeout: float | None = None
    ) -> Job:
        """Compact the serving version and the document changes since into a new version and
        serve it (or serve the existing `version`): a job, followed to its end with `wait`.
        `name`: the index; default the one the server serves."""
        job_id = await self._run(_ops.refresh(name or await self._index_name(), version))
        return await self.wait_job(job_id, timeout=timeout) if wait else await self.job(job_id)

    async def rollback(self, version: str, *, name: str | None = None) -> Switch:
        """Serve an earlier version again."""
        return await self._run(_ops.rollback(name or await self._index_name(), version))

    async def _index_name(self) -> str:
        return (await self.indexes())[0].name

    # --- reader adapters (admin token) -------------------------------------------------------

    async def adapters(self) -> Adapters:
        return await self._run(_ops.adapters())

    async def load_adapter(self, name: str, path: str | None = None) -> AdapterLoaded:
        """Load (or replace) adapter `name`: from a folder `path` on the server, else from its
        adapter directory or the bundled ones."""
        return await self._run(_ops.load_adapter(name, path))

    async def unload_adapter(self, name: str) -> Adapter:
        return await self._run(_ops.unload_adapter(name))

    async def set_default_adapter(self, name: str) -> DefaultAdapter:
        """The adapter of requests that name none ('none': the base model), until the server restarts."""
        return await self._run(_ops.set_default_adapter(name))

    # --- the edit memory (admin token) -------------------------------------------------------

    async def create_edit(
        self, question: str, answer: str, *, statement: str | None = None, note: str | None = None
    ) -> Edit:
        """Correct one fact: `question` (and its paraphrases) are answered `answer` from now on."""
        return await self._run(_ops.create_edit(question, answer, statement, note))

    async def edits(self, *, include_deleted: bool = False) -> tuple[Edit, ...]:
        """Every live edit (with the deleted ones: the audit trail), page after page."""
        found: list[Edit] = []
        after: str | None = None
        while True:
            page, after = await self._run(_ops.edits_page(include_deleted, after))
            found += page
            if after is None:
                return tuple(found)

    async def edit(self, edit_id: str) -> Edit:
        return await self._run(_ops.get_edit(edit_id))

    async def delete_edit(self, edit_id: str) -> Edit:
        """Undo an edit: its questions are answered from the documents again."""
        return await self._run(_ops.delete_edit(edit_id))

    # --- operations --------------------------------------------------------------------------

    async def ready(self) -> Readiness:
        return await self._run(_ops.ready())

    async def _run(self, op: Op[T]) -> T:
        response = await self._send(op.call)
        return op.parse(response)

    async def _send(self, call: Call, stream: bool = False) -> httpx.Response:
        """The final answer to `call`, after the retries it earns; an error answer raised."""
        attempts = Attempts(self.retry, call, self.base_url)
        while True:
            request = self._http.build_request(call.method, call.path, json=call.json)
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                await asyncio.sleep(attempts.after_transport_error(exc))
                continue
            if (delay := attempts.after_response(response)) is None:
                break
            await response.aclose()
            await asyncio.sleep(delay)
        if is_failure(response, call):
            try:
                await response.aread()
            except httpx.TransportError as exc:
                raise network_error(exc, attempts.url) from exc
            finally:
                await response.aclose()
            error, cause = error_from_response(response)
            raise error from cause
        return response
