"""Whether the request being worked on is still wanted: its deadline has not passed and its client
is still connected.

The HTTP layer makes one `Cancellation` per model-backed request (service/http/admission.py),
marks it when the deadline passes or the client disconnects, and the engine makes it the current
one (`current_request`) for the thread that does the work. The readers never see HTTP: the
answer decoder drops a cancelled request before its prefill and takes it out of the running batch
at the next decoding step (reader/continuous.py), the one-request decoding loop checks it every
step (reader/decoding.py), so abandoned work stops within one step instead of running to the end.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

from ragserve.errors import ClientGoneError, DeadlineExceededError, RagserveError

DEADLINE = "deadline_exceeded"
DISCONNECTED = "client_disconnected"
ENDED = "request_ended"  # the request is over (e.g. a shutdown cut it short): nobody waits for the work


class Cancellation:
    """Set once, with a reason; readable from any thread without a lock."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def cancel(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def error(self) -> RagserveError:
        if self.reason == DISCONNECTED:
            return ClientGoneError("the client disconnected; its request was dropped")
        if self.reason == ENDED:
            return ClientGoneError("the request ended before its work did; the work was dropped")
        return DeadlineExceededError("the request's deadline passed before its answer was ready (request_deadline_s)")

    def check(self) -> None:
        """Raise the reason's error when cancelled."""
        if self._event.is_set():
            raise self.error()


_current: contextvars.ContextVar[Cancellation | None] = contextvars.ContextVar("ragserve_cancellation", default=None)


def current() -> Cancellation | None:
    """The cancellation of the request this thread works for; None outside a request."""
    return _current.get()


def check() -> None:
    """Raise when the current request is no longer wanted (a no-op outside a request)."""
    cancellation = _current.get()
    if cancellation is not None:
        cancellation.check()


@contextlib.contextmanager
def current_request(cancellation: Cancellation | None) -> Iterator[None]:
    token = _current.set(cancellation)
    try:
        yield
    finally:
        _current.reset(token)
