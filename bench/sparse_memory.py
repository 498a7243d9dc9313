"""Memory and time of BM25 top-k for a batch of queries over a large index: the sparse top-k of
retriever/sparse.py (`SparseHits`) against the dense (queries x chunks) score matrix it replaced,
on the same synthetic index, in the same run, with the results compared.

The index is synthetic, so it can be large without a corpus: `--chunks` chunks of `--terms` term
occurrences each, drawn from a Zipf-like vocabulary (common terms have long postings lists, as in
text); queries are `--queries` draws of 3-6 terms from the same distribution, less its
`--common` most frequent terms (stop words never reach a query). Peak memory is the
peak of the arrays allocated while the batch is scored (tracemalloc, which sees every numpy and
scipy array); scipy's sparse product also keeps one (N,) accumulator in C++, printed apart.

    python -m bench.sparse_memory [--chunks 1000000] [--queries 32] [--top-k 100]
"""

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from bench.common import header
from retriever.postings import SparseHits
from retriever.sparse import BM25Params, SparseIndex
from service.settings import Settings

Search = Callable[[SparseIndex, list[str], int], tuple[np.ndarray, np.ndarray]]


def synthetic_index(chunks: int, terms: int, vocabulary: int, params: BM25Params, seed: int) -> SparseIndex:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocabulary + 1) ** 1.07  # Zipf-like term frequencies
    cdf = np.cumsum(weights / weights.sum())
    term_of = np.minimum(np.searchsorted(cdf, rng.random(chunks * terms)), vocabulary - 1)  # (chunks * terms,)
    chunk_of = np.repeat(np.arange(chunks), terms)
    tf = sp.csr_matrix((np.ones(chunks * terms, np.int32), (chunk_of, term_of)), shape=(chunks, vocabulary))
    lengths = np.full(chunks, terms, np.int32)
    return SparseIndex({f"w{i}": i for i in range(vocabulary)}, tf, lengths, params)


def queries_of(count: int, vocabulary: int, common: int, seed: int) -> list[str]:
    """Queries of 3-6 terms, Zipf-like but without the `common` most frequent terms (the analyzer
    drops stop words from real queries)."""
    rng = np.random.default_rng(seed + 1)
    weights = 1.0 / np.arange(1, vocabulary + 1) ** 1.07
    weights[:common] = 0
    picks = [rng.choice(vocabulary, size=rng.integers(3, 7), p=weights / weights.sum()) for _ in range(count)]
    return [" ".join(f"w{t}" for t in pick) for pick in picks]


def dense_search(index: SparseIndex, queries: list[str], top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The search this replaced: a dense (Q, N) score matrix, then an argpartition of every row."""
    matrix, ceiling = index.query_matrix(queries)
    scores = (matrix @ index.postings.weights).toarray()  # (Q, N)
    scores = (scores / ceiling[:, None]).astype(np.float32)
    q, n = scores.shape
    k = min(top_k, n)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(scores, part, axis=1)  # (Q, k)
    order = np.argsort(-picked, axis=1, kind="stable")
    part, picked = np.take_along_axis(part, order, axis=1), np.take_along_axis(picked, order, axis=1)
    hit = picked > 0
    out_scores, out_rows = np.zeros((q, top_k), np.float32), np.full((q, top_k), -1, np.int64)
    out_scores[:, :k], out_rows[:, :k] = np.where(hit, picked, 0), np.where(hit, part, -1)
    return out_scores, out_rows


def sparse_search(index: SparseIndex, queries: list[str], top_k: int) -> tuple[np.ndarray, np.ndarray]:
    return SparseHits.of([index.postings], *index.query_matrix(queries)).top(top_k)


def measure(search: Search, index: SparseIndex, queries: list[str], top_k: int) -> tuple[float, float, tuple]:
    """(ms, peak MiB of the arrays allocated, result) of one search of the batch."""
    tracemalloc.start()
    started = time.perf_counter()
    result = search(index, queries, top_k)
    ms = (time.perf_counter() - started) * 1000
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return ms, peak, result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--terms", type=int, default=30, help="term occurrences per chunk")
    ap.add_argument("--vocabulary", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--common", type=int, default=100, help="most frequent terms no query contains")
    args = ap.parse_args()
    header("BM25 top-k: sparse hits vs a dense score matrix")
    settings = Settings()
    params = BM25Params(settings.bm25_k1, settings.bm25_b)
    print(
        f"settings: {args.chunks:,} chunks x {args.terms} terms, vocabulary {args.vocabulary:,}, "
        f"{args.queries} queries (none of the {args.common} commonest terms), top {args.top_k}, "
        f"bm25 k1={params.k1} b={params.b}"
    )
    index = synthetic_index(args.chunks, args.terms, args.vocabulary, params, seed=0)
    queries = queries_of(args.queries, args.vocabulary, args.common, seed=0)
    hits = SparseHits.of([index.postings], *index.query_matrix(queries))
    print(f"matching (query, chunk) pairs: {hits.scores.nnz:,} ({hits.scores.nnz / args.queries:,.0f} per query)")
    print("| search | ms per batch | peak MiB allocated |")
    print("|---|---:|---:|")
    results = {}
    for name, search in (("dense matrix (before)", dense_search), ("sparse hits (now)", sparse_search)):
        ms, peak, results[name] = measure(search, index, queries, args.top_k)
        print(f"| {name} | {ms:.0f} | {peak:.1f} |")
    (old_scores, old_rows), (new_scores, new_rows) = results.values()
    same_scores = np.array_equal(old_scores, new_scores)
    row_values = [hits.scores.data[hits.scores.indptr[q] : hits.scores.indptr[q + 1]] for q in range(len(queries))]
    untied = np.array([[np.sum(row == v) == 1 for v in s] for s, row in zip(old_scores, row_values, strict=True)])
    same_rows = np.array_equal(old_rows[untied], new_rows[untied])
    print(f"same scores: {same_scores}; same rows wherever no other chunk has the same score: {same_rows}")
    print(f"(besides: scipy's product keeps an (N,) accumulator in C++, {8 * args.chunks / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
