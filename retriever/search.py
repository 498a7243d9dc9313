"""The one search routine: dense, BM25 or hybrid over any searchable set of chunks.

An index version (retriever/version.py: FAISS, BM25 postings, SQLite docstore) and its delta
(retriever/delta.py: vectors, postings and chunks in memory) are both a `Space`. `search` does the
mode branching, the candidate union and the fusion (retriever/hybrid.py) once, for both, so a
chunk scores the same whichever of the two holds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from ragserve.types import ChunkRecord, Passage, RetrievalMode
from retriever.hybrid import FusionWeights, QueryTerms, rank, union_rows
from retriever.postings import SparseHits
from retriever.sparse import SparseIndex


class Space(Protocol):
    """Chunks addressed by row, with their vectors and BM25 postings."""

    @property
    def size(self) -> int:
        """Rows that can be found."""

    def dense_top(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, dim) query vectors -> the k nearest rows per query: scores (Q, k), rows (Q, k), -1 = none."""

    def dense_scores(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Cosine of one (dim,) query vector with each of `rows` (n,) -> (n,) float32."""

    def sparse_hits(self, queries: sp.csr_matrix, ceiling: np.ndarray) -> SparseHits:
        """Normalised BM25 of the findable rows sharing a term with each of (Q, terms) query counts."""

    def records(self, rows: Sequence[int]) -> Mapping[int, ChunkRecord]:
        """The chunks of `rows` (valid rows only), by row."""


def search(
    space: Space,
    statistics: SparseIndex,
    queries: Sequence[str],
    vectors: np.ndarray | None,
    top_k: int,
    mode: RetrievalMode,
    fusion: FusionWeights,
) -> list[list[Passage]]:
    """The top_k passages of `space` per query, best first. `vectors` (Q, dim) are the query
    embeddings (None for BM25 alone); `statistics` turns queries into BM25 terms (the version's
    vocabulary and idf, for the delta too)."""
    if space.size == 0:
        return [[] for _ in queries]
    if mode is RetrievalMode.HYBRID:
        assert vectors is not None, "hybrid search needs query vectors"
        return _hybrid(space, statistics, queries, vectors, top_k, fusion)
    if mode is RetrievalMode.SPARSE:
        scores, rows = space.sparse_hits(*statistics.query_matrix(queries)).top(top_k)  # (Q, k) each
    else:
        assert vectors is not None, "dense search needs query vectors"
        scores, rows = space.dense_top(vectors, top_k)
    records = space.records(sorted({int(r) for r in rows.ravel() if r >= 0}))
    return [
        [Passage.of(records[r], s) for s, r in zip(q_scores.tolist(), q_rows.tolist(), strict=True) if r >= 0]
        for q_scores, q_rows in zip(scores, rows, strict=True)
    ]


def _hybrid(
    space: Space,
    statistics: SparseIndex,
    queries: Sequence[str],
    vectors: np.ndarray,
    top_k: int,
    fusion: FusionWeights,
) -> list[list[Passage]]:
    """Dense and BM25 candidates per query, each scored both ways exactly, ranked by the fused score."""
    depth = max(top_k, fusion.candidates)
    _, dense_rows = space.dense_top(vectors, depth)  # (Q, depth)
    sparse = space.sparse_hits(*statistics.query_matrix(queries))  # (Q, N) sparse: the chunks sharing a term
    _, sparse_rows = sparse.top(depth)  # (Q, depth); -1 where no term matches
    candidates = [union_rows(d, s) for d, s in zip(dense_rows, sparse_rows, strict=True)]  # (n_q,) each
    records = space.records(sorted({int(r) for rows in candidates for r in rows}))
    found: list[list[Passage]] = []
    for q, (query, rows) in enumerate(zip(queries, candidates, strict=True)):
        if rows.size == 0:
            found.append([])
            continue
        chunks = [(records[int(r)].title, records[int(r)].text) for r in rows]
        dense = space.dense_scores(vectors[q], rows)  # (n,)
        scores, best = rank(QueryTerms.of(query), rows, dense, sparse.at(q, rows), chunks, fusion, top_k)
        found.append([Passage.of(records[int(r)], float(s)) for s, r in zip(scores, best, strict=True)])
    return found
