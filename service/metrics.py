"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series are noise
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ragserve_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "ragserve_request_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "ragserve_stage_seconds",
            "Latency of one pipeline stage (embed, search, delta, generate)",
            ["endpoint", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_stages(self, endpoint: str, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            if stage != "total":
                self.stage.labels(endpoint, stage).observe(ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def middleware(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            endpoint = _route_template(request)
            self.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.requests.labels(endpoint, str(status)).inc()


def _route_template(request: Request) -> str:
    """The matched route's path template, so unknown paths don't each create a label."""
    route = request.scope.get("route")
    return str(getattr(route, "path", "unmatched"))
