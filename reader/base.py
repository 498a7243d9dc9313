"""The reader boundary: an abstract `Reader`, its result type, and the registry of readers by name.

Readers register themselves with `@register("name")`; the service builds them from the registry
and never switches on a model or reader name.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from retriever.errors import UnknownReaderError
from retriever.types import Passage

if TYPE_CHECKING:
    from reader.generator import Generator


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    max_new_tokens: int = 32
    max_passage_tokens: int = 384  # each passage is cut to this many generator tokens


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    passages: list[Passage]  # the passages the answer was generated from
    timings_ms: dict[str, float] = field(default_factory=dict)


class Reader(ABC):
    name: str

    @abstractmethod
    def answer(self, question: str, passages: Sequence[Passage]) -> Answer: ...


ReaderFactory = Callable[["Generator", ReaderConfig], Reader]
_REGISTRY: dict[str, ReaderFactory] = {}


def register(name: str) -> Callable[[ReaderFactory], ReaderFactory]:
    def add(factory: ReaderFactory) -> ReaderFactory:
        assert name not in _REGISTRY, f"reader {name!r} registered twice"
        _REGISTRY[name] = factory
        return factory

    return add


def reader_names() -> list[str]:
    return sorted(_REGISTRY)


def create_reader(name: str, generator: "Generator", config: ReaderConfig) -> Reader:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownReaderError(f"unknown reader {name!r}; available: {', '.join(reader_names())}") from None
    return factory(generator, config)
