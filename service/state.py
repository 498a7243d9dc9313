"""What the app holds at run time, and the dependencies routes use to reach it."""

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from retriever.errors import NotReadyError
from service.engine import QAEngine
from service.metrics import Metrics
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    engine: QAEngine | None = None  # set once, by the loader, when models and index are ready
    load_error: str | None = None


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.ragserve
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_engine(state: StateDep) -> QAEngine:
    if state.engine is None:
        raise NotReadyError(state.load_error or "models and index are still loading; retry shortly")
    return state.engine


EngineDep = Annotated[QAEngine, Depends(get_engine)]
