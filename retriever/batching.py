"""Micro-batching: work of concurrent callers coalesced into shared model calls.

Requests run on their own threads; on 2 cores, 8 simultaneous single-item forward passes each
running with 2 intra-op threads oversubscribe the machine and are slower in total than one pass
over all 8 items. `MicroBatcher` hands every call to one worker thread, which takes whatever has
queued up (up to `max_batch` items, waiting at most `max_wait_ms` for more once it has one) and
runs it in one call of `run`. A lone request waits for nothing when `max_wait_ms` is 0: batches
form only from requests that arrived while the previous batch was running.

Used for query embeddings (retriever/encoder.py). Answers are batched differently, with rows
joining and leaving between decoding steps (reader/continuous.py).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Call(Generic[In, Out]):
    items: Sequence[In]
    done: threading.Event = field(default_factory=threading.Event)
    results: Sequence[Out] = ()
    error: BaseException | None = None


class MicroBatcher(Generic[In, Out]):
    """`run(items) -> results` (aligned, one per item) called on batches of concurrent callers' items."""

    def __init__(
        self, run: Callable[[list[In]], Sequence[Out]], max_batch: int, max_wait_ms: float = 0.0, name: str = "batcher"
    ) -> None:
        assert max_batch >= 1 and max_wait_ms >= 0, "max_batch >= 1 and max_wait_ms >= 0"
        self._run_batch = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: queue.SimpleQueue[_Call[In, Out] | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    def submit(self, items: Sequence[In]) -> Sequence[Out]:
        """Results for `items` (in order), computed together with other callers' items."""
        call: _Call[In, Out] = _Call(items)
        self._queue.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.results

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = self._gather(first)
            try:
                results = self._run_batch([item for call in batch for item in call.items])
                assert len(results) == sum(len(call.items) for call in batch), "one result per item"
            except BaseException as exc:  # handed to every caller of this batch
                for call in batch:
                    call.error = exc
                    call.done.set()
                continue
            at = 0
            for call in batch:
                call.results, at = results[at : at + len(call.items)], at + len(call.items)
                call.done.set()

    def _gather(self, first: _Call[In, Out]) -> list[_Call[In, Out]]:
        """`first` plus what is queued (and what arrives within max_wait), up to max_batch items."""
        batch, size = [first], len(first.items)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            try:
                timeout = deadline - time.monotonic()
                call = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if call is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(call)
            size += len(call.items)
        return batch
