"""Job routes: POST /v1/documents (a batch of upserts and deletes → a job), GET /v1/jobs/{id}
(document batches and index refreshes).

Writing needs an admin token, reading a job a read or admin token (service/http/auth.py checks
them before the body is read). A batch can be 16 MiB: it is parsed and validated on a worker
thread, never on the event loop, so health checks and other requests go on meanwhile.
"""

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator, model_validator

from ragserve.errors import InvalidInputError, UnknownJobError
from ragserve.types import Document
from service.application.results import SwitchResult
from service.http.schemas import StrictModel, request_body
from service.http.state import JobsDep
from service.settings import Settings

DocId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
JobId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class DocumentsRequestBase(StrictModel):
    upsert: list[Any]
    delete: list[str]

    def documents(self) -> list[Document]:
        return [Document(d.id, d.title, d.text, d.metadata) for d in self.upsert]


class JobCreated(BaseModel):
    job_id: str


class JobOut(BaseModel):
    job_id: str
    kind: Literal["documents", "refresh"]
    state: Literal["queued", "running", "done", "failed"]
    upserts: int
    deletes: int
    counts: dict[str, int]
    errors: dict[str, str] = Field(description="Per document id; '*' for a job that failed as a whole.")
    index: SwitchResult | None = Field(None, description="What a finished refresh job serves now.")


def documents_request(settings: Settings) -> type[DocumentsRequestBase]:
    class DocumentIn(StrictModel):
        id: DocId
        title: Annotated[str, StringConstraints(max_length=1_000)] = ""
        text: Annotated[str, StringConstraints(max_length=settings.max_document_chars)]
        metadata: dict[str, Any] = Field(default_factory=dict)

        @field_validator("metadata")
        @classmethod
        def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
            try:
                size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode())
            except ValueError:
                raise ValueError("metadata must be plain JSON: no NaN or infinite numbers") from None
            if size > settings.max_metadata_bytes:
                raise ValueError(f"metadata is {size} bytes as JSON; the limit is {settings.max_metadata_bytes}")
            return value

    class DocumentsRequest(DocumentsRequestBase):
        upsert: Annotated[list[DocumentIn], Field(default_factory=list, max_length=settings.max_batch_documents)]
        delete: Annotated[list[DocId], Field(default_factory=list, max_length=settings.max_batch_documents)]

        @model_validator(mode="after")
        def _sane(self) -> "DocumentsRequest":
            ids = [d.id for d in self.upsert] + list(self.delete)
            if not ids:
                raise ValueError("the batch is empty: give 'upsert' and/or 'delete'")
            if len(ids) > settings.max_batch_documents:
                raise ValueError(f"the batch has {len(ids)} operations; the limit is {settings.max_batch_documents}")
            if len(set(ids)) != len(ids):
                raise ValueError("a document id appears more than once in the batch")
            return self

    return DocumentsRequest


def parse_batch(model: type[DocumentsRequestBase], raw: bytes) -> DocumentsRequestBase:
    """The validated batch in a request body (JSON), or the 422 FastAPI gives a bad body."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError([{**p, "loc": ("body", *p["loc"])} for p in problems]) from None


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media in ("", "application/json") or media.endswith("+json")


def build_documents_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["ingestion"])
    DocumentsRequest = documents_request(settings)

    @router.post(
        "/v1/documents", status_code=202, response_model=JobCreated, openapi_extra=request_body(DocumentsRequest)
    )
    async def ingest(request: Request, jobs: JobsDep) -> JobCreated:
        """Queue a batch of upserts and deletes; follow it with GET /v1/jobs/{job_id}."""
        if not _is_json(request.headers.get("content-type", "")):
            raise InvalidInputError("send the batch as JSON (Content-Type: application/json)")
        raw = await request.body()  # at most max_ingest_body_bytes (service/http/limits.py)
        batch = await run_in_threadpool(parse_batch, DocumentsRequest, raw)
        job_id = await run_in_threadpool(jobs.submit_documents, batch.documents(), list(batch.delete))
        return JobCreated(job_id=job_id)

    @router.get("/v1/jobs/{job_id}", response_model=JobOut)
    def job(job_id: JobId, jobs: JobsDep) -> JobOut:
        found = jobs.job(job_id)
        if found is None:
            raise UnknownJobError(f"no job {job_id!r}")
        return JobOut(
            job_id=found.id,
            kind=found.kind,
            state=found.state,
            upserts=found.upserts,
            deletes=found.deletes,
            counts=found.result.get("counts", {}),
            errors=found.result.get("errors", {}),
            index=found.result.get("index"),
        )

    return router
