"""Small value types that cross package boundaries (no torch in here)."""

from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True, slots=True)
class SearchResult:
    passages: list[Passage]
    index_version: str
    timings_ms: dict[str, float]
