"""Streamed answers: the engine's work on a worker thread, its progress as events on the loop.

`follow` runs one `QAEngine.ask` in the thread pool with a listener that hands what happens over
to the event loop (`loop.call_soon_threadsafe`): the passages once they are found, the answer's
text piece by piece, then the result or the error. The caller turns those into its wire format:
server-sent events for `/v1/ask` (`ask_events`), OpenAI chunks for `/v1/chat/completions`
(service/http/openai.py). Streamed requests decode in the same continuous batches as plain ones
(they are the same `ask`); a client that goes away sets the request's cancellation (the
admission middleware watches the connection), and the decoder drops its row at the next step.

The queue between the two sides holds at most the passages, one piece per decoded token
(`max_new_tokens`) and the end: it is bounded by the request, not by a setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from ragserve.cancel import DISCONNECTED, Cancellation
from ragserve.errors import RagserveError
from ragserve.types import SearchResult
from service.application.engine import AskListener, AskResult
from service.http.errors import domain_response
from service.http.schemas import AskResponse, CitationOut

log = logging.getLogger(__name__)

SSE_MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # nginx: pass events on at once
KEEPALIVE = b": keep-alive\n\n"


@dataclass(frozen=True, slots=True)
class Retrieved:
    found: SearchResult


@dataclass(frozen=True, slots=True)
class Text:
    piece: str


@dataclass(frozen=True, slots=True)
class Finished:
    result: AskResult


@dataclass(frozen=True, slots=True)
class Failed:
    error: RagserveError


Event = Retrieved | Text | Finished | Failed


class _Listener:
    """The engine's listener (worker thread) → the stream's queue (event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Event]) -> None:
        self.loop = loop
        self.queue = queue

    def put(self, event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody follows this answer any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def retrieved(self, found: SearchResult) -> None:
        self.put(Retrieved(found))

    def text(self, piece: str) -> None:
        self.put(Text(piece))


def _run(work: Callable[[AskListener], AskResult], listener: _Listener) -> None:
    try:
        listener.put(Finished(work(listener)))
    except RagserveError as exc:
        listener.put(Failed(exc))
    except Exception:
        log.exception("a streamed answer failed")
        listener.put(Failed(RagserveError("internal error")))


async def follow(
    work: Callable[[AskListener], AskResult], keepalive_s: float, cancellation: Cancellation | None
) -> AsyncIterator[Event | None]:
    """The events of `work` (an `ask` given a listener) as they happen, with None after every
    `keepalive_s` without one; ends after `Finished` or `Failed`. Closed early (the client went
    away), it marks the request cancelled so its work stops at the next decoding step."""
    queue: asyncio.Queue[Event] = asyncio.Queue()
    listener = _Listener(asyncio.get_running_loop(), queue)
    worker = asyncio.ensure_future(run_in_threadpool(_run, work, listener))
    worker.add_done_callback(lambda task: task.cancelled() or task.exception())  # never "not retrieved"
    getter: asyncio.Task[Event] | None = None
    ended = False
    try:
        while not ended:
            getter = getter or asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter}, timeout=keepalive_s)  # the same getter: nothing is lost
            if not done:
                yield None
                continue
            event, getter = getter.result(), None
            ended = isinstance(event, Finished | Failed)
            yield event
    finally:
        if getter is not None:
            getter.cancel()
        if not ended and cancellation is not None:
            cancellation.cancel(DISCONNECTED)


def sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def error_data(exc: RagserveError) -> dict[str, object]:
    """The JSON body the error would have had as a plain response."""
    _, body, _ = domain_response(exc)
    return body


async def ask_events(
    events: AsyncIterator[Event | None], on_result: Callable[[AskResult], None]
) -> AsyncIterator[bytes]:
    """`/v1/ask`'s stream: `citations` (the passages found), `token`s, then `done` with the whole
    answer object, or `error` with the error's JSON body; keep-alive comments while idle."""
    async for event in events:
        if event is None:
            yield KEEPALIVE
        elif isinstance(event, Retrieved):
            citations = [CitationOut.cite(p, None).model_dump() for p in event.found.passages]
            yield sse("citations", {"citations": citations, "index_version": event.found.index_version})
        elif isinstance(event, Text):
            yield sse("token", {"text": event.piece})
        elif isinstance(event, Finished):
            on_result(event.result)
            yield sse("done", AskResponse.of(event.result).model_dump())
        else:
            yield sse("error", error_data(event.error))
