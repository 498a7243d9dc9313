"""Coalescing concurrent query embeddings into shared forward passes.

Requests embed their query on their own threads; on 2 cores, 8 simultaneous single-query forward
passes each running with 2 intra-op threads oversubscribe the machine and are slower in total than
one pass over all 8 queries. `QueryBatcher` hands every call to one worker thread, which takes
whatever has queued up (up to `max_batch` queries, waiting at most `max_wait_ms` for more once it
has one) and embeds it in one pass. A lone request waits for nothing when `max_wait_ms` is 0:
batches form only from requests that arrived while the previous pass was running.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

EncodeFn = Callable[[Sequence[str]], np.ndarray]


@dataclass
class _Call:
    queries: Sequence[str]
    done: threading.Event = field(default_factory=threading.Event)
    vectors: np.ndarray | None = None
    error: BaseException | None = None


class QueryBatcher:
    def __init__(self, encode: EncodeFn, max_batch: int = 32, max_wait_ms: float = 0.0) -> None:
        assert max_batch >= 1 and max_wait_ms >= 0, "max_batch >= 1 and max_wait_ms >= 0"
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._run, name="query-batcher", daemon=True)
        self._worker.start()

    def encode(self, queries: Sequence[str]) -> np.ndarray:
        """(len(queries), dim) embeddings, computed together with other callers' queries."""
        call = _Call(queries)
        self._queue.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        assert call.vectors is not None
        return call.vectors

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = self._gather(first)
            try:
                vectors = self._encode([q for call in batch for q in call.queries])  # (sum of queries, dim)
            except BaseException as exc:  # handed to every caller of this batch
                for call in batch:
                    call.error = exc
                    call.done.set()
                continue
            at = 0
            for call in batch:
                call.vectors, at = vectors[at : at + len(call.queries)], at + len(call.queries)
                call.done.set()

    def _gather(self, first: _Call) -> list[_Call]:
        """`first` plus what is queued (and what arrives within max_wait), up to max_batch queries."""
        batch, size = [first], len(first.queries)
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
            size += len(call.queries)
        return batch
