"""Readers by name. Each reader module registers its factory with `@register("name")` (importing
reader/builtin.py registers them all); the service builds every registered reader this
configuration can run, and never switches on a model or reader name."""

from collections.abc import Callable
from dataclasses import dataclass

from ragserve.errors import UnknownReaderError
from reader.base import Reader, ReaderConfig, SearchFn
from reader.generator import Generator


@dataclass(frozen=True, slots=True)
class ReaderContext:
    """What a reader factory gets."""

    generator: Generator
    config: ReaderConfig
    search: SearchFn | None = None  # retrieval while generating (RETRO); None: the given passages only


ReaderFactory = Callable[[ReaderContext], Reader]
_REGISTRY: dict[str, ReaderFactory] = {}


def register(name: str) -> Callable[[ReaderFactory], ReaderFactory]:
    def add(factory: ReaderFactory) -> ReaderFactory:
        assert name not in _REGISTRY, f"reader {name!r} registered twice"
        _REGISTRY[name] = factory
        return factory

    return add


def reader_names() -> list[str]:
    return sorted(_REGISTRY)


def create_reader(name: str, context: ReaderContext) -> Reader:
    """Build a registered reader; raises ReaderUnavailableError when this configuration cannot
    run it (e.g. `fid` without an encoder-decoder model)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownReaderError(f"unknown reader {name!r}; available: {', '.join(reader_names())}") from None
    return factory(context)
