"""Hybrid retrieval: dense and BM25 candidates, fused by a learned linear score.

A query's candidates are the union of the dense top-N and the BM25 top-N chunks. Each candidate
gets both scores exactly (its stored vector against the query vector; its BM25 weights against the
query terms) and two lexical features, and is ranked by

    score = cosine + w_sparse * bm25 + w_phrase * phrase + w_title * title

where bm25 is normalised to [0, 1] (see `retriever/sparse.py`), `phrase` is the fraction of the
query's adjacent term pairs found adjacent in the chunk, and `title` the fraction of the title's
terms that the query contains. Every term depends on the query and the chunk alone, never on the
other candidates, so scores from an index version and from its delta can be merged by value.

The default weights were fitted by logistic regression on the 24 training articles of SQuAD v1.1
dev (`python -m bench.hybrid --fit`); the held-out articles were not used.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retriever.sparse import indexed_text, terms

# The bound and the exact score are computed in different float widths: a bound this close to the
# k-th score is visited rather than skipped.
BOUND_SLACK = 1e-4


@dataclass(frozen=True, slots=True)
class FusionWeights:
    """The weights of the fused score (settings `hybrid_*`, where their fitted defaults live)."""

    sparse: float
    phrase: float
    title: float
    candidates: int  # from each of dense and BM25, before fusion


@dataclass(frozen=True, slots=True)
class QueryTerms:
    words: frozenset[str]
    pairs: frozenset[tuple[str, str]]

    @classmethod
    def of(cls, query: str) -> QueryTerms:
        words = terms(query)
        return cls(frozenset(words), frozenset(itertools.pairwise(words)))


def lexical_features(query: QueryTerms, title: str, text: str) -> tuple[float, float]:
    """(phrase, title) features of one chunk for one query, each in [0, 1]."""
    return phrase_feature(query, title, text), title_feature(query, title)


def phrase_feature(query: QueryTerms, title: str, text: str) -> float:
    """The fraction of the query's adjacent term pairs that are adjacent in the chunk."""
    lower = indexed_text(title, text).lower()
    # A term is a prefix of the lower-cased word it came from, so a pair whose terms are not both
    # substrings of the text cannot be adjacent in it: most candidates need no analysis at all.
    if not any(a in lower and b in lower for a, b in query.pairs):
        return 0.0
    # Terms are \w+ runs, so "a b" occurs in the space-joined terms exactly where a and b are adjacent.
    joined = " " + " ".join(terms(lower)) + " "
    return sum(f" {a} {b} " in joined for a, b in query.pairs) / len(query.pairs)


def title_feature(query: QueryTerms, title: str) -> float:
    """The fraction of the title's terms that the query contains."""
    title_words = _title_terms(title)
    return len(title_words & query.words) / len(title_words) if title_words else 0.0


@functools.lru_cache(maxsize=1 << 16)
def _title_terms(title: str) -> frozenset[str]:
    return frozenset(terms(title))


def _combine(
    dense: np.ndarray, sparse: np.ndarray, phrase: np.ndarray, title: np.ndarray, weights: FusionWeights
) -> np.ndarray:
    fused = dense + weights.sparse * sparse + weights.phrase * phrase + weights.title * title  # (n,)
    out: np.ndarray = fused.astype(np.float32)
    return out


def fuse(
    query: QueryTerms,
    dense: np.ndarray,
    sparse: np.ndarray,
    chunks: Sequence[tuple[str, str]],
    weights: FusionWeights,
) -> np.ndarray:
    """Fused scores of n candidates: dense (n,) cosines, sparse (n,) normalised BM25, chunks as
    (title, text) pairs -> (n,) float32."""
    assert dense.shape == sparse.shape == (len(chunks),), "one dense and one sparse score per candidate"
    phrase = np.array([phrase_feature(query, title, text) for title, text in chunks], np.float32)  # (n,)
    title = np.array([title_feature(query, title) for title, _ in chunks], np.float32)  # (n,)
    return _combine(dense, sparse, phrase, title, weights)


def union_rows(*ranked: np.ndarray) -> np.ndarray:
    """Distinct valid rows (>= 0) of several ranked row lists, in first-seen order."""
    return np.array(list(dict.fromkeys(int(r) for rows in ranked for r in rows if r >= 0)), np.int64)


def rank(
    query: QueryTerms,
    candidates: np.ndarray,
    dense: np.ndarray,
    sparse: np.ndarray,
    chunks: Sequence[tuple[str, str]],
    weights: FusionWeights,
    top_k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The top_k of n candidate rows by fused score -> (scores (k,), rows (k,)), best first; the
    same as ranking all n by `fuse`.

    The phrase feature is the only costly one (it reads the chunk's text), and it can add at most
    its weight. So candidates are visited from the best bound (every other feature exact, phrase
    at its maximum) down, and the visit stops once a bound falls below the k-th exact score found:
    no later candidate can enter the top_k, nor tie with it."""
    n = len(chunks)
    assert dense.shape == sparse.shape == candidates.shape == (n,), "one row, dense and sparse score per candidate"
    title = np.array([title_feature(query, t) for t, _ in chunks], np.float32).reshape(n)  # (n,)
    phrase = np.zeros(n, np.float32)  # (n,) filled in for the candidates visited
    headroom = max(weights.phrase, 0.0)
    bound = dense + weights.sparse * sparse + weights.title * title + headroom  # (n,) best case per candidate
    visited = np.zeros(n, bool)
    kept: list[float] = []  # min-heap of the top_k exact scores so far
    for i in np.argsort(-bound, kind="stable").tolist():
        if len(kept) == top_k and bound[i] + BOUND_SLACK < kept[0]:
            break
        phrase[i] = phrase_feature(query, *chunks[i])
        visited[i] = True
        exact = float(bound[i]) - headroom + weights.phrase * float(phrase[i])
        if len(kept) < top_k:
            heapq.heappush(kept, exact)
        else:
            heapq.heappushpop(kept, exact)
    scores = np.where(visited, _combine(dense, sparse, phrase, title, weights), -np.inf)  # (n,)
    best = np.argsort(-scores, kind="stable")[:top_k]
    return scores[best].astype(np.float32), candidates[best]
