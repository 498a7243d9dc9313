"""Exact vectors kept beside a compressed FAISS index, for re-ranking.

A PQ index stores each vector in a few dozen bytes and scores candidates from those codes, so its
scores are approximate and its top k misses some true neighbours. Search asks it for more
candidates than it needs (the `rerank_candidates` setting), scores those exactly against the
original float32 vectors kept in `EXACT_FILE` and keeps the best k: recall close to exact search
(docs/scaling.md), at 4·dim bytes per vector of disk. The file is memory-mapped read-only, so only
the pages of the candidates a query touches are read into RAM (page cache, shared by processes).

The file is a raw (n, dim) float32 array in FAISS id order (row i is the vector of FAISS id
`id_base + i`), exactly what the artifact writer spools while it builds (retriever/writer.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ragserve.errors import ArtifactError

EXACT_FILE = "vectors.f32"
BLOCK_FLOATS = 1 << 22  # candidate vector floats gathered at once in `rerank` (16 MiB)


class ExactVectors:
    """Read-only exact vectors of one set of index files; rows are FAISS ids minus the id base."""

    def __init__(self, vectors: np.ndarray) -> None:
        assert vectors.ndim == 2 and vectors.dtype == np.float32, "an (n, dim) float32 array"
        self.vectors = vectors  # (n, dim), usually a read-only memmap

    @classmethod
    def open(cls, path: Path, dimension: int) -> ExactVectors:
        size = path.stat().st_size
        if size % (4 * dimension):
            raise ArtifactError(f"{path}: {size} bytes is not a whole number of {dimension}-dim float32 vectors")
        if size == 0:  # np.memmap cannot map an empty file
            return cls(np.empty((0, dimension), np.float32))
        return cls(np.memmap(path, dtype=np.float32, mode="r").reshape(-1, dimension))

    @property
    def rows(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def block(self, start: int, n: int) -> np.ndarray:
        """Rows start..start+n as an in-memory copy -> (n, dim), e.g. to carry them into a compaction."""
        assert start >= 0 and start + n <= self.rows, "rows outside the file"
        return np.array(self.vectors[start : start + n])

    def scores(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact inner products of one (dim,) vector with `rows` (n,) -> (n,) float32."""
        picked = self.vectors[np.asarray(rows, np.int64)]  # (n, dim)
        scored: np.ndarray = picked @ np.asarray(vector, np.float32)
        return scored

    def rerank(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best of each query's candidate `rows` (Q, k') by exact inner product, best first ->
        scores (Q, k) float32 and rows (Q, k) int64; a row of -1 is no candidate, and where a query
        has fewer than k the rest is -inf / -1."""
        queries = np.asarray(queries, np.float32)
        rows = np.asarray(rows, np.int64)
        assert queries.shape == (rows.shape[0], self.dimension), "one query vector per row of candidates"
        exact = np.empty(rows.shape, np.float32)  # (Q, k')
        step = max(1, BLOCK_FLOATS // max(1, rows.shape[1] * self.dimension))
        for start in range(0, rows.shape[0], step):
            part = slice(start, start + step)
            exact[part] = self._candidate_scores(queries[part], rows[part])
        return best(exact, rows, k)

    def _candidate_scores(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(b, dim) queries and their (b, k') candidate rows -> (b, k') exact scores, -inf where none."""
        valid = rows >= 0
        unique, inverse = np.unique(np.where(valid, rows, 0), return_inverse=True)  # each row read once, in file order
        gathered = self.vectors[unique][inverse.reshape(rows.shape)]  # (b, k', dim)
        scores = np.matmul(gathered, queries[:, :, None])[:, :, 0]  # (b, k')
        return np.where(valid, scores, np.float32(-np.inf))


def best(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest `scores` (Q, k') of each row with their `rows`, best first (ties keep their
    order), padded with -inf / -1 to k columns."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, min(k, k'))
    top = np.take_along_axis(scores, order, axis=1)
    ids = np.where(np.isfinite(top), np.take_along_axis(rows, order, axis=1), -1)
    missing = k - order.shape[1]
    if missing > 0:
        top = np.pad(top, ((0, 0), (0, missing)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, missing)), constant_values=-1)
    return top.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)
