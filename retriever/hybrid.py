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
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retriever.sparse import indexed_text, terms


@dataclass(frozen=True, slots=True)
class FusionWeights:
    sparse: float = 0.75
    phrase: float = 0.19
    title: float = -0.21
    candidates: int = 50  # from each of dense and BM25, before fusion


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
    phrase = 0.0
    indexed = indexed_text(title, text)
    lower = indexed.lower()
    # A term is a prefix of the lower-cased word it came from, so a pair whose terms are not both
    # substrings of the text cannot be adjacent in it: most candidates need no analysis at all.
    if any(a in lower and b in lower for a, b in query.pairs):
        # Terms are \w+ runs, so "a b" occurs in the space-joined terms exactly where a and b are adjacent.
        joined = " " + " ".join(terms(lower)) + " "
        phrase = sum(f" {a} {b} " in joined for a, b in query.pairs) / len(query.pairs)
    title_words = _title_terms(title)
    title_hit = len(title_words & query.words) / len(title_words) if title_words else 0.0
    return phrase, title_hit


@functools.lru_cache(maxsize=1 << 16)
def _title_terms(title: str) -> frozenset[str]:
    return frozenset(terms(title))


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
    features = np.array([lexical_features(query, title, text) for title, text in chunks], np.float32)
    features = features.reshape(len(chunks), 2)  # (n, 2): phrase, title
    fused = dense + weights.sparse * sparse + weights.phrase * features[:, 0] + weights.title * features[:, 1]
    out: np.ndarray = fused.astype(np.float32)
    return out


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
    """The top_k of n candidate rows by fused score -> (scores (k,), rows (k,)), best first."""
    scores = fuse(query, dense, sparse, chunks, weights)  # (n,)
    best = np.argsort(-scores, kind="stable")[:top_k]
    return scores[best], candidates[best]
