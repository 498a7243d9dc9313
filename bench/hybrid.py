"""Retrieval quality on open-domain SQuAD v1.1 dev, by article split: dense, BM25, plain reciprocal
rank fusion (k = 60, the baseline) and ragserve's hybrid fusion; recall of the gold paragraph at
1/5/20 and search time per query. The whole 2,067-paragraph corpus is searched for every question.

    python -m bench.hybrid [--limit N]          # the table (train and held-out articles)
    python -m bench.hybrid --fit                # refit BM25 k1/b and the fusion weights on the train articles

--fit searches a small k1 x b grid; for each it fits the fusion weights by logistic regression
(Newton steps) on the candidates of the training questions (gold paragraph = positive) and keeps
the setting with the best recall@1 + @5 + @20 on the training articles. Held-out articles are
never looked at while fitting.
"""

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np

from bench.common import SQUAD, header
from ragserve.types import RetrievalMode, SearchResult
from retriever.hybrid import QueryTerms, lexical_features, union_rows
from retriever.postings import SparseHits
from retriever.sparse import BM25Params, SparseIndex, indexed_text
from retriever.version import VersionRetriever
from service.application.evaluation import Question, load_squad, ranked_docs, spread_sample
from service.application.squad import select_articles
from service.settings import Settings

RECALL_AT = (1, 5, 20)
DEPTH = 100  # chunks per list, so that 20 distinct paragraphs remain
RRF_K = 60
GRID = [(k1, b) for k1 in (0.3, 0.6, 0.9, 1.2) for b in (0.5, 0.75)]


def recall(ranked: list[list[str]], questions: Sequence[Question]) -> dict[int, float]:
    return {
        k: sum(q.gold_doc in docs[:k] for q, docs in zip(questions, ranked, strict=True)) / len(questions)
        for k in RECALL_AT
    }


def rrf(lists: Sequence[SearchResult]) -> list[str]:
    """Reciprocal rank fusion of chunk rankings, then distinct documents."""
    score: dict[str, float] = {}
    doc_of: dict[str, str] = {}
    for result in lists:
        for rank, p in enumerate(result.passages):
            score[p.chunk_id] = score.get(p.chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            doc_of[p.chunk_id] = p.doc_id
    ordered = sorted(score, key=lambda c: -score[c])
    return list(dict.fromkeys(doc_of[c] for c in ordered))


def timed_search(
    retriever: VersionRetriever, questions: Sequence[Question], mode: RetrievalMode
) -> tuple[list[SearchResult], float]:
    """Results (DEPTH chunks each) and the p50 milliseconds of one query searched alone."""
    texts = [q.question for q in questions]
    results = [
        r for start in range(0, len(texts), 64) for r in retriever.search_batch(texts[start : start + 64], DEPTH, mode)
    ]
    lone = []
    for text in texts[:: max(1, len(texts) // 200)]:  # ~200 single-query timings
        t0 = time.perf_counter()
        retriever.search(text, 20, mode)
        lone.append((time.perf_counter() - t0) * 1000)
    return results, statistics.median(lone)


def table(retriever: VersionRetriever, splits: dict[str, list[Question]]) -> None:
    print("| articles | retrieval | recall@1 | recall@5 | recall@20 | vs RRF @1 / @5 / @20 | p50 ms per query |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for split, questions in splits.items():
        found = {mode: timed_search(retriever, questions, mode) for mode in RetrievalMode}
        rows: dict[str, tuple[dict[int, float], float]] = {
            mode.value: (recall([ranked_docs(r) for r in results], questions), ms)
            for mode, (results, ms) in found.items()
        }
        fused = [rrf(pair) for pair in zip(found[RetrievalMode.DENSE][0], found[RetrievalMode.SPARSE][0], strict=True)]
        rows["rrf (baseline)"] = (
            recall(fused, questions),
            found[RetrievalMode.DENSE][1] + found[RetrievalMode.SPARSE][1],
        )
        base = rows["rrf (baseline)"][0]
        for name in ("dense", "sparse", "rrf (baseline)", "hybrid"):
            r, ms = rows[name]
            ratios = " / ".join(f"{r[k] / base[k]:.3f}" for k in RECALL_AT)
            recalls = " | ".join(f"{r[k]:.4f}" for k in RECALL_AT)
            print(f"| {split} ({len(questions)} q) | {name} | {recalls} | {ratios} | {ms:.1f} |")


def candidate_features(
    retriever: VersionRetriever, sparse: SparseIndex, questions: Sequence[Question], vectors: np.ndarray, depth: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per question: candidate rows, features (n, 4) = dense, bm25, phrase, title, and labels (n,)."""
    bm25 = SparseHits.of([sparse.postings], *sparse.query_matrix([q.question for q in questions]))
    _, dense_rows = retriever.index.search(vectors, depth)  # (Q, depth)
    _, sparse_rows = bm25.top(depth)  # (Q, depth); -1 where no term matches, as in search
    records = {c.row: c for batch in retriever.docstore.scan() for c in batch}
    rows_out, feats, labels = [], [], []
    for q, question in enumerate(questions):
        rows = union_rows(dense_rows[q], sparse_rows[q])  # (n,)
        stored = retriever.index.reconstruct_batch(rows)  # (n, dim)
        terms = QueryTerms.of(question.question)
        lexical = np.array([lexical_features(terms, records[int(r)].title, records[int(r)].text) for r in rows])
        feats.append(np.column_stack([stored @ vectors[q], bm25.at(q, rows), lexical]))  # (n, 4)
        labels.append(np.array([records[int(r)].doc_id == question.gold_doc for r in rows], np.float64))
        rows_out.append(rows)
    return rows_out, feats, labels


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 25) -> np.ndarray:
    """Weights (f + 1,) of p(gold | features) = sigmoid(x @ w[:-1] + w[-1]), by Newton's method."""
    x = np.column_stack([x, np.ones(len(x))])  # (n, f + 1)
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def ranked_by(
    weights: np.ndarray, rows: list[np.ndarray], feats: list[np.ndarray], doc_of: dict[int, str]
) -> list[list[str]]:
    return [
        list(dict.fromkeys(doc_of[int(r)] for r in rs[np.argsort(-(f @ weights), kind="stable")]))
        for rs, f in zip(rows, feats, strict=True)
    ]


def fit(retriever: VersionRetriever, train: list[Question], depth: int) -> None:
    vectors = retriever.encoder.encode_queries([q.question for q in train])  # (Q, dim)
    doc_of = {c.row: c.doc_id for batch in retriever.docstore.scan() for c in batch}
    texts = [indexed_text(c.title, c.text) for batch in retriever.docstore.scan() for c in batch]
    print("| k1 | b | w_sparse | w_phrase | w_title | train recall@1 | @5 | @20 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    best: tuple[float, str] = (-1.0, "")
    for k1, b in GRID:
        sparse = SparseIndex.from_texts(texts, BM25Params(k1, b))
        rows, feats, labels = candidate_features(retriever, sparse, train, vectors, depth)
        w = fit_logistic(np.vstack(feats), np.concatenate(labels))
        weights = w[:4] / w[0]  # scaled so the dense (cosine) weight is 1
        r = recall(ranked_by(weights, rows, feats, doc_of), train)
        fitted = " | ".join(f"{x:.2f}" for x in weights[1:])
        line = f"| {k1} | {b} | {fitted} | " + " | ".join(f"{r[k]:.4f}" for k in RECALL_AT) + " |"
        print(line, flush=True)
        best = max(best, (sum(r.values()), line))
    print(f"best on the training articles: {best[1]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, help="questions per split, spread evenly (default: all)")
    ap.add_argument("--fit", action="store_true", help="refit k1, b and the fusion weights on the train articles")
    args = ap.parse_args()
    header("retrieval on SQuAD-open dev by article split: dense, BM25, RRF baseline, hybrid")
    from service.application.loading import (
        cached_index_path,
        configure_threads,
        ensure_index,
        make_encoder,
        open_version,
    )

    settings = Settings()
    configure_threads(settings)
    data = load_squad(SQUAD)
    encoder = make_encoder(settings)
    index_path = cached_index_path(settings, "squad", SQUAD)
    ensure_index(settings, index_path, lambda: data.paragraphs, lambda: encoder, progress=True)
    retriever = open_version(settings, index_path, encoder)
    splits = {}
    for split in ("train", "heldout"):
        chosen = select_articles((q.article for q in data.questions), split)
        splits[split] = spread_sample([q for q in data.questions if q.article in chosen], args.limit)
    print(
        f"{len(data.paragraphs)} paragraphs, {retriever.manifest.counts['chunks']} chunks; bm25 k1 {settings.bm25_k1} "
        f"b {settings.bm25_b}; fusion {retriever.fusion}; torch threads {settings.torch_threads}"
    )
    if args.fit:
        fit(retriever, splits["train"], retriever.fusion.candidates)
    else:
        table(retriever, splits)


if __name__ == "__main__":
    main()
