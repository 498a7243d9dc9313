"""One thread runs the models' forward passes, whoever asks for them.

torch's OpenMP runtime (libgomp) gives every OS thread that starts a parallel region a team of
worker threads of its own, and once the process holds more OpenMP threads than there are CPUs it
stops spinning between parallel regions (libgomp's throttled spin count, ~100 spins): every
region then pays a futex wake-up. On 2 cores, two long-lived threads that both run models (the
search batcher and the answer decoder) made each ~1.6-1.9× slower: measured, a 300-token prefill
took 95 ms on a thread alone and 173 ms while a second thread had a team, a decoding step 39 ms
and 57 ms. So the forward passes of the retriever and the generator (`Encoder._forward`, the
`reader.lm` methods) hop onto this one thread (the hop costs tens of microseconds), and the search
batcher runs its batches here as tasks (retriever/batching.py, `on`). Small tensor
operations elsewhere are harmless, but not all are small: an argmax over (8, 49152) logits starts
a team in the thread that runs it (it left the answer decoder's thread with one after the first
concurrent requests, and every answer slower from then on), so greedy token choice hops too.

The caller's grad and inference modes go with the call (they are thread-local in torch).

torch is imported on the first hop, not with this module: the HTTP layer and the CLI's parser import
the core without loading it.

Only a server needs this: it is switched on by `use_compute_thread()` (service/application/loading.py), and
the models are built on the thread too, since loading them runs parallel regions of its own. A
command-line run (index build, eval) does everything on its own thread, as before.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_Task = tuple[Callable[[], object], "Future[object] | None"]  # None: posted, nobody waits
log = logging.getLogger(__name__)


class ComputeThread:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="torch-compute", daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[], R]) -> R:
        """fn() on this thread (directly when already on it), its result or its exception."""
        if threading.current_thread() is self._thread:
            return fn()
        future: Future[object] = Future()
        self._queue.put((fn, future))
        return future.result()  # type: ignore[return-value]  # fn's own result

    def post(self, fn: Callable[[], object]) -> None:
        """Run fn() on this thread later, after what is already queued; nobody waits for it (an
        exception is logged)."""
        self._queue.put((fn, None))

    def _serve(self) -> None:
        while True:
            fn, future = self._queue.get()
            try:
                result = fn()
            except BaseException as exc:  # handed to the caller
                if future is None:
                    log.exception("a posted task failed")
                else:
                    future.set_exception(exc)
                continue
            if future is not None:
                future.set_result(result)


_shared: ComputeThread | None = None
_shared_lock = threading.Lock()


def use_compute_thread() -> ComputeThread:
    """The process's compute thread (started on first use); from now on model work runs there."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ComputeThread()
        return _shared


def on_compute(fn: Callable[[], R]) -> R:
    """fn() on the compute thread when one is in use, else right here."""
    return _shared.run(fn) if _shared is not None else fn()


def on_compute_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """Run every call of `fn` on the compute thread (when one is in use), in the caller's grad and
    inference modes."""

    @functools.wraps(fn)
    def hop(*args: P.args, **kwargs: P.kwargs) -> R:
        if _shared is None:
            return fn(*args, **kwargs)
        import torch  # already loaded by whoever runs models; a dictionary look-up from then on

        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def call() -> R:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(*args, **kwargs)

        return _shared.run(call)

    return hop
