"""The retriever boundary the service talks to (no torch, no faiss in here)."""

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence

from ragserve.types import Passage, RetrievalMode, SearchResult


class Retriever(ABC):
    @property
    @abstractmethod
    def index_version(self) -> str: ...

    def search(self, query: str, top_k: int, mode: RetrievalMode | None = None) -> SearchResult:
        return self.search_batch([query], top_k, mode)[0]

    async def search_async(self, query: str, top_k: int, mode: RetrievalMode | None = None) -> SearchResult:
        """`search` for a coroutine: on a worker thread here; batching retrievers await their batch."""
        return await asyncio.to_thread(self.search, query, top_k, mode)

    def passages(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[list[Passage]]:
        """The passages alone of `search_batch`: the search function a reader or a training run is handed."""
        return [result.passages for result in self.search_batch(queries, top_k, mode)]

    @abstractmethod
    def search_batch(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[SearchResult]:
        """Top-k passages per query; `mode` None means the retriever's configured mode."""
