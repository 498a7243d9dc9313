"""Question answering = retrieve, then read. Knows only the abstract boundaries (no torch)."""

import time
from collections.abc import Mapping
from dataclasses import dataclass

from reader.base import Reader
from retriever.base import Retriever
from retriever.errors import UnknownReaderError
from retriever.types import Passage, SearchResult


@dataclass(frozen=True, slots=True)
class AskResult:
    answer: str
    passages: list[Passage]
    reader: str
    index_version: str
    timings_ms: dict[str, float]


class QAEngine:
    def __init__(self, retriever: Retriever, readers: Mapping[str, Reader], default_reader: str) -> None:
        if default_reader not in readers:
            raise UnknownReaderError(f"default reader {default_reader!r} is not among {sorted(readers)}")
        self.retriever = retriever
        self.readers = dict(readers)
        self.default_reader = default_reader

    @property
    def index_version(self) -> str:
        return self.retriever.index_version

    def retrieve(self, query: str, top_k: int) -> SearchResult:
        started = time.perf_counter()
        result = self.retriever.search(query, top_k)
        result.timings_ms["total"] = (time.perf_counter() - started) * 1000
        return result

    def reader(self, name: str | None) -> Reader:
        name = name or self.default_reader
        if name not in self.readers:
            raise UnknownReaderError(f"unknown reader {name!r}; available: {', '.join(sorted(self.readers))}")
        return self.readers[name]

    def ask(self, question: str, top_k: int, reader_name: str | None = None) -> AskResult:
        started = time.perf_counter()
        reader = self.reader(reader_name)  # fail fast, before any work
        found = self.retriever.search(question, top_k)
        answer = reader.answer(question, found.passages)
        timings = {**found.timings_ms, **answer.timings_ms, "total": (time.perf_counter() - started) * 1000}
        return AskResult(answer.text, answer.passages, reader.name, found.index_version, timings)
