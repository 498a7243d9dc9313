"""Freshness without a rebuild: documents changed since an index version was built live in a
small in-memory delta index searched together with it.

Search asks the version for more than top_k, drops every chunk of a document that the delta
replaces or that was deleted, searches the delta, and merges both by score. The delta is exact
(every one of its chunks is scored) and its snapshot is rebuilt whole on each change, which is
cheap at the sizes a delta reaches between compactions (see the `compact_after_chunks` setting).
Chunking and embedding the changed documents is the indexer's work (indexer/delta.py); this
module holds what they became and searches it.

BM25 over the delta uses the version's statistics (document frequencies, average length, and
vocabulary: a term the version has never seen is not searchable until the next compaction), so
delta and version scores are on one scale; hybrid scores depend only on the query and the chunk
(retriever/hybrid.py), so they merge by value too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ragserve.types import ChunkRecord, RetrievalMode, SearchResult
from retriever.base import Retriever
from retriever.search import search
from retriever.sparse import SparseIndex, indexed_text

if TYPE_CHECKING:
    from retriever.version import VersionRetriever

# A document as the delta holds it: its chunks and their vectors (chunks, dim).
Embedded = tuple[Sequence[ChunkRecord], np.ndarray]


@dataclass(frozen=True, slots=True)
class DeltaContents:
    """A consistent snapshot of a delta index, for a compaction."""

    chunks: list[ChunkRecord]
    vectors: np.ndarray  # (len(chunks), dim)
    hidden: frozenset[str]  # document ids whose base chunks are replaced or deleted
    documents: int  # documents the delta holds (some may have no chunks)
    seq: int  # the document change counter the snapshot includes

    @property
    def empty(self) -> bool:
        return not self.hidden


@dataclass(frozen=True, slots=True)
class DeltaSnapshot:
    """A consistent view of the delta for one search; a search space (retriever/search.py)."""

    rows: list[ChunkRecord]
    vectors: np.ndarray  # (rows, dim)
    postings: sp.csr_matrix  # (terms, rows) BM25 weights under the version's statistics
    hidden: frozenset[str]  # documents whose chunks in the version must not show
    statistics: SparseIndex

    @property
    def size(self) -> int:
        return len(self.rows)

    def dense_top(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = (vectors @ self.vectors.T).astype(np.float32)  # (Q, rows): exact, whatever their sign
        top = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, self.size)]  # (Q, k)
        return np.take_along_axis(scores, top, axis=1), top

    def dense_scores(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        scores: np.ndarray = (self.vectors[rows] @ vector).astype(np.float32)  # (n,)
        return scores

    def sparse_scores(self, queries: sp.csr_matrix, ceiling: np.ndarray) -> np.ndarray:
        return self.statistics.score(self.postings, queries, ceiling)

    def records(self, rows: Sequence[int]) -> Mapping[int, ChunkRecord]:
        return {row: self.rows[row] for row in rows}


class DeltaIndex:
    """The changes after document counter value `since`; `seq` is the last one applied. One
    writer at a time (`put`); searches read the current snapshot without a lock."""

    def __init__(self, dimension: int, sparse: SparseIndex, since: int = 0) -> None:
        self.dimension = dimension
        self.sparse = sparse
        self.since = since
        self.seq = since
        self._docs: dict[str, Embedded] = {}
        self._deleted: frozenset[str] = frozenset()
        self._snapshot = self._build({}, frozenset())
        self._lock = threading.Lock()  # writers only; readers take the current snapshot

    def put(self, embedded: Mapping[str, Embedded], removed: Sequence[str], seq: int) -> None:
        """Hold `embedded` (replacing what the delta held of those documents), drop `removed`,
        note that changes up to `seq` are in."""
        with self._lock:
            docs = {**self._docs, **embedded}
            for doc_id in removed:
                docs.pop(doc_id, None)
            self._docs = docs
            self._deleted = (self._deleted - embedded.keys()) | frozenset(removed)
            self._snapshot = self._build(docs, frozenset(docs) | self._deleted)
            self.seq = max(self.seq, seq)

    def _build(self, docs: Mapping[str, Embedded], hidden: frozenset[str]) -> DeltaSnapshot:
        rows = [c for chunks, _ in docs.values() for c in chunks]
        tf, lengths = self.sparse.tf_rows([indexed_text(c.title, c.text) for c in rows])
        return DeltaSnapshot(rows, self._stack(docs), self.sparse.weigh(tf, lengths), hidden, self.sparse)

    def _stack(self, docs: Mapping[str, Embedded]) -> np.ndarray:
        blocks = [v for chunks, v in docs.values() if len(chunks)]
        if not blocks:
            return np.empty((0, self.dimension), np.float32)
        return np.ascontiguousarray(np.vstack(blocks), dtype=np.float32)  # (chunks, dim)

    @property
    def chunks(self) -> int:
        return len(self._snapshot.rows)

    def snapshot(self) -> DeltaSnapshot:
        return self._snapshot  # replaced whole by `put`, never mutated

    def contents(self) -> DeltaContents:
        """Everything, with vectors, for a compaction."""
        with self._lock:
            snap = self._snapshot
            return DeltaContents(list(snap.rows), snap.vectors, snap.hidden, len(self._docs), self.seq)


class FreshRetriever(Retriever):
    """An index version plus its delta."""

    def __init__(self, base: VersionRetriever, delta: DeltaIndex) -> None:
        self.base = base
        self.delta = delta

    @property
    def index_version(self) -> str:
        return self.base.index_version

    def search_batch(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[SearchResult]:
        mode = mode or self.base.mode
        snap = self.delta.snapshot()
        if not snap.hidden:
            return self.base.search_batch(queries, top_k, mode)
        t0 = time.perf_counter()
        vectors = self.base.embed(queries, mode)  # (Q, dim) or None; once for version and delta
        embed_ms = (time.perf_counter() - t0) * 1000
        results = self.base.search_embedded(queries, vectors, top_k * 2 + 8, mode, embed_ms)  # room for hidden
        started = time.perf_counter()
        found = search(snap, self.base.sparse, queries, vectors, top_k, mode, self.base.fusion)
        delta_ms = (time.perf_counter() - started) * 1000 / len(queries)
        merged = []
        for result, fresh in zip(results, found, strict=True):
            kept = [p for p in result.passages if p.doc_id not in snap.hidden] + fresh
            kept.sort(key=lambda p: p.score, reverse=True)
            timings = {**result.timings_ms, "delta": delta_ms}
            merged.append(SearchResult(kept[:top_k], result.index_version, timings))
        return merged
