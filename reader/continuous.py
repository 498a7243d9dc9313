"""Continuous batching of greedy answers: concurrent requests share every decoding step.

One worker thread owns a running batch of a causal LM. Between two decoding steps it takes the
requests that have queued up (up to `max_batch` rows in all), runs their prompts in one prefill
and merges them into the batch (`LM.merge`); a row leaves as soon as its answer ends
(`LM.select`), so a short answer never waits for a long one and a new request never waits
for a whole batch to finish. Rows may run different adapters and prompt prefixes: arrivals are
prefilled in groups of one adapter and prefix, then merged. Token choice and the stop rule are
those of reader/decoding.py's loop (`constrained_argmax`, `TextCodec.ends_answer`); the loop
itself is this worker's, since rows join and leave between its steps. On a 2-core CPU a decoding step of 8
rows costs about what one row's does (the weights are read once per step), which is where the
throughput comes from.

A request that is no longer wanted (ragserve/cancel.py: its deadline passed or its client went
away) is dropped before its prefill, or leaves the running batch at the next step, with the
cancellation's error.

The worker takes `Generator.lock` for one prefill or one step at a time, so other readers on the
same model interleave with it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ragserve import cancel
from reader.adapters import Adapter
from reader.decoding import without_end
from reader.extractive import SpanConstraint, constrained_argmax
from reader.generator import Generator
from reader.lm import LM, Batch


@dataclass
class _Request:
    prefix: Sequence[int]
    prompt: Sequence[int]
    max_new_tokens: int
    constraint: SpanConstraint | None = None  # extractive answers: only spans of the passages
    adapter: Adapter | None = None
    cancellation: cancel.Cancellation | None = None
    on_token: Callable[[int], None] | None = None  # a streamed answer's listener
    tokens: list[int] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done.set()

    def dropped(self) -> bool:
        """Finish with the cancellation's error if the request is no longer wanted."""
        if self.cancellation is None or not self.cancellation.cancelled:
            return False
        self.finish(self.cancellation.error())
        return True


class ContinuousDecoder:
    def __init__(self, generator: Generator, max_batch: int, max_wait_ms: float = 0.0) -> None:
        assert generator.lm.merges, "continuous batching needs a backend that merges batches"
        assert max_batch >= 1 and max_wait_ms >= 0
        self.generator = generator
        self.lm: LM = generator.lm
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="answer-decoder", daemon=True)
        self._worker.start()

    def greedy(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        prefix: Sequence[int] = (),
        constraint: SpanConstraint | None = None,
        adapter: Adapter | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> list[int]:
        """What `Generator.greedy(prompt, max_new_tokens, prefix, constraint, adapter, on_token)`
        returns, decoded with other requests (`on_token` is called on the decoder's thread)."""
        assert prompt and max_new_tokens >= 1
        request = _Request(prefix, prompt, max_new_tokens, constraint, adapter, cancel.current(), on_token)
        self._queue.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return without_end(request.tokens, self.generator.text.ends_answer)

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _run(self) -> None:
        active: list[_Request] = []
        batch: Batch | None = None
        while not (self._closed and not active):
            arrived = [r for r in self._arrivals(self.max_batch - len(active), not active) if not r.dropped()]
            try:
                with self.generator.running():
                    for group in _same_start(arrived):
                        joined = self.lm.start(group[0].prefix, [r.prompt for r in group], group[0].adapter)
                        batch = joined if batch is None else self.lm.merge(batch, joined)
                        active += group
                    if active:
                        assert batch is not None and batch.rows == len(active), "one row per request"
                        batch, active = self._step(batch, active)
            except BaseException as exc:  # every request in flight gets the error; the decoder goes on
                for request in {id(r): r for r in [*active, *arrived]}.values():
                    if not request.done.is_set():
                        request.finish(exc)
                active, batch = [], None

    def _step(self, batch: Batch, active: list[_Request]) -> tuple[Batch | None, list[_Request]]:
        """Choose every row's next token; finished rows leave; the others advance one step."""
        chosen = constrained_argmax(batch.logprobs, [r.constraint for r in active])  # (B,)
        keep: list[int] = []
        for row, (request, token) in enumerate(zip(active, chosen.tolist(), strict=True)):
            if request.dropped():
                continue
            request.tokens.append(token)
            if request.constraint is not None:
                request.constraint.advance(token)
            if self.generator.text.ends_answer(token) or len(request.tokens) >= request.max_new_tokens:
                request.finish()
            elif not _told(request, token):
                continue  # its listener failed: the row leaves, with that error
            else:
                keep.append(row)
        if not keep:
            return None, []
        rows = torch.tensor(keep)
        if len(keep) < len(active):
            batch = self.lm.select(batch, rows)
        return self.lm.step(batch, chosen[rows]), [active[i] for i in keep]

    def _arrivals(self, room: int, wait: bool) -> list[_Request]:
        """Queued requests, at most `room`. With `wait` (nothing running) block for the first one,
        then give others up to max_wait to arrive."""
        arrived: list[_Request] = []
        deadline = None
        while len(arrived) < room and not self._closed:
            try:
                if wait and not arrived:
                    item = self._queue.get()
                    deadline = time.monotonic() + self.max_wait
                else:
                    timeout = (deadline - time.monotonic()) if deadline is not None else 0
                    item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._closed = True
                break
            arrived.append(item)
        return arrived


def _told(request: _Request, token: int) -> bool:
    """Pass a token on to the request's listener; a listener that fails finishes its own request
    (with its error) and no other."""
    if request.on_token is None:
        return True
    try:
        request.on_token(token)
    except Exception as exc:
        request.finish(exc)
        return False
    return True


def _same_start(requests: Sequence[_Request]) -> list[list[_Request]]:
    """Requests grouped by adapter and prefix (one prefill each), in order of first arrival."""
    groups: dict[tuple[int, tuple[int, ...]], list[_Request]] = {}
    for request in requests:
        groups.setdefault((id(request.adapter), tuple(request.prefix)), []).append(request)
    return list(groups.values())
