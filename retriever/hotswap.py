"""Atomic hot swap of the serving index version while requests are in flight.

A request leases the current version once and uses it to the end; a swap is one reference
assignment, so requests that started before it finish on the old version and later ones see
the new one. The lock guards only that pointer and the lease counts, for a few instructions;
searches never run under it.
"""

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ragserve.types import RetrievalMode, SearchResult
from retriever.base import Retriever


class HotSwapRetriever(Retriever):
    def __init__(self, initial: Retriever) -> None:
        self._current = initial
        self._leases: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def index_version(self) -> str:
        return self._current.index_version

    @contextmanager
    def lease(self) -> Iterator[Retriever]:
        with self._lock:
            current = self._current
            self._leases[current.index_version] += 1
        try:
            yield current
        finally:
            with self._lock:
                self._leases[current.index_version] -= 1
                if self._leases[current.index_version] == 0:
                    del self._leases[current.index_version]

    def swap(self, new: Retriever) -> Retriever:
        """Serve `new` from now on; returns the version that served before."""
        with self._lock:
            old, self._current = self._current, new
        return old

    def in_use(self) -> set[str]:
        """The serving version and every version a request still holds."""
        with self._lock:
            return {self._current.index_version, *self._leases}

    def search_batch(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[SearchResult]:
        with self.lease() as retriever:
            return retriever.search_batch(queries, top_k, mode)
