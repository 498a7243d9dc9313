"""Small value types that cross package boundaries (no torch in here)."""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class RetrievalMode(StrEnum):
    """How candidates are found: embeddings, BM25, or both fused (see retriever/hybrid.py)."""

    DENSE = "dense"
    SPARSE = "sparse"
    HYBRID = "hybrid"


class Precision(StrEnum):
    """Number format of a model's weights and activations (retriever and generator). `bf16` runs ~3x
    faster where the CPU multiplies bf16 natively (AMX), at costs measured in docs/performance.md;
    `auto` picks it only there (and on CUDA GPUs that support it). `fp16` runs on CUDA only."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


@dataclass(frozen=True, slots=True)
class Document:
    """One source document, as a corpus reader or the ingestion API hands it over."""

    id: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


class ChunkRecord(Protocol):
    """What an index keeps of a chunk: a fresh chunk of the indexer, or one read back from an artifact."""

    @property
    def chunk_id(self) -> str: ...
    @property
    def doc_id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def start_char(self) -> int: ...
    @property
    def end_char(self) -> int: ...
    @property
    def metadata(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class TokenizedText:
    ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in the source text
    word_ids: list[int | None]  # tokens of one word share an id (word pieces)


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrieved chunk with its score (inner product of unit vectors = cosine)."""

    chunk_id: str
    doc_id: str
    title: str
    text: str
    score: float
    start_char: int = 0
    end_char: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, chunk: ChunkRecord, score: float) -> "Passage":
        return cls(
            chunk_id=chunk.chunk_id,
            doc_id=chunk.doc_id,
            title=chunk.title,
            text=chunk.text,
            score=score,
            start_char=chunk.start_char,
            end_char=chunk.end_char,
            metadata=chunk.metadata,
        )


@dataclass(frozen=True, slots=True)
class SearchResult:
    passages: list[Passage]
    index_version: str
    timings_ms: dict[str, float]
