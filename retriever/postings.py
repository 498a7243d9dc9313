"""BM25 postings and hits: term-major weights of consecutive rows (`Postings`, one block per
version shard, small appended blocks for a delta) and the sparse score matrix a query batch gets
from them (`SparseHits`), with the top-k pick over a query's own entries (retriever/sparse.py
weighs the rows; retriever/search.py searches with both)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True, slots=True)
class Postings:
    """Term-major BM25 weights of consecutive rows, over the terms those rows hold: a version is
    one block over its whole vocabulary; a delta appends small blocks, whose size (and the cost of
    merging them) is what their rows hold, never the vocabulary's."""

    terms: np.ndarray  # (t,) ascending vocabulary ids of the block's terms
    weights: sp.csr_matrix  # (t, rows)

    @classmethod
    def of(cls, by_row: sp.csr_matrix) -> Postings:
        """The block of (rows x vocabulary) weights (from `SparseIndex.weigh`)."""
        return cls._packed(by_row, np.asarray(by_row.indices))

    @property
    def rows(self) -> int:
        return int(self.weights.shape[1])

    def score(self, queries: sp.csr_matrix) -> sp.csr_matrix:
        """(Q, vocabulary) query counts -> (Q, rows) sparse BM25 sums. Each query's terms are added
        in ascending order in every block, as in one product over all rows, so a row scores the
        same bits whichever block holds it."""
        if self.terms.size == queries.shape[1]:  # every vocabulary id, in order (a version): no mapping
            whole: sp.csr_matrix = queries @ self.weights
            return whole
        at = np.searchsorted(self.terms, queries.indices)  # (nnz_q,) where each query term would be
        found = at < self.terms.size
        found[found] = self.terms[at[found]] == queries.indices[found]  # (nnz_q,) the block has it
        indptr = np.concatenate([[0], np.cumsum(found)])[queries.indptr]  # (Q + 1,) over the kept entries
        shape = (queries.shape[0], self.terms.size)
        local = sp.csr_matrix((queries.data[found], at[found], indptr), shape=shape)  # (Q, t), same order
        product: sp.csr_matrix = local @ self.weights
        return product

    def concat(self, later: Postings) -> Postings:
        """This block's rows, then `later`'s."""
        union = np.union1d(self.terms, later.terms)  # (t,)
        blocks = [block._over(union) for block in (self, later)]
        return Postings(union, sp.hstack(blocks, format="csr"))

    def take(self, rows: np.ndarray) -> Postings:
        """The block of `rows` (n,), in that order, over the terms they still hold."""
        by_row = self.weights.T.tocsr()[rows]  # (n, t)
        return Postings._packed(by_row, self.terms[by_row.indices])

    @classmethod
    def _packed(cls, by_row: sp.csr_matrix, ids: np.ndarray) -> Postings:
        """(rows x any) weights whose entries have vocabulary `ids` (nnz,) -> the block over those ids."""
        block_terms = np.unique(ids)  # (t,)
        local = np.searchsorted(block_terms, ids)  # (nnz,) vocabulary id -> block id
        matrix = sp.csr_matrix((by_row.data, local, by_row.indptr), shape=(by_row.shape[0], block_terms.size))
        return cls(block_terms, matrix.T.tocsr())

    def _over(self, union: np.ndarray) -> sp.csr_matrix:
        """The weights over `union` (u,), a superset of the block's terms -> (u, rows)."""
        per_term = np.zeros(union.size, np.int64)
        per_term[np.searchsorted(union, self.terms)] = np.diff(self.weights.indptr)
        indptr = np.concatenate([[0], np.cumsum(per_term)])
        return sp.csr_matrix((self.weights.data, self.weights.indices, indptr), shape=(union.size, self.rows))


@dataclass(frozen=True, slots=True)
class SparseHits:
    """The nonzeros of a (Q, N) BM25 score matrix: per query, the chunks sharing a term with it.
    Every pick below reads a query's own entries only, so nothing costs a row per chunk of N."""

    scores: sp.csr_matrix  # (Q, N) normalised BM25; absent = no shared term (score 0)

    @classmethod
    def of(cls, blocks: Sequence[Postings], queries: sp.csr_matrix, ceiling: np.ndarray) -> SparseHits:
        """Normalised BM25 of (Q, vocabulary) query counts over the rows of `blocks`, side by side."""
        products = [block.score(queries) for block in blocks]  # (Q, rows of the block) each, float32
        if len(products) != 1:
            products = [sp.hstack(products, format="csr") if products else sp.csr_matrix((len(ceiling), 0))]
        scores = products[0].astype(np.float32, copy=False)  # (Q, N) sparse, a new matrix: ours to divide
        for q, (start, end) in enumerate(itertools.pairwise(scores.indptr.tolist())):
            scores.data[start:end] /= ceiling[q]  # in place, the float32 division a dense matrix had
        return cls(scores)

    def top(self, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top_k positive scores per query, best first, ties by row -> scores (Q, top_k)
        float32 (0 where none) and rows (Q, top_k) int64 (-1 where none)."""
        queries = self.scores.shape[0]
        out_scores = np.zeros((queries, top_k), np.float32)
        out_rows = np.full((queries, top_k), -1, np.int64)
        for q in range(queries):
            rows, values = self._entries(q)  # (M,) each
            best = _best(values, rows, top_k)  # (<= top_k,) positions into them
            out_scores[q, : best.size] = values[best]
            out_rows[q, : best.size] = rows[best]
        return out_scores, out_rows

    def at(self, q: int, rows: np.ndarray) -> np.ndarray:
        """Query q's scores of distinct `rows` (n,) -> (n,) float32; 0 for a row sharing no term with it."""
        out = np.zeros(rows.size, np.float32)
        if rows.size == 0:
            return out
        found_rows, values = self._entries(q)  # (M,) each
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]  # (n,) sorted, so each of the M entries is looked up by bisection
        at = np.minimum(np.searchsorted(ordered, found_rows), rows.size - 1)  # (M,)
        hit = ordered[at] == found_rows  # (M,)
        out[order[at[hit]]] = values[hit]
        return out

    def where(self, keep: np.ndarray) -> SparseHits:
        """Only the entries where `keep` (nnz,) is true: how a delta drops its dead rows."""
        if keep.all():
            return self
        scores = self.scores.copy()
        scores.data[~keep] = 0
        scores.eliminate_zeros()
        return SparseHits(scores)

    def _entries(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        """Query q's rows (M,) int and scores (M,) float32, in no particular order."""
        span = slice(self.scores.indptr[q], self.scores.indptr[q + 1])
        return self.scores.indices[span], self.scores.data[span]


def _best(values: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest positive `values` (M,), best first, ties by `rows` (M,) ascending
    (the order a stable sort of a dense score row gives)."""
    keep = np.flatnonzero(values > 0)  # (P,)
    if k == 0 or keep.size == 0:
        return keep[:0]
    if keep.size > k:  # a linear-time cut at the k-th best; its ties stay, so the order below is exact
        kth = np.partition(values[keep], keep.size - k)[keep.size - k]
        keep = keep[values[keep] >= kth]
    return keep[np.lexsort((rows[keep], -values[keep]))[:k]]
