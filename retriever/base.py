"""The retriever boundary the service talks to (no torch, no faiss in here)."""

from abc import ABC, abstractmethod
from collections.abc import Sequence

from retriever.types import SearchResult


class Retriever(ABC):
    @property
    @abstractmethod
    def index_version(self) -> str: ...

    def search(self, query: str, top_k: int) -> SearchResult:
        return self.search_batch([query], top_k)[0]

    @abstractmethod
    def search_batch(self, queries: Sequence[str], top_k: int) -> list[SearchResult]: ...
