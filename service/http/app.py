"""The application factory. Nothing is created at import time."""

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.application.services import Services
from service.http.admin import build_admin_router
from service.http.documents import build_documents_router
from service.http.errors import install_error_handlers
from service.http.limits import BodySizeLimit
from service.http.metrics import MetricsMiddleware
from service.http.routes import build_router
from service.http.state import ServiceState
from service.settings import Settings

log = logging.getLogger(__name__)

Loader = Callable[[Settings], Services]


def _default_loader(settings: Settings) -> Services:
    from service.application.loading import load_services  # torch and the models stay out of the HTTP modules

    return load_services(settings)


def create_app(settings: Settings, loader: Loader = _default_loader) -> FastAPI:
    """Build the app. Models and the index load in the background after start-up; /readyz turns
    200 when they are in, and the QA endpoints answer 503 until then."""
    state = ServiceState(settings=settings)

    def load() -> None:
        try:
            state.services = loader(settings)
            log.info("ready: serving index version %s", state.services.engine.index_version)
        except Exception as exc:
            log.exception("loading models or index failed")
            state.load_error = f"loading failed: {exc}"

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        thread = threading.Thread(target=load, name="ragserve-loader", daemon=True)
        thread.start()
        yield
        if state.services is not None:
            state.services.jobs.stop()  # let a batch in progress finish its transaction

    app = FastAPI(
        title="ragserve",
        summary="Answers grounded in your own documents, with citations.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.ragserve = state
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        per_path={"/v1/documents": settings.max_ingest_body_bytes},
    )
    app.include_router(build_router(settings))
    app.include_router(build_admin_router())
    app.include_router(build_documents_router(settings))
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory service.http.app:app_from_env`: settings from RAGSERVE_* variables."""
    return create_app(Settings())
