"""Freshness without a rebuild: documents changed since an index version was built live in a
small in-memory delta index searched together with it.

Search asks the version for more than top_k, drops every chunk of a document that the delta
replaces or that was deleted, searches the delta, and merges both by score. The delta is exact
(every one of its chunks is scored) and is rebuilt whole on each change, which is cheap at the
sizes a delta reaches between compactions (see the `compact_after_chunks` setting).

BM25 over the delta uses the version's statistics (document frequencies, average length, and
vocabulary: a term the version has never seen is not searchable until the next compaction), so
delta and version scores are on one scale; hybrid scores depend only on the query and the chunk
(retriever/hybrid.py), so they merge by value too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from indexer.chunking import Chunk, ChunkingConfig, chunk_document
from indexer.compact import DeltaContents
from indexer.sources import Document
from retriever.base import Retriever
from retriever.hybrid import FusionWeights, QueryTerms, rank, union_rows
from retriever.sparse import SparseIndex, indexed_text, top_rows
from retriever.types import Passage, RetrievalMode, SearchResult

if TYPE_CHECKING:
    from retriever.encoder import Encoder
    from retriever.version import VersionRetriever

NO_TEXT = "no text to index: the document is stored but cannot be retrieved"


@dataclass(frozen=True, slots=True)
class DeltaSnapshot:
    """A consistent view of the delta for one search."""

    rows: list[Chunk]
    vectors: np.ndarray  # (rows, dim)
    postings: sp.csr_matrix  # (terms, rows) BM25 weights under the version's statistics
    hidden: frozenset[str]  # documents whose chunks in the version must not show


class DeltaIndex:
    """The changes after document counter value `since`; `seq` is the last one applied."""

    def __init__(self, encoder: Encoder, chunking: ChunkingConfig, sparse: SparseIndex, since: int = 0) -> None:
        self.encoder = encoder
        self.chunking = chunking
        self.sparse = sparse
        self.since = since
        self.seq = since
        self._docs: dict[str, tuple[list[Chunk], np.ndarray]] = {}
        self._deleted: frozenset[str] = frozenset()
        self._snapshot = self._build({}, frozenset())
        self._lock = threading.Lock()  # writers only; readers take the current snapshot

    def apply(self, changed: Sequence[Document], removed: Sequence[str], seq: int) -> dict[str, str]:
        """Index `changed`, drop `removed`, note that changes up to `seq` are in; returns
        {doc id: problem} for documents with no text."""
        problems: dict[str, str] = {}
        embedded: dict[str, tuple[list[Chunk], np.ndarray]] = {}
        tokenized = self.encoder.tokenize([d.text for d in changed]) if changed else []
        for doc, tokens in zip(changed, tokenized, strict=True):
            chunks = chunk_document(doc, tokens, self.chunking)
            if not chunks:
                problems[doc.id] = NO_TEXT
            embedded[doc.id] = (chunks, self.encoder.encode_ids([c.token_ids for c in chunks]))
        with self._lock:
            docs = {**self._docs, **embedded}
            for doc_id in removed:
                docs.pop(doc_id, None)
            self._docs = docs
            self._deleted = (self._deleted - embedded.keys()) | frozenset(removed)
            self._snapshot = self._build(docs, frozenset(docs) | self._deleted)
            self.seq = max(self.seq, seq)
        return problems

    def _build(self, docs: dict[str, tuple[list[Chunk], np.ndarray]], hidden: frozenset[str]) -> DeltaSnapshot:
        rows = [c for chunks, _ in docs.values() for c in chunks]
        tf, lengths = self.sparse.tf_rows([indexed_text(c.title, c.text) for c in rows])
        return DeltaSnapshot(rows, self._stack(docs), self.sparse.weigh(tf, lengths), hidden)

    def _stack(self, docs: dict[str, tuple[list[Chunk], np.ndarray]]) -> np.ndarray:
        blocks = [v for chunks, v in docs.values() if chunks]
        if not blocks:
            return np.empty((0, self.encoder.dimension), np.float32)
        return np.ascontiguousarray(np.vstack(blocks), dtype=np.float32)  # (chunks, dim)

    @property
    def chunks(self) -> int:
        return len(self._snapshot.rows)

    def snapshot(self) -> DeltaSnapshot:
        return self._snapshot  # replaced whole by `apply`, never mutated

    def contents(self) -> DeltaContents:
        """Everything, with vectors, for a compaction."""
        with self._lock:
            snap = self._snapshot
            return DeltaContents(list(snap.rows), snap.vectors, snap.hidden, len(self._docs), self.seq)

    def search(
        self, queries: Sequence[str], vectors: np.ndarray | None, top_k: int, mode: RetrievalMode, fusion: FusionWeights
    ) -> list[list[Passage]]:
        """The delta's best chunks per query, scored exactly like the version's."""
        snap = self.snapshot()
        if not snap.rows:
            return [[] for _ in queries]
        dense = (vectors @ snap.vectors.T).astype(np.float32) if vectors is not None else None  # (Q, rows)
        sparse = None
        if mode is not RetrievalMode.DENSE:
            matrix, ceiling = self.sparse.query_matrix(queries)
            sparse = self.sparse.score(snap.postings, matrix, ceiling)  # (Q, rows)
        if mode is RetrievalMode.HYBRID:
            assert dense is not None and sparse is not None
            return [
                self._fused(query, dense[q], sparse[q], snap.rows, top_k, fusion) for q, query in enumerate(queries)
            ]
        scores = dense if mode is RetrievalMode.DENSE else sparse
        assert scores is not None
        top_scores, top = top_rows(scores, top_k) if mode is RetrievalMode.SPARSE else _top_any(scores, top_k)
        return [
            [Passage.of(snap.rows[i], float(s)) for s, i in zip(top_scores[q], top[q], strict=True) if i >= 0]
            for q in range(len(queries))
        ]

    def _fused(
        self, query: str, dense: np.ndarray, sparse: np.ndarray, rows: list[Chunk], top_k: int, fusion: FusionWeights
    ) -> list[Passage]:
        depth = max(top_k, fusion.candidates)
        _, by_sparse = top_rows(sparse[None, :], depth)  # (1, depth); -1 where no term matches
        candidates = union_rows(np.argsort(-dense, kind="stable")[:depth], by_sparse[0])  # (n,)
        chunks = [(rows[i].title, rows[i].text) for i in candidates]
        terms = QueryTerms.of(query)
        scores, best = rank(terms, candidates, dense[candidates], sparse[candidates], chunks, fusion, top_k)
        return [Passage.of(rows[int(i)], float(s)) for s, i in zip(scores, best, strict=True)]


def _top_any(scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns per row whatever their sign (cosines can be negative) -> scores, columns."""
    k = min(top_k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, k)
    return np.take_along_axis(scores, top, axis=1), top


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
        hidden = self.delta.snapshot().hidden
        if not hidden:
            return self.base.search_batch(queries, top_k, mode)
        t0 = time.perf_counter()
        vectors = self.base.embed(queries, mode)  # (Q, dim) or None; once for version and delta
        embed_ms = (time.perf_counter() - t0) * 1000
        results = self.base.search_embedded(queries, vectors, top_k * 2 + 8, mode, embed_ms)  # room for hidden
        started = time.perf_counter()
        found = self.delta.search(queries, vectors, top_k, mode, self.base.fusion)
        delta_ms = (time.perf_counter() - started) * 1000 / len(queries)
        merged = []
        for result, fresh in zip(results, found, strict=True):
            kept = [p for p in result.passages if p.doc_id not in hidden] + fresh
            kept.sort(key=lambda p: p.score, reverse=True)
            timings = {**result.timings_ms, "delta": delta_ms}
            merged.append(SearchResult(kept[:top_k], result.index_version, timings))
        return merged
