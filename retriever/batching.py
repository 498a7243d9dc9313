"""Micro-batching: work of concurrent callers coalesced into shared model calls.

On 2 cores, 8 simultaneous single-item forward passes each running with 2 intra-op threads
oversubscribe the machine and are slower in total than one pass over all 8 items. `MicroBatcher`
hands every call to one worker thread, which takes whatever has queued up (up to `max_batch`
items) and runs it in one call of `run`.

How long to wait for more: as many items as the previous batch held are expected back, so the
worker waits (at most `max_wait_ms`) until that many have queued. A lone client never waits (its
previous batch held one item), while under load the batches stay full instead of alternating
between one early arrival and everyone else — measured with 8 closed-loop clients, batches of 1
and 7 in turn, each paying a full forward pass.

Callers either block (`submit`, from a request thread) or await (`submit_async`, from the event
loop: no thread is held while the batch runs, and no thread hop is paid to get there).

Batches run on the batcher's own worker thread, or on a thread that is shared with other work
(`on`: the process's compute thread, ragserve/compute.py): then each batch is one task there,
queued behind what is already waiting (e.g. an answer's decoding step), so the models never run on
two threads at once.

Used for whole searches (`BatchedRetriever` below: query embeddings, index search and fusion of a
batch in one go). Answers are batched differently, with rows joining and leaving between decoding
steps (reader/continuous.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from ragserve.types import RetrievalMode, SearchResult
from retriever.base import Retriever

if TYPE_CHECKING:
    from ragserve.compute import ComputeThread

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Call(Generic[In, Out]):
    items: Sequence[In]
    on_done: Callable[[], None]  # called on the worker thread once results or error are set
    results: Sequence[Out] = ()
    error: BaseException | None = None

    def outcome(self) -> Sequence[Out]:
        if self.error is not None:
            raise self.error
        return self.results


class MicroBatcher(Generic[In, Out]):
    """`run(items) -> results` (aligned, one per item) called on batches of concurrent callers' items."""

    def __init__(
        self,
        run: Callable[[list[In]], Sequence[Out]],
        max_batch: int,
        max_wait_ms: float = 0.0,
        name: str = "batcher",
        on: ComputeThread | None = None,
    ) -> None:
        assert max_batch >= 1 and max_wait_ms >= 0, "max_batch >= 1 and max_wait_ms >= 0"
        self._run_batch = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: queue.SimpleQueue[_Call[In, Out] | None] = queue.SimpleQueue()
        self._expected = 1  # items the next batch waits for: what the previous one held
        self._on = on
        self._scheduled = False  # `on` mode: a batch task is queued on that thread or running
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        if on is None:
            self._worker = threading.Thread(target=self._run, name=name, daemon=True)
            self._worker.start()

    def submit(self, items: Sequence[In]) -> Sequence[Out]:
        """Results for `items` (in order), computed together with other callers' items."""
        done = threading.Event()
        call: _Call[In, Out] = _Call(items, done.set)
        self._enqueue(call)
        done.wait()
        return call.outcome()

    async def submit_async(self, items: Sequence[In]) -> Sequence[Out]:
        """`submit` for a coroutine on an event loop: awaits the batch instead of blocking a thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not future.done():  # the awaiting request may have been cancelled meanwhile
                future.set_result(None)

        def wake() -> None:  # on the worker thread
            with contextlib.suppress(RuntimeError):  # the loop closed while the batch ran: no one is waiting
                loop.call_soon_threadsafe(settle)

        call: _Call[In, Out] = _Call(items, wake)
        self._enqueue(call)
        await future
        return call.outcome()

    def close(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=10)

    def _enqueue(self, call: _Call[In, Out]) -> None:
        self._queue.put(call)
        if self._on is not None:
            self._schedule()

    def _schedule(self) -> None:
        assert self._on is not None
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        self._on.post(self._one_batch)

    def _one_batch(self) -> None:
        """`on` mode: run one batch of what has queued, then queue another task if calls remain
        (behind whatever else the shared thread has to do)."""
        try:
            first = self._queue.get_nowait()
        except queue.Empty:
            first = None
        if first is not None:
            self._execute(self._gather(first))
        with self._lock:
            self._scheduled = False
        if not self._queue.empty():
            self._schedule()

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            self._execute(self._gather(first))

    def _execute(self, batch: list[_Call[In, Out]]) -> None:
        try:
            results = self._run_batch([item for call in batch for item in call.items])
            assert len(results) == sum(len(call.items) for call in batch), "one result per item"
        except BaseException as exc:  # handed to every caller of this batch
            for call in batch:
                call.error = exc
                call.on_done()
            return
        at = 0
        for call in batch:
            call.results, at = results[at : at + len(call.items)], at + len(call.items)
            call.on_done()

    def _gather(self, first: _Call[In, Out]) -> list[_Call[In, Out]]:
        """`first` plus what is queued, and what arrives within max_wait while fewer items than the
        previous batch held are in; up to max_batch items."""
        batch, size = [first], len(first.items)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            try:
                timeout = deadline - time.monotonic() if size < self._expected else 0
                call = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if call is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(call)
            size += len(call.items)
        self._expected = size
        return batch


@dataclass(frozen=True, slots=True)
class _Search:
    query: str
    top_k: int
    mode: RetrievalMode | None


class BatchedRetriever(Retriever):
    """Concurrent searches coalesced into `search_batch` calls of the retriever it wraps.

    One worker runs each batch: the query embeddings in one forward pass, the index searched for
    all queries at once, the docstore read once. A batch holding several (top_k, mode) pairs is
    searched once per pair, and a pair whose search fails fails only its own callers."""

    def __init__(
        self, inner: Retriever, max_batch: int, max_wait_ms: float = 0.0, on: ComputeThread | None = None
    ) -> None:
        self.inner = inner
        self._batcher: MicroBatcher[_Search, SearchResult | Exception] = MicroBatcher(
            self._run, max_batch, max_wait_ms, "search-batcher", on
        )

    @property
    def index_version(self) -> str:
        return self.inner.index_version

    def search_batch(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[SearchResult]:
        return _raised(self._batcher.submit([_Search(q, top_k, mode) for q in queries]))

    async def search_async(self, query: str, top_k: int, mode: RetrievalMode | None = None) -> SearchResult:
        return _raised(await self._batcher.submit_async([_Search(query, top_k, mode)]))[0]

    def close(self) -> None:
        self._batcher.close()

    def _run(self, searches: list[_Search]) -> list[SearchResult | Exception]:
        groups: dict[tuple[int, RetrievalMode | None], list[int]] = {}
        for i, search in enumerate(searches):
            groups.setdefault((search.top_k, search.mode), []).append(i)
        results: dict[int, SearchResult | Exception] = {}
        for (top_k, mode), at in groups.items():
            try:
                found: Sequence[SearchResult | Exception] = self.inner.search_batch(
                    [searches[i].query for i in at], top_k, mode
                )
            except Exception as exc:  # handed to this group's callers, not the others
                found = [exc] * len(at)
            for i, result in zip(at, found, strict=True):
                results[i] = result
        return [results[i] for i in range(len(searches))]


def _raised(results: Sequence[SearchResult | Exception]) -> list[SearchResult]:
    for result in results:
        if isinstance(result, Exception):
            raise result
    return [r for r in results if isinstance(r, SearchResult)]
