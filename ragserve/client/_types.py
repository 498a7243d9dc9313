"""What the client returns: frozen dataclasses with the fields of the server's JSON bodies
(service/http/schemas.py, admin.py, documents.py). Fields a newer server adds are ignored, so an
older client keeps working against it."""

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


def _known(cls: type[T], data: Mapping[str, Any], **nested: Any) -> T:
    """An instance of the dataclass `cls` from the keys of `data` it has, `nested` replacing some."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{**{k: v for k, v in data.items() if k in names}, **nested})


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk of a document; `metadata` is its document's, plus where it came from
    (`page` of a PDF, for instance)."""

    chunk_id: str
    doc_id: str
    title: str
    score: float
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def page(self) -> Any:
        """The page the passage starts on, for documents that have pages; else None."""
        return self.metadata.get("page")


@dataclass(frozen=True)
class Citation(Passage):
    """A passage the answer was read from; `weight`: its posterior share (rag-* readers)."""

    weight: float | None = None


@dataclass(frozen=True)
class Evidence:
    """The span an extractive answer was copied from: offsets into the citation's `text`
    (`start_char`, `end_char`) and into the whole document."""

    chunk_id: str
    doc_id: str
    start_char: int
    end_char: int
    document_start_char: int
    document_end_char: int
    text: str


@dataclass(frozen=True)
class Answer:
    answer: str
    citations: tuple[Citation, ...]
    reader: str
    index_version: str
    probability: float | None = None
    evidence: Evidence | None = None
    adapter: str | None = None
    edit_id: str | None = None  # the edit the answer came from (cited first); None: the documents
    abstained: bool = False  # the passages do not support an answer: `answer` is the refusal text
    support: float | None = None  # p(the passages answer the question), when abstention was on
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> "Answer":
        evidence = data.get("evidence")
        return _known(
            cls,
            data,
            citations=tuple(_known(Citation, c) for c in data["citations"]),
            evidence=_known(Evidence, evidence) if evidence else None,
        )


@dataclass(frozen=True)
class Edit:
    """A correction in the edit memory (POST /v1/edits); deleted ones have `deleted_at`."""

    edit_id: str
    question: str
    answer: str
    created_by: str
    created_at: float
    statement: str | None = None
    note: str | None = None
    deleted_by: str | None = None
    deleted_at: float | None = None

    @property
    def live(self) -> bool:
        return self.deleted_at is None


@dataclass(frozen=True)
class Retrieval:
    passages: tuple[Passage, ...]
    index_version: str
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> "Retrieval":
        return _known(cls, data, passages=tuple(_known(Passage, p) for p in data["passages"]))


@dataclass(frozen=True)
class Switch:
    """What serves after a switch, refresh or rollback, and what served before."""

    index: str
    serving: str
    previous: str
    seconds: float
    pruned: tuple[str, ...] = ()
    built: bool = False

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> "Switch":
        return _known(cls, data, pruned=tuple(data.get("pruned", ())))


@dataclass(frozen=True)
class Job:
    """An ingestion batch or an index refresh; `errors` per document id ('*': the whole job)."""

    job_id: str
    kind: str
    state: str
    upserts: int = 0
    deletes: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    index: Switch | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> "Job":
        index = data.get("index")
        return _known(cls, data, index=Switch.of(index) if index else None)


@dataclass(frozen=True)
class IndexVersion:
    version: str
    created_at: str
    documents: int
    chunks: int
    bytes: int
    serving: bool
    shards: int = 1


@dataclass(frozen=True)
class Replica:
    """A server process of the index, the version it serves and how far its delta lags."""

    id: str
    host: str
    pid: int
    version: str
    state: str
    delta_seq: int
    lag_changes: int
    heartbeat_age_s: float
    this: bool


@dataclass(frozen=True)
class Index:
    """An index: the version that serves, every version, and the live replicas."""

    name: str
    serving: str | None
    store: str
    head_seq: int
    replicas: tuple[Replica, ...]
    served_shards: tuple[int, ...]
    versions: tuple[IndexVersion, ...]
    delta_chunks: int = 0  # chunks in the answering replica's delta (changes since the serving version)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> "Index":
        return _known(
            cls,
            data,
            replicas=tuple(_known(Replica, r) for r in data.get("replicas", ())),
            served_shards=tuple(data.get("served_shards", ())),
            versions=tuple(_known(IndexVersion, v) for v in data.get("versions", ())),
        )


@dataclass(frozen=True)
class Adapter:
    name: str
    method: str
    parameters: int
    source: str
    path: str
    loaded_at: str
    default: bool


@dataclass(frozen=True)
class Adapters:
    """The loaded adapters, the default one (None: the base model), and those that did not load."""

    default: str | None
    adapters: tuple[Adapter, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> "Adapters":
        return _known(cls, data, adapters=tuple(_known(Adapter, a) for a in data["adapters"]))


@dataclass(frozen=True)
class AdapterLoaded:
    adapter: Adapter
    replaced: bool

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> "AdapterLoaded":
        return cls(adapter=_known(Adapter, data["adapter"]), replaced=bool(data["replaced"]))


@dataclass(frozen=True)
class DefaultAdapter:
    default: str | None
    previous: str | None


@dataclass(frozen=True)
class Readiness:
    """GET /readyz: `ready` once models and index are in; `status` says why not otherwise."""

    status: str
    ready: bool
    index_version: str | None = None
    readers: tuple[str, ...] = ()
    default_reader: str | None = None
    adapters: tuple[str, ...] = ()
    default_adapter: str | None = None
    error: str | None = None

    @classmethod
    def of(cls, data: Mapping[str, Any], ready: bool) -> "Readiness":
        lists = {k: tuple(data.get(k) or ()) for k in ("readers", "adapters")}
        return _known(cls, data, ready=ready, **lists)


# --- the events of a streamed answer (POST /v1/ask with "stream": true) ----------------------


@dataclass(frozen=True)
class CitationsEvent:
    """First: the passages the answer will be read from."""

    citations: tuple[Citation, ...]
    index_version: str


@dataclass(frozen=True)
class TokenEvent:
    """A piece of the answer's text; the pieces concatenate to the answer."""

    text: str


@dataclass(frozen=True)
class DoneEvent:
    """Last: the complete answer, exactly what `ask` returns."""

    answer: Answer


StreamEvent = CitationsEvent | TokenEvent | DoneEvent


# --- ingestion -------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestProgress:
    """Where an `ingest` stands; given to its `progress` callback after each batch sent and each
    job finished."""

    documents_sent: int
    documents_done: int
    documents_failed: int
    jobs_sent: int
    jobs_done: int
    counts: Mapping[str, int]


@dataclass(frozen=True)
class IngestResult:
    """Every job of an `ingest`; with `wait`, how they ended (`counts` summed over the jobs,
    `errors` per document id), else only their ids."""

    job_ids: tuple[str, ...]
    jobs: tuple[Job, ...]
    counts: Mapping[str, int]
    errors: Mapping[str, str]
    failed_documents: int
