"""The reader boundary: an abstract `Reader`, its configuration and its result types (no torch
in here). Readers are built by name from reader/registry.py."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ragserve.errors import ReaderUnavailableError
from ragserve.types import Passage

if TYPE_CHECKING:
    from reader.adapters import Adapter


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    """What every reader is configured with (from the settings: service/application/loading.py
    `reader_config`, the one place their defaults live)."""

    max_new_tokens: int
    max_passage_tokens: int  # each passage is cut to this many generator tokens
    temperature: float  # τ of the passage prior p(z|x) = softmax(score / τ) (RAG readers)
    num_beams: int  # beam search over the marginal (rag-token); 1 = greedy
    fid_model: str | None  # local encoder-decoder (T5) folder for `fid`
    retro_weights: Path | None  # trained retrofit layers for `retro` (safetensors)
    cache_dir: Path
    batch_max: int  # concurrent requests decoded together (`stuff`); 1 = one at a time
    batch_wait_ms: float  # how long a batch waits for more requests once it has one


# Retrieval for readers that retrieve again while they generate (RETRO): queries -> top-k passages each.
SearchFn = Callable[[Sequence[str], int], list[list[Passage]]]


@dataclass(frozen=True, slots=True)
class Evidence:
    """Where an extractive answer was copied from: characters [start_char, end_char) of the text
    of passage number `passage` (an index into the passages the reader was given)."""

    passage: int
    start_char: int
    end_char: int
    text: str


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    passages: list[Passage]  # the passages the answer was generated from (ranked, for RAG readers)
    timings_ms: dict[str, float] = field(default_factory=dict)
    probability: float | None = None  # p(answer | question) where the reader defines it
    weights: list[float] | None = None  # per passage: its share of the answer (posterior), aligned
    evidence: Evidence | None = None  # extractive answers: the passage span the answer was copied from


def cannot_copy(reader: str) -> ReaderUnavailableError:
    return ReaderUnavailableError(
        f"reader {reader!r} cannot copy its answer from the passages (extractive); the 'stuff' reader can"
    )


def cannot_adapt(reader: str) -> ReaderUnavailableError:
    return ReaderUnavailableError(
        f"reader {reader!r} cannot run an adapter; the 'stuff', 'rag-token' and 'rag-sequence' readers can"
    )


class Reader(ABC):
    """Answers a question from passages. Readers with `adapts` run the generator with the adapter
    they are given (reader/adapters.py); the others are only ever given None."""

    name: str
    extractive: ClassVar[bool] = False  # whether `answer_extractive` is implemented
    adapts: ClassVar[bool] = False  # whether answers can run with an adapter

    @abstractmethod
    def answer(self, question: str, passages: Sequence[Passage], adapter: "Adapter | None" = None) -> Answer: ...

    def answer_extractive(self, question: str, passages: Sequence[Passage], adapter: "Adapter | None" = None) -> Answer:
        """An answer copied from the passages (a span of one of them), with its `evidence`."""
        raise cannot_copy(self.name)
