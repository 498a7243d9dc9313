"""What the app holds at run time, and the dependencies routes use to reach it.

The dependencies are coroutines although they never await: FastAPI runs a plain function
dependency on a worker thread, a hop per dependency per request that cost more than the search
itself under load."""

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from ragserve.errors import InvalidInputError, NotReadyError
from service.application.adapters import AdapterManager
from service.application.engine import QAEngine
from service.application.indexes import IndexManager
from service.application.jobs import Jobs
from service.application.services import Services
from service.http.metrics import Metrics
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    services: Services | None = None  # set once, by the loader, when models and index are ready
    load_error: str | None = None


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.ragserve
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_services(state: StateDep) -> Services:
    if state.services is None:
        raise NotReadyError(state.load_error or "models and index are still loading; retry shortly")
    return state.services


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
AdaptersDep = Annotated[AdapterManager, Depends(get_adapters)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]
IndexesDep = Annotated[IndexManager, Depends(get_indexes)]
