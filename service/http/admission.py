"""Admission control for the model-backed routes: a bounded number of requests in service, a
bounded queue, a deadline, and work dropped for clients that went away.

Every model-backed route has a `Gate`: at most `limit` requests in service and `queue` waiting
for a place, first come first served. One more is refused at once with 429 and `Retry-After`
(no thread, no body read, no model time spent on it); while the server loads or drains, with
503. So a saturated server keeps answering in milliseconds, and the requests it accepts are
answered about as fast as at its comfortable load instead of all of them slowing down together.

Each admitted request carries a `Cancellation` (ragserve/cancel.py) in `scope["state"]`: it is
set when the request's deadline (`request_deadline_s`, counted from arrival, queueing included)
passes or when its client disconnects, and the readers stop its work at the next decoding step.
A request still queued at its deadline is answered 504 without running.

Plain ASGI, on the event loop only (no lock: everything here runs on one thread).
"""

import asyncio
import collections
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragserve.cancel import DEADLINE, DISCONNECTED, ENDED, Cancellation
from ragserve.errors import DeadlineExceededError, OverloadedError, RagserveError
from service.http.errors import send_error

CANCELLATION = "cancellation"  # the key of a request's Cancellation in scope["state"]


@dataclass
class Gate:
    """At most `limit` requests in service and `queue` waiting, for one route."""

    route: str
    limit: int
    queue: int
    in_service: int = 0
    waiting: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)  # by reason

    async def enter(self, timeout_s: float) -> None:
        """Take a place in service, waiting up to `timeout_s` in the queue; raises OverloadedError
        when the queue is full and DeadlineExceededError when the wait outlasts the timeout."""
        if self.in_service < self.limit and not self.waiting:
            self.in_service += 1
            return
        if len(self.waiting) >= self.queue:
            self.rejected["queue_full"] += 1
            raise OverloadedError(
                f"{self.route} is at capacity ({self.limit} in service, {self.queue} queued; settings "
                "*_max_in_service, *_max_queue); retry shortly"
            )
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(place)
        try:
            await asyncio.wait_for(asyncio.shield(place), timeout_s)
        except BaseException:
            if place.done() and not place.cancelled():
                self.leave()  # the place was handed over just as the wait ended: pass it on
            else:
                place.cancel()
                self.waiting.remove(place)
            raise

    def resize(self, limit: int) -> None:
        """A new limit of requests in service, at once: a higher one admits requests waiting now;
        a lower one takes effect as requests leave (none is cut short)."""
        self.limit = limit
        while self.in_service < self.limit and self._hand_over():
            self.in_service += 1

    def leave(self) -> None:
        """Give the place to the longest waiting request, or free it (and free it for good while
        more are in service than a lowered limit allows)."""
        if self.in_service > self.limit or not self._hand_over():
            self.in_service -= 1

    def _hand_over(self) -> bool:
        """Give a place to the longest waiting request; whether one was waiting."""
        while self.waiting:
            place = self.waiting.popleft()
            if not place.done():
                place.set_result(None)
                return True
        return False


@dataclass
class AdmissionCounters:
    deadline_expired: collections.Counter[str] = field(default_factory=collections.Counter)
    disconnected: collections.Counter[str] = field(default_factory=collections.Counter)


class AdmissionControl:
    """ASGI middleware that puts the requests of `gates` (by path) through their gate. `refuse`
    says why the server takes no model work now (loading, draining), or None."""

    def __init__(
        self,
        app: ASGIApp,
        gates: dict[str, Gate],
        deadline_s: float,
        refuse: Callable[[], RagserveError | None],
        counters: AdmissionCounters,
        refusal_delay_s: float = 0.0,
    ) -> None:
        self.app = app
        self.gates = gates
        self.deadline_s = deadline_s
        self.refusal_delay_s = refusal_delay_s
        self.refuse = refuse
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gate = self.gates.get(scope["path"]) if scope["type"] == "http" else None
        if gate is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if (why := self.refuse()) is not None:
            gate.rejected["not_ready"] += 1
            await self._refuse(send, why)
            return
        started = time.monotonic()
        try:
            await gate.enter(self.deadline_s)
        except OverloadedError as exc:
            await self._refuse(send, exc)
            return
        except TimeoutError:
            self.counters.deadline_expired[gate.route] += 1
            await send_error(send, _queued_too_long())
            return
        try:
            await self._serve(gate, scope, receive, send, self.deadline_s - (time.monotonic() - started))
        finally:
            gate.leave()

    async def _refuse(self, send: Send, why: RagserveError) -> None:
        """Answer a refusal after `refusal_delay_s`: a wait that costs no CPU but keeps a client
        that retries at once from turning the server's time into refusals (on 2 cores, 56 such
        clients sent 3,200 requests/s, and the model got no time left to answer the others)."""
        if self.refusal_delay_s:
            await asyncio.sleep(self.refusal_delay_s)
        await send_error(send, why)

    async def _serve(self, gate: Gate, scope: Scope, receive: Receive, send: Send, remaining_s: float) -> None:
        cancellation = Cancellation()
        scope.setdefault("state", {})[CANCELLATION] = cancellation
        timer = asyncio.get_running_loop().call_later(max(0.0, remaining_s), cancellation.cancel, DEADLINE)
        watcher: asyncio.Task[None] | None = None

        async def watched() -> Message:
            """The app's receive; once the body is in, a task watches for the client leaving."""
            nonlocal watcher
            message = await receive()
            if message["type"] == "http.disconnect":
                cancellation.cancel(DISCONNECTED)
            elif not message.get("more_body", False) and watcher is None:
                watcher = asyncio.create_task(_watch_disconnect(receive, cancellation))
            return message

        try:
            await self.app(scope, watched, send)
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.cancel()
            if cancellation.reason == DEADLINE:
                self.counters.deadline_expired[gate.route] += 1
            elif cancellation.reason == DISCONNECTED:
                self.counters.disconnected[gate.route] += 1
            cancellation.cancel(ENDED)  # a thread still working for it (a shutdown cut it short) stops


async def _watch_disconnect(receive: Receive, cancellation: Cancellation) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancellation.cancel(DISCONNECTED)
            return


def _queued_too_long() -> DeadlineExceededError:
    return DeadlineExceededError("the request waited in the queue past its deadline (request_deadline_s)")


class AdmissionCollector:
    """Prometheus view of the gates, read when /metrics is scraped (no second bookkeeping)."""

    def __init__(self, gates: Iterable[Gate], counters: AdmissionCounters) -> None:
        self.gates = list(gates)
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        in_service = GaugeMetricFamily("ragserve_in_service", "Requests in service", labels=["endpoint"])
        queued = GaugeMetricFamily("ragserve_queue_depth", "Requests waiting for admission", labels=["endpoint"])
        rejected = CounterMetricFamily(
            "ragserve_rejections", "Requests refused at admission", labels=["endpoint", "reason"]
        )
        expired = CounterMetricFamily("ragserve_deadline_expired", "Requests past their deadline", labels=["endpoint"])
        gone = CounterMetricFamily("ragserve_client_disconnects", "Requests whose client left", labels=["endpoint"])
        for gate in self.gates:
            in_service.add_metric([gate.route], gate.in_service)
            queued.add_metric([gate.route], len(gate.waiting))
            for reason in ("queue_full", "not_ready"):
                rejected.add_metric([gate.route, reason], gate.rejected[reason])
            expired.add_metric([gate.route], self.counters.deadline_expired[gate.route])
            gone.add_metric([gate.route], self.counters.disconnected[gate.route])
        yield from (in_service, queued, rejected, expired, gone)
