"""Job routes: POST /v1/documents (a batch of upserts and deletes → a job), POST
/v1/documents/files (uploaded files → their documents → a job), GET /v1/jobs/{id} (document
batches and index refreshes).

Writing needs an admin token, reading a job a read or admin token (service/http/auth.py checks
them before the body is read). A batch can be 16 MiB, an upload 64 MiB: they are parsed,
extracted and validated on a worker thread, never on the event loop, so health checks and other
requests go on meanwhile. Uploaded files are read by the corpus readers of `ragserve index build`
(indexer/sources.py: PDF, HTML, DOCX, CSV, JSONL, Parquet, text); their ids are the files' names.
"""

import json
from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator, model_validator

from indexer.formats import upload_name
from indexer.sources import CsvColumns, ReadOptions, Skipped, SourceFile, read_sources
from ragserve.errors import InvalidInputError, UnknownJobError
from ragserve.types import Document
from service.application.results import SwitchResult
from service.http.schemas import StrictModel, request_body
from service.http.state import JobsDep
from service.settings import Settings

DocId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
JobId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
CsvText = Annotated[ColumnName | None, Form(description="CSV files: the text column (default: the one named text)")]
CsvTitle = Annotated[ColumnName | None, Form(description="CSV files: the title column (default: title, if any)")]
CsvId = Annotated[ColumnName | None, Form(description="CSV files: the id column (default: id; none: <file>#<row>)")]


class DocumentsRequestBase(StrictModel):
    document: ClassVar[type[StrictModel]]  # one upsert (an uploaded file's documents are checked by it too)
    upsert: list[Any]
    delete: list[str]

    def documents(self) -> list[Document]:
        return [Document(d.id, d.title, d.text, d.metadata) for d in self.upsert]


class JobCreated(BaseModel):
    job_id: str


class SkippedOut(BaseModel):
    file: str = Field(description="The uploaded file (or, for a document over a limit, its id).")
    reason: str


class UploadCreated(JobCreated):
    documents: int = Field(description="Documents read from the files: the job's upserts.")
    skipped: list[SkippedOut] = Field(description="Files, CSV rows and documents not ingested, each with its reason.")


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
    """A batch, and its `document` (one upsert), as the settings bound them."""

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
        document: ClassVar[type[StrictModel]] = DocumentIn
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


def read_uploads(
    sources: list[SourceFile], options: ReadOptions, model: type[StrictModel], settings: Settings
) -> tuple[list[Document], list[Skipped]]:
    """The documents of uploaded files (on a worker thread) and what was skipped: files that cannot
    be read, and documents over a limit of `model` (a batch's limits). More documents than a batch
    may hold, or none at all, are refused (422)."""
    corpus = read_sources(sources, options)
    documents: list[Document] = []
    for doc in corpus:
        try:
            model.model_validate({"id": doc.id, "title": doc.title, "text": doc.text, "metadata": doc.metadata})
        except ValidationError as exc:
            problems = exc.errors(include_url=False, include_context=False, include_input=False)
            reason = "; ".join(f"{'.'.join(str(part) for part in p['loc'])}: {p['msg']}" for p in problems)
            corpus.skipped.append(Skipped(doc.id, reason))
            continue
        documents.append(doc)
        if len(documents) > settings.max_batch_documents:
            raise InvalidInputError(
                f"the files hold more than {settings.max_batch_documents} documents (setting max_batch_documents): "
                "upload fewer at a time, or send them with `ragserve ingest`"
            )
    if not documents:
        reasons = "; ".join(str(s) for s in corpus.skipped[:10]) or "no documents in them"
        raise InvalidInputError(f"nothing to ingest in the files: {reasons}")
    return documents, corpus.skipped


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

    Files = Annotated[
        list[UploadFile],
        File(max_length=settings.max_upload_files, description="One or more files (PDF, HTML, DOCX, CSV, ...)."),
    ]

    @router.post("/v1/documents/files", status_code=202, response_model=UploadCreated)
    async def upload(
        jobs: JobsDep,
        files: Files,
        csv_text_column: CsvText = None,
        csv_title_column: CsvTitle = None,
        csv_id_column: CsvId = None,
    ) -> UploadCreated:
        """Upload files (multipart/form-data, field `files`) and queue their documents as a job, as
        POST /v1/documents does; files that cannot be read come back in `skipped`, with why."""
        sources = [SourceFile(_named(f), stream=f.file) for f in files]
        options = ReadOptions(CsvColumns(id=csv_id_column, title=csv_title_column, text=csv_text_column))
        model = DocumentsRequest.document
        documents, skipped = await run_in_threadpool(read_uploads, sources, options, model, settings)
        job_id = await run_in_threadpool(jobs.submit_documents, documents, [])
        out = [SkippedOut(file=s.file, reason=s.reason) for s in skipped]
        return UploadCreated(job_id=job_id, documents=len(documents), skipped=out)

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


def _named(file: UploadFile) -> str:
    """An uploaded file's name, which its documents' ids are made of (indexer/formats.py `upload_name`)."""
    name = upload_name(file.filename)
    if not name:
        raise InvalidInputError("every uploaded file needs a file name (its document id)")
    return name
