"""The retriever boundary the service talks to (no torch, no faiss in here)."""

from abc import ABC, abstractmethod
from collections.abc import Sequence

from retriever.types import SearchResult


class Retriever(ABC):
    @property
    @abstractmethod
    def index_version(self) -> str: ...

    @abstractmethod
    def search(self, query: str, top_k: int) -> SearchResult: ...

    @abstractmethod
    def search_batch(self, queries: Sequence[str], top_k: int) -> list[SearchResult]: ...
