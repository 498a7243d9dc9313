"""The application factory. Nothing is created at import time."""

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from service.application.services import Services
from service.http.admin import build_admin_router
from service.http.admission import AdmissionCollector, AdmissionControl, AdmissionCounters, Gate
from service.http.auth import Authentication
from service.http.docs_assets import install_api_docs
from service.http.documents import build_documents_router
from service.http.edits import build_edits_router
from service.http.errors import install_error_handlers
from service.http.limits import BodySizeLimit
from service.http.metrics import MetricsMiddleware
from service.http.openai import build_openai_router
from service.http.pages import install_pages
from service.http.routes import build_router
from service.http.state import ServiceState
from service.settings import Settings

log = logging.getLogger(__name__)

Loader = Callable[[Settings], Services]


def _default_loader(settings: Settings) -> Services:
    from service.application.loading import load_services, prepare  # torch stays out of the HTTP modules

    prepare(settings)  # first start: convert the generator, build the demo index (minutes)
    return load_services(settings)


def create_app(settings: Settings, loader: Loader = _default_loader) -> FastAPI:
    """Build the app. Models and the index load in the background after start-up (the port is
    open meanwhile); /readyz turns 200 when they are in, and the model routes answer 503 until
    then."""
    state = ServiceState(settings=settings)
    gates = {
        "/v1/ask": Gate("/v1/ask", settings.ask_max_in_service, settings.ask_max_queue),
        "/v1/retrieve": Gate("/v1/retrieve", settings.retrieve_max_in_service, settings.retrieve_max_queue),
    }
    state.gates = gates
    # chat completions are answers too: they wait in /v1/ask's gate and share its decoding batches
    admitted = {**gates, "/v1/chat/completions": gates["/v1/ask"]}
    counters = AdmissionCounters()
    state.metrics.registry.register(AdmissionCollector(gates.values(), counters))

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
        if state.services is not None:  # let a batch in progress finish its transaction, within the grace
            left = settings.shutdown_grace_s if state.drain_ends is None else state.drain_ends - time.monotonic()
            state.services.serving.stop(max(0.1, left))

    app = FastAPI(
        title="ragserve",
        summary="Answers grounded in your own documents, with citations.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc with local assets instead of a CDN's: install_api_docs below
        redoc_url=None,
    )
    app.state.ragserve = state
    install_error_handlers(app)
    app.include_router(build_router(settings))
    app.include_router(build_openai_router(settings))
    app.include_router(build_admin_router())
    app.include_router(build_documents_router(settings))
    app.include_router(build_edits_router(settings))
    install_pages(app)
    install_api_docs(app)
    # Outermost last: metrics see everything, authentication runs before any body is read, the
    # size limit before admission, admission just before the routes.
    app.add_middleware(
        AdmissionControl,
        gates=admitted,
        deadline_s=settings.request_deadline_s,
        refuse=state.refusal,
        counters=counters,
        refusal_delay_s=settings.refusal_delay_ms / 1000,
    )
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        per_path={
            "/v1/documents": (settings.max_ingest_body_bytes, "max_ingest_body_bytes"),
            "/v1/documents/files": (settings.max_upload_bytes, "max_upload_bytes"),
        },
    )
    app.add_middleware(Authentication, settings=settings)
    fixed = frozenset(r.path for r in app.routes if isinstance(r, APIRoute) and "{" not in r.path)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, known_paths=fixed)
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory service.http.app:app_from_env`: settings from RAGSERVE_* variables."""
    return create_app(Settings())
