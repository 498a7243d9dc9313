"""What the app holds at run time, and the dependencies routes use to reach it.

The dependencies are coroutines although they never await: FastAPI runs a plain function
dependency on a worker thread, a hop per dependency per request that cost more than the search
itself under load."""

import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from ragserve.cancel import Cancellation
from ragserve.errors import DrainingError, InvalidInputError, NotReadyError, RagserveError
from service.application.adapters import AdapterManager
from service.application.engine import QAEngine
from service.application.indexes import IndexManager
from service.application.jobs import Jobs
from service.application.services import Services
from service.http.admission import CANCELLATION, Gate
from service.http.metrics import Metrics
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    services: Services | None = None  # set once, by the loader, when models and index are ready
    load_error: str | None = None
    draining: bool = False  # set once, on SIGTERM: no new model work, /readyz 503
    drain_ends: float | None = None  # time.monotonic() by which the process exits
    gates: "dict[str, Gate]" = field(default_factory=dict)  # admission, by path

    def begin_drain(self, grace_s: float) -> None:
        if not self.draining:
            self.draining, self.drain_ends = True, time.monotonic() + grace_s
            if self.services is not None:
                self.services.replica.drain()  # the replica list says so too

    @property
    def in_flight(self) -> int:
        """Model-backed requests in service or queued."""
        return sum(g.in_service + len(g.waiting) for g in self.gates.values())

    def refusal(self) -> RagserveError | None:
        """Why this server takes no model work now (draining, loading, failed to load), or None."""
        if self.draining:
            return DrainingError("the server is shutting down; retry on another replica")
        return self.not_ready() if self.services is None else None

    def not_ready(self) -> NotReadyError:
        return NotReadyError(self.load_error or "models and index are still loading; retry shortly")


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.ragserve
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_services(state: StateDep) -> Services:
    if state.services is None:
        raise state.not_ready()
    return state.services


async def get_cancellation(request: Request) -> Cancellation | None:
    """The request's cancellation, set by admission control (service/http/admission.py)."""
    cancellation: Cancellation | None = request.scope.get("state", {}).get(CANCELLATION)
    return cancellation


async def get_engine(services: Annotated[Services, Depends(get_services)]) -> QAEngine:
    return services.engine


async def get_indexes(services: Annotated[Services, Depends(get_services)]) -> IndexManager:
    return services.indexes


async def get_jobs(services: Annotated[Services, Depends(get_services)]) -> Jobs:
    return services.jobs


async def get_adapters(engine: Annotated[QAEngine, Depends(get_engine)]) -> AdapterManager:
    if engine.adapters is None:
        raise InvalidInputError("this server runs no adapters")
    return engine.adapters


EngineDep = Annotated[QAEngine, Depends(get_engine)]
CancellationDep = Annotated[Cancellation | None, Depends(get_cancellation)]
AdaptersDep = Annotated[AdapterManager, Depends(get_adapters)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]
ServicesDep = Annotated[Services, Depends(get_services)]
IndexesDep = Annotated[IndexManager, Depends(get_indexes)]
