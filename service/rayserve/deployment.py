"""The Serve deployment: each replica is one ragserve app (service/http/app.py) in a Ray actor, on
the shared store and registry of the settings (docs: deploy/ray/README.md).

- **Start.** `__serve_build_asgi_app__` builds the app and Serve runs its lifespan, which loads
  the models and the index in the background; the lifespan wrapped here then waits until they are
  in, so Serve counts the replica as started, and routes to it, only once it is ready (what
  /readyz calls `ready`). A replica whose loading fails, or takes more than `READY_TIMEOUT_S`,
  fails to start with the loader's error, and Serve starts another. Replicas load one at a time
  per registry (`_one_at_a_time`): on one machine they would otherwise load models and build the
  demo index at once, each slowing the others.
- **Health.** `check_health` runs every `health_check_period_s` and raises unless the replica is
  ready by /readyz's rule (models and index in, job workers alive); after 3 failures in a row
  Serve replaces the replica. Draining is not unhealthy: it only happens while the replica stops.
- **Shutdown.** Serve stops routing to the replica, waits for its requests in flight (looking
  every `graceful_shutdown_wait_loop_s`), then ends the lifespan: here the drain begins (a late
  model request gets 503 `draining`), then the app's own shutdown runs: the replica is listed as
  draining, the job workers stop at a batch boundary (within `STOP_S`), the jobs it holds are
  handed back and it leaves the replica list. Serve kills the actor
  `graceful_shutdown_timeout_s` (`shutdown_grace_s` + `STOP_S` + 5 s) after the stop began.
- **In place.** `reconfigure` applies the `user_config` (service/rayserve/live.py) without a
  restart: Serve calls it on running replicas when only the user_config changed.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError
from ray import serve
from ray.serve import Application, Deployment

from service.application.services import Services
from service.http.app import create_app
from service.http.state import ServiceState
from service.rayserve.live import apply_live
from service.settings import Settings

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "Ragserve"
READY_TIMEOUT_S = 900.0  # a first start converts the generator and may build the demo index (minutes)
HEALTH_PERIOD_S = 5.0
HEALTH_TIMEOUT_S = 10.0
WAIT_LOOP_S = 0.5  # how often Serve looks whether the requests in flight of a stopping replica ended
STOP_S = 10.0  # the job workers' batch boundary, handing jobs back, leaving the replica list
SPINCOUNT = "20000"  # GOMP_SPINCOUNT, as `ragserve serve` sets it (service/cli/commands.py)
START_LOCK = ".ragserve-start.lock"


def readiness_problem(state: ServiceState) -> str | None:
    """Why the replica is not healthy by /readyz's rule (service/http/routes.py), or None."""
    if state.services is None:
        return state.load_error or "models and index are still loading"
    dead = [name for name, worker in state.services.jobs.health().items() if not worker["alive"]]
    return f"job workers dead: {', '.join(dead)}" if dead else None


async def until_loaded(state: ServiceState, timeout_s: float, poll_s: float = 0.1) -> None:
    """Wait until the background load ended; raise unless it succeeded within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while state.services is None and state.load_error is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"models and index not loaded after {timeout_s:.0f} s")
        await asyncio.sleep(poll_s)
    if state.services is None:
        raise RuntimeError(state.load_error)


def wait_in_lifespan(app: FastAPI, state: ServiceState, ready_timeout_s: float, stop_s: float) -> None:
    """Wrap the app's lifespan: its start-up ends once loaded, its shutdown begins with the drain."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(target: Any) -> AsyncIterator[Any]:
        async with inner(target) as value:
            await until_loaded(state, ready_timeout_s)
            try:
                yield value
            finally:
                state.begin_drain(stop_s)  # the app's shutdown gives the job workers what is left of it

    app.router.lifespan_context = lifespan


@contextmanager
def _one_at_a_time(settings: Settings) -> Iterator[None]:
    """An exclusive lock on the registry while a replica loads (released if the actor dies)."""
    root = settings.registry_root
    root.mkdir(parents=True, exist_ok=True)
    with (root / START_LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_one_at_a_time(settings: Settings) -> Services:
    from service.application.loading import load_services, prepare

    prepare(settings)  # converted models and the demo index are published safely by every process
    with _one_at_a_time(settings):
        return load_services(settings)


@serve.ingress()  # no app yet: Serve calls `__serve_build_asgi_app__` in the replica, after __init__
class Replica:
    """One replica. `overrides`: settings besides the RAGSERVE_* variables of its environment."""

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        os.environ.setdefault("GOMP_SPINCOUNT", SPINCOUNT)  # read once, when torch loads (in the loader)
        # ragserve's loggers write to the actor's stderr (Ray's worker log, and the driver's
        # output); their level is the user_config's log_level (service/rayserve/live.py).
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.settings = Settings(**dict(overrides or {}))
        self.state: ServiceState | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        from ragserve.compute import use_compute_thread

        use_compute_thread()  # every model runs on one thread (ragserve/compute.py), as with `ragserve serve`
        app = create_app(self.settings, loader=load_one_at_a_time)
        self.state = app.state.ragserve
        wait_in_lifespan(app, app.state.ragserve, READY_TIMEOUT_S, STOP_S)
        return app

    async def check_health(self) -> None:
        problem = "the app is not built yet" if self.state is None else readiness_problem(self.state)
        if problem is not None:
            raise RuntimeError(problem)

    async def search(self, queries: list[str], top_k: int, mode: str | None) -> dict[str, Any]:
        """The shard router's call (service/rayserve/shards.py), through a DeploymentHandle: this
        replica's shards searched by its own retriever (delta included), awaited on its batcher so
        the event loop stays free. Plain data goes back (retriever/router.py's wire format), with
        the shards served: no pickled ragserve objects cross the actor boundary. No queries: a
        readiness probe."""
        from ragserve.types import RetrievalMode
        from retriever.router import result_to_wire

        state = self.state
        problem = "the app is not built yet" if state is None else readiness_problem(state)
        if state is not None and state.draining:
            problem = "draining: retry on another replica"
        if problem is not None or state is None or state.services is None:
            raise RuntimeError(problem)
        retriever = state.services.engine.retriever
        wanted = RetrievalMode(mode) if mode else None
        found = await asyncio.gather(*(retriever.search_async(q, top_k, wanted) for q in queries))
        return {
            "index_version": retriever.index_version,
            "shards": state.services.indexes.served_shards,
            "results": [result_to_wire(r) for r in found],
        }

    async def reconfigure(self, config: object) -> None:
        """Called by Serve after start and whenever only the user_config changed (no restart)."""
        if self.state is None:
            raise RuntimeError("reconfigure before the app was built")
        values = apply_live(self.state, config)
        log.info("live settings: %s", values)


Ragserve: Deployment = serve.deployment(
    name=DEPLOYMENT_NAME,
    ray_actor_options={"num_cpus": 1},
    health_check_period_s=HEALTH_PERIOD_S,
    health_check_timeout_s=HEALTH_TIMEOUT_S,
    graceful_shutdown_wait_loop_s=WAIT_LOOP_S,
)(Replica)


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Options that follow from the settings: Serve must not queue what admission control admits
    (it answers 429 at once instead), and the stop must outlast the drain and the jobs' stop."""
    s = settings
    admitted = s.ask_max_in_service + s.ask_max_queue + s.retrieve_max_in_service + s.retrieve_max_queue
    return {
        "max_ongoing_requests": admitted + 16,  # and the operations and admin routes
        "graceful_shutdown_timeout_s": s.shutdown_grace_s + STOP_S + 5,
    }


def app_builder(args: Mapping[str, Any]) -> Application:
    """The application `serve run` / `serve deploy` build (import path
    `service.rayserve.deployment:app_builder`). `args`: {"settings": {...}}, settings that are not
    in the RAGSERVE_* variables of the application's runtime_env. Checked here, before a replica
    starts, in the environment the replicas get."""
    overrides = dict(args.get("settings") or {})
    unknown = sorted(set(args) - {"settings"})
    if unknown:
        raise ValueError(f"application args: unknown {unknown}; only 'settings' (a mapping of settings)")
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ValueError(
            f"invalid settings for the replicas (args.settings and the RAGSERVE_* variables of the runtime_env; "
            f"a ${{VAR}} the node does not set becomes an empty string):\n{exc}"
        ) from None
    app: Application = Ragserve.options(**deployment_options(settings)).bind(overrides)
    return app
