"""Request and response bodies. Request limits come from Settings, so the OpenAPI document at
/docs shows the limits this server really enforces."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from ragserve.types import Passage, RetrievalMode
from reader.base import Evidence
from service.application.engine import AskResult
from service.settings import Settings

# JSON carries the mode as a string; strict mode would demand an enum instance.
Retrieval = Annotated[RetrievalMode, Field(strict=False)]
ReaderName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
AdapterName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a route that reads and validates its body itself (off the
    event loop), with the model's JSON schema inlined (its `$defs` resolved)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rpartition("/")[2]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": resolve(schema)}}}}


class PassageOut(BaseModel):
    chunk_id: str
    doc_id: str
    title: str
    score: float
    text: str
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="The chunk's metadata: its document's, plus where it came from (e.g. `page` and `pages` of a PDF).",
    )

    @classmethod
    def of(cls, p: Passage) -> "PassageOut":
        return cls(chunk_id=p.chunk_id, doc_id=p.doc_id, title=p.title, score=p.score, text=p.text, metadata=p.metadata)


class CitationOut(PassageOut):
    weight: float | None = Field(None, description="rag-* readers: the passage's posterior share of the answer.")

    @classmethod
    def cite(cls, p: Passage, weight: float | None) -> "CitationOut":
        return cls(**PassageOut.of(p).model_dump(), weight=weight)


class EvidenceOut(BaseModel):
    """The span of a cited passage that an extractive answer was copied from."""

    chunk_id: str
    doc_id: str
    start_char: int = Field(description="Offset of the answer in the passage's text (the citation's `text`).")
    end_char: int
    document_start_char: int = Field(description="Offset of the answer in the whole source document.")
    document_end_char: int
    text: str

    @classmethod
    def of(cls, passages: Sequence[Passage], evidence: Evidence | None) -> "EvidenceOut | None":
        if evidence is None:
            return None
        passage = passages[evidence.passage]
        return cls(
            chunk_id=passage.chunk_id,
            doc_id=passage.doc_id,
            start_char=evidence.start_char,
            end_char=evidence.end_char,
            document_start_char=passage.start_char + evidence.start_char,
            document_end_char=passage.start_char + evidence.end_char,
            text=evidence.text,
        )


class AskResponse(BaseModel):
    answer: str
    probability: float | None = Field(None, description="p(answer | question), for readers that define it.")
    citations: list[CitationOut]
    evidence: EvidenceOut | None = Field(None, description="Extractive answers: where the answer was copied from.")
    reader: str
    adapter: str | None = Field(None, description="The adapter the answer ran with; null: the base model.")
    edit_id: str | None = Field(
        None, description="The edit the answer came from (cited first, `doc_id` 'edit:<id>'); null: the documents."
    )
    abstained: bool = Field(
        False, description="The passages do not support an answer: `answer` is the refusal text, the closest cited."
    )
    support: float | None = Field(
        None, description="Calibrated p(the passages answer the question), when abstention was on."
    )
    index_version: str
    timings_ms: dict[str, float]

    @classmethod
    def of(cls, result: AskResult) -> "AskResponse":
        return cls(
            answer=result.answer,
            probability=result.probability,
            citations=[CitationOut.cite(p, w) for p, w in zip(result.passages, result.weights, strict=True)],
            evidence=EvidenceOut.of(result.passages, result.evidence),
            reader=result.reader,
            adapter=result.adapter,
            edit_id=result.edit_id,
            abstained=result.abstained,
            support=result.support,
            index_version=result.index_version,
            timings_ms=result.timings_ms,
        )


class RetrieveResponse(BaseModel):
    passages: list[PassageOut]
    index_version: str
    timings_ms: dict[str, float]


class AskRequestBase(StrictModel):
    question: str
    top_k: int
    reader: ReaderName | None = None
    retrieval: Retrieval | None = None
    extractive: bool | None = None
    adapter: AdapterName | None = None
    stream: bool = False
    abstain: bool | None = None
    edits: bool = True


class RetrieveRequestBase(StrictModel):
    query: str
    top_k: int
    retrieval: Retrieval | None = None


@dataclass(frozen=True)
class RequestModels:
    ask: type[AskRequestBase]
    retrieve: type[RetrieveRequestBase]


def not_blank(text: str) -> str:
    """Refuse text of separators and control characters alone (e.g. U+001F), which the
    whitespace strip above keeps but Python's `str.strip` and the tokenizer treat as nothing."""
    if not text.strip():
        raise ValueError("must contain a visible character")
    return text


def request_models(settings: Settings) -> RequestModels:
    """Request models whose constraints are this server's settings."""
    retrieval_help = f"dense, sparse (BM25) or hybrid; default {settings.retrieval.value!r}."
    Text = Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=settings.max_question_chars),
        AfterValidator(not_blank),
    ]

    class AskRequest(AskRequestBase):
        question: Text = Field(description="The question, answered from the indexed documents only.")
        top_k: Annotated[int, Field(ge=1, le=settings.max_ask_top_k)] = Field(
            settings.ask_top_k, description="Passages retrieved, given to the reader and cited."
        )
        reader: ReaderName | None = Field(None, description=f"Reader to use; default {settings.default_reader!r}.")
        retrieval: Retrieval | None = Field(None, description=retrieval_help)
        extractive: bool | None = Field(
            None,
            description="Copy the answer from the passages (a span of one, returned as `evidence`); "
            f"default {settings.extractive}. Readers that cannot: 422.",
        )
        adapter: AdapterName | None = Field(
            None,
            description="Reader adapter to answer with (GET /admin/adapters lists them), or 'none' for the base "
            "model; default: the server's default adapter. Readers that cannot run one: 422.",
        )
        stream: bool = Field(
            False,
            description="Answer as server-sent events (text/event-stream): `citations`, then `token`s as the answer "
            "is decoded, then `done` with this same answer object (or `error` with the error body).",
        )
        abstain: bool | None = Field(
            None,
            description="Refuse (`abstained`, the refusal text) when the passages found do not support an answer; "
            f"default {settings.abstain}.",
        )
        edits: bool = Field(
            True, description="Answer from the edit memory when the question is in an edit's scope (POST /v1/edits)."
        )

    class RetrieveRequest(RetrieveRequestBase):
        query: Text
        top_k: Annotated[int, Field(ge=1, le=settings.max_retrieve_top_k)] = settings.retrieve_top_k
        retrieval: Retrieval | None = Field(None, description=retrieval_help)

    return RequestModels(ask=AskRequest, retrieve=RetrieveRequest)
