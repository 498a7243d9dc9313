"""HTTP routes: thin, they validate, call the engine and shape the answer.

The operations routes (/healthz, /readyz, /metrics) are coroutines that touch no model, so they
answer from the event loop at once, whatever the model routes are doing; admission control
(service/http/admission.py) keeps those bounded."""

from typing import Any, cast

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.application.engine import AskListener, AskResult
from service.http.schemas import (
    AskRequestBase,
    AskResponse,
    PassageOut,
    RetrieveRequestBase,
    RetrieveResponse,
    request_models,
)
from service.http.state import CancellationDep, EngineDep, StateDep
from service.http.streams import SSE_HEADERS, SSE_MEDIA_TYPE, ask_events, follow
from service.settings import Settings

STREAMED = {200: {"content": {SSE_MEDIA_TYPE: {"schema": {"type": "string"}}}, "description": "The answer."}}


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter()
    models = request_models(settings)
    AskRequest, RetrieveRequest = models.ask, models.retrieve

    @router.post("/v1/ask", response_model=AskResponse, tags=["qa"], responses=STREAMED)  # type: ignore[arg-type]
    async def ask(body: AskRequest, engine: EngineDep, state: StateDep, cancellation: CancellationDep) -> Any:  # type: ignore[valid-type]
        """The answer, with its citations; with `stream`, as server-sent events while it is decoded."""
        req = cast(AskRequestBase, body)  # the settings-bound subclass built above

        def work(listener: AskListener | None = None) -> AskResult:
            return engine.ask(
                req.question,
                req.top_k,
                req.reader,
                req.retrieval,
                req.extractive,
                req.adapter,
                cancellation,
                listener,
                abstain=req.abstain,
                use_edits=req.edits,
            )

        def observe(result: AskResult) -> None:
            state.metrics.observe_stages("/v1/ask", result.timings_ms)

        if req.stream:
            engine.plan(req.reader, req.extractive, req.adapter)  # a bad request is a plain 4xx, not a stream
            events = follow(work, settings.stream_keepalive_s, cancellation)
            return StreamingResponse(ask_events(events, observe), media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
        result = await run_in_threadpool(work)
        observe(result)
        return AskResponse.of(result)

    @router.post("/v1/retrieve", response_model=RetrieveResponse, tags=["qa"])
    async def retrieve(
        body: RetrieveRequest,  # type: ignore[valid-type]
        engine: EngineDep,
        state: StateDep,
        cancellation: CancellationDep,
    ) -> RetrieveResponse:
        req = cast(RetrieveRequestBase, body)
        result = await engine.retrieve_async(req.query, req.top_k, req.retrieval, cancellation)
        state.metrics.observe_stages("/v1/retrieve", result.timings_ms)
        return RetrieveResponse(
            passages=[PassageOut.of(p) for p in result.passages],
            index_version=result.index_version,
            timings_ms=result.timings_ms,
        )

    @router.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers (whatever it is busy with)."""
        return {"status": "ok"}

    @router.get("/readyz", tags=["ops"])
    async def readyz(state: StateDep) -> JSONResponse:
        """Readiness: 200 when models and index are in, the job workers alive, and no drain began."""
        if state.services is None:
            status = "failed" if state.load_error else "loading"
            body: dict[str, Any] = {"status": status, "error": state.load_error}
            return JSONResponse(body, status_code=503)
        engine, workers, replica = state.services.engine, state.services.jobs.health(), state.services.replica
        alive = all(w["alive"] for w in workers.values())
        status = "draining" if state.draining else "ready" if alive else "worker_dead"
        body = {
            "status": status,
            "workers": workers,
            "replica": {"id": replica.id, "store": state.services.serving.store.kind, "last_error": replica.last_error},
            "index_version": engine.index_version,
            "readers": sorted(engine.readers),
            "default_reader": engine.default_reader,
            "adapters": engine.adapters.names() if engine.adapters else [],
            "default_adapter": engine.adapters.default if engine.adapters else None,
        }
        return JSONResponse(body, status_code=200 if status == "ready" else 503)

    @router.get("/metrics", tags=["ops"])
    async def metrics(state: StateDep) -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return router
