"""HTTP routes: thin, they validate, call the engine and shape the answer."""

from typing import Any, cast

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from service.http.auth import QueryAuth
from service.http.schemas import (
    AskRequestBase,
    AskResponse,
    CitationOut,
    EvidenceOut,
    PassageOut,
    RetrieveRequestBase,
    RetrieveResponse,
    request_models,
)
from service.http.state import EngineDep, StateDep
from service.settings import Settings


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter()
    models = request_models(settings)
    AskRequest, RetrieveRequest = models.ask, models.retrieve

    @router.post("/v1/ask", response_model=AskResponse, tags=["qa"], dependencies=[QueryAuth])
    def ask(body: AskRequest, engine: EngineDep, state: StateDep) -> AskResponse:  # type: ignore[valid-type]
        req = cast(AskRequestBase, body)  # the settings-bound subclass built above
        result = engine.ask(req.question, req.top_k, req.reader, req.retrieval, req.extractive, req.adapter)
        state.metrics.observe_stages("/v1/ask", result.timings_ms)
        return AskResponse(
            answer=result.answer,
            probability=result.probability,
            citations=[CitationOut.cite(p, w) for p, w in zip(result.passages, result.weights, strict=True)],
            evidence=EvidenceOut.of(result.passages, result.evidence),
            reader=result.reader,
            adapter=result.adapter,
            index_version=result.index_version,
            timings_ms=result.timings_ms,
        )

    @router.post("/v1/retrieve", response_model=RetrieveResponse, tags=["qa"], dependencies=[QueryAuth])
    async def retrieve(body: RetrieveRequest, engine: EngineDep, state: StateDep) -> RetrieveResponse:  # type: ignore[valid-type]
        req = cast(RetrieveRequestBase, body)
        result = await engine.retrieve_async(req.query, req.top_k, req.retrieval)
        state.metrics.observe_stages("/v1/retrieve", result.timings_ms)
        return RetrieveResponse(
            passages=[PassageOut.of(p) for p in result.passages],
            index_version=result.index_version,
            timings_ms=result.timings_ms,
        )

    @router.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", tags=["ops"])
    def readyz(state: StateDep) -> JSONResponse:
        if state.services is None:
            status = "failed" if state.load_error else "loading"
            body: dict[str, Any] = {"status": status, "error": state.load_error}
            return JSONResponse(body, status_code=503)
        engine = state.services.engine
        body = {
            "status": "ready",
            "index_version": engine.index_version,
            "readers": sorted(engine.readers),
            "default_reader": engine.default_reader,
            "adapters": engine.adapters.names() if engine.adapters else [],
            "default_adapter": engine.adapters.default if engine.adapters else None,
        }
        return JSONResponse(body)

    @router.get("/metrics", tags=["ops"])
    def metrics(state: StateDep) -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return router
