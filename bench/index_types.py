"""Index types side by side: bytes per vector, build time, recall@10 against exact, query latency.

Every RAGSERVE_INDEX_FACTORY choice is built with the product's own code (retriever/faiss_index.py:
`train` on a `training_sample`, then `build`, `write`, `load`), on 2 FAISS threads, and searched one
query at a time (the serving pattern) with the default nprobe 16 and efSearch 128. Recall@10 is the
share of each query's true 10 nearest neighbours (exact inner product: a Flat index, searched in
batches) that an index returns. PQ indexes are measured twice: as they score, and re-ranked the way
retriever/exact.py does it (`rerank_candidates` = 100 candidates scored against the exact float32
vectors kept beside the index, 1,536 B per vector more, on disk and memory-mapped).

Corpora:

- synthetic (`--vectors N`): a seeded Gaussian mixture shaped like sentence embeddings (see
  `synthetic`), written in chunks into a memory-mapped file in a temp folder (never the repo), so
  memory stays bounded; queries are corpus points moved by noise. HNSW is built on the first
  `--hnsw-vectors` of it (its insertions run ~2,000/s on 2 cores: 2M would take ~17 min alone), and
  its recall is against exact search over that subset.
- `--squad`: the SQuAD v1.1 dev chunks, embedded once by the product's indexer (the cached Flat
  artifact bench/shards.py builds), queried with held-out articles' questions; here also the
  gold-paragraph recall@5.

    python -m bench.index_types --vectors 2000000 [--queries 1000] [--factories ...] [--nprobes 16 64]
    python -m bench.index_types --squad [--queries 600]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np

from bench.common import SQUAD, header, percentile
from retriever import faiss_index
from retriever.exact import ExactVectors

DIM = 384
K = 10
GEN_CHUNK = 100_000
FACTORIES = ["Flat", "HNSW32", "IVF{nlist},Flat", "IVF{nlist},PQ48", "OPQ48,IVF{nlist},PQ48", "IVF{nlist},PQ32"]
POINTS_PER_CLUSTER = 100  # synthetic: mean cluster size
SPREAD = (0.4, 1.0)  # synthetic: per-cluster noise scale, log-uniform (cosine to its centre 0.93 .. 0.71)
QUERY_NOISE = 0.5  # synthetic: a query's noise scale around the corpus point it is drawn from


@dataclass
class Corpus:
    name: str
    vectors: np.ndarray  # (n, dim) float32, a memmap for the synthetic corpus
    queries: np.ndarray  # (Q, dim) float32
    truth: np.ndarray = field(default_factory=lambda: np.empty((0, K), np.int64))  # (Q, K) exact top-K rows
    gold: list[int] | None = None  # SQuAD: each question's gold paragraph (number)
    doc_of: np.ndarray | None = None  # SQuAD: the paragraph number of each row


@dataclass
class Row:
    label: str
    vectors: int
    bytes_per_vector: float
    train_s: float
    add_s: float
    knob: str
    recall: float
    p50: float
    p95: float
    gold5: float | None = None


# --- the synthetic corpus -------------------------------------------------------------------------


def _noise(rng: np.random.Generator, n: int, spectrum: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """(n, dim) anisotropic Gaussian noise of expected squared norm 1: a decaying spectrum of
    variances along the axes of a fixed random rotation (embeddings fill few directions strongly)."""
    g = rng.standard_normal((n, spectrum.shape[0]), dtype=np.float32)
    out: np.ndarray = (g * spectrum) @ rotation
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def synthetic(n: int, n_queries: int, seed: int, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A corpus of `n` unit vectors in `folder`/corpus.f32 (memory-mapped) and `n_queries` queries.

    - one fixed random rotation R and spectrum s_k ∝ (k+1)^-0.7 (k = 0..383, Σ s_k² = 1): all
      noise is (g ⊙ s) R with g ~ N(0, I), so most variance lies in a few dozen directions;
    - a shared mean direction m (weight 0.4), as sentence embeddings share one (random pairs have a
      positive mean cosine);
    - n / 100 clusters with centres unit(0.4 m + noise), sizes Zipf-like (p_j ∝ (j+1)^-0.7: the
      largest ~1.5% of the corpus, the smallest a few dozen points), spread σ_j log-uniform in
      [0.4, 1.0]; a point of cluster j is unit(c_j + σ_j · noise);
    - a query is unit(x_i + 0.5 · noise) for a uniformly drawn corpus point x_i.
    Generated in chunks of 100k rows, so memory stays at a few hundred MB whatever n is."""
    rng = np.random.default_rng(seed)
    spectrum = (np.arange(1, DIM + 1, dtype=np.float32) ** -0.7).astype(np.float32)
    spectrum /= np.sqrt((spectrum**2).sum())
    rotation = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32)  # (dim, dim) orthogonal
    mean = _unit(rng.standard_normal((1, DIM)))
    clusters = max(1, n // POINTS_PER_CLUSTER)
    centres = _unit(0.4 * mean + _noise(rng, clusters, spectrum, rotation))  # (C, dim)
    weights = np.arange(1, clusters + 1, dtype=np.float64) ** -0.7
    weights = rng.permutation(weights / weights.sum())
    spread = np.exp(rng.uniform(np.log(SPREAD[0]), np.log(SPREAD[1]), clusters)).astype(np.float32)  # (C,)
    vectors = np.memmap(folder / "corpus.f32", dtype=np.float32, mode="w+", shape=(n, DIM))
    for start in range(0, n, GEN_CHUNK):
        b = min(GEN_CHUNK, n - start)
        labels = rng.choice(clusters, size=b, p=weights)
        vectors[start : start + b] = _unit(centres[labels] + spread[labels, None] * _noise(rng, b, spectrum, rotation))
    vectors.flush()
    picks = np.sort(rng.choice(n, size=n_queries, replace=False))
    queries = _unit(np.asarray(vectors[picks]) + QUERY_NOISE * _noise(rng, n_queries, spectrum, rotation))
    return vectors, queries


# --- the SQuAD corpus -----------------------------------------------------------------------------


def squad_corpus(n_questions: int) -> Corpus:
    """The SQuAD v1.1 dev chunk vectors of the product's Flat artifact (built and cached as
    bench/shards.py does) and `n_questions` held-out questions embedded by the product's encoder."""
    from service.application.evaluation import load_squad, spread_sample
    from service.application.loading import (
        cached_index_path,
        configure_threads,
        ensure_index,
        make_encoder,
        open_version,
    )
    from service.application.squad import select_articles
    from service.settings import Settings

    settings = Settings(index_factory="Flat")
    configure_threads(settings)
    data = load_squad(SQUAD)
    encoder = make_encoder(settings)
    path = ensure_index(
        settings, cached_index_path(settings, "squad-flat", SQUAD), lambda: data.paragraphs, lambda: encoder
    )
    version = open_version(settings, path, encoder)
    index = faiss_index.read_cpu(path / "index.faiss")
    vectors = np.ascontiguousarray(index.reconstruct_n(0, index.ntotal), np.float32)  # (n, dim)
    records = version.records(list(range(version.size)))
    paragraph = {d.id: i for i, d in enumerate(data.paragraphs)}
    doc_of = np.array([paragraph[records[r].doc_id] for r in range(version.size)], np.int64)
    heldout = select_articles([q.article for q in data.questions], "heldout")
    questions = spread_sample([q for q in data.questions if q.article in heldout], n_questions)
    queries = encoder.encode_queries([q.question for q in questions])
    gold = [paragraph[q.gold_doc] for q in questions]
    return Corpus("SQuAD v1.1 dev chunks", vectors, np.asarray(queries, np.float32), gold=gold, doc_of=doc_of)


# --- measuring ------------------------------------------------------------------------------------


def exact_top(vectors: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact top-K rows of every query (batched search of a Flat index) and its add time."""
    t0 = time.perf_counter()
    flat = faiss_index.build(vectors, "Flat")
    add_s = time.perf_counter() - t0
    _, rows = flat.search(queries, K)  # (Q, K)
    return rows, add_s


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K].tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def gold_recall5(found: np.ndarray, corpus: Corpus) -> float | None:
    """Share of questions whose gold paragraph is among the first 5 distinct paragraphs found."""
    if corpus.gold is None or corpus.doc_of is None:
        return None
    hits = 0
    for rows, gold in zip(found, corpus.gold, strict=True):
        paragraphs = list(dict.fromkeys(corpus.doc_of[rows[rows >= 0]].tolist()))  # in rank order
        hits += gold in paragraphs[:5]
    return hits / len(corpus.gold)


def timed(search: object, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p95 ms of `search` (a callable on one (1, dim) query) over `queries`, one at a time."""
    assert callable(search)
    search(queries[:1])  # warm up
    ms = []
    for q in queries:
        t0 = time.perf_counter()
        search(q[None, :])
        ms.append((time.perf_counter() - t0) * 1000)
    return percentile(ms, 50), percentile(ms, 95)


def measure(
    factory: str, corpus: Corpus, vectors: np.ndarray, truth: np.ndarray, folder: Path, args: argparse.Namespace
) -> list[Row]:
    """Build `factory` over `vectors` (the corpus or its HNSW subset, `truth` its exact answers),
    write it, load it as a server does, and search the corpus's queries with every knob."""
    n = vectors.shape[0]
    t0 = time.perf_counter()
    trained = faiss_index.train(faiss_index.training_sample(vectors, args.train), factory)
    t1 = time.perf_counter()
    built = faiss_index.build(vectors, factory, trained)
    t2 = time.perf_counter()
    path = folder / "index.faiss"
    faiss_index.write(built, path)
    del built, trained
    label = factory if n == corpus.vectors.shape[0] else f"{factory} (first {n:,})"
    template = Row(label, n, path.stat().st_size / n, t1 - t0, t2 - t1, "-", 0.0, 0.0, 0.0)
    index = faiss_index.load(path, args.ef_search, args.nprobes[0], direct_map=False)
    rows = search_rows(index, template, corpus, vectors, truth, args)
    path.unlink()
    return rows


def search_rows(
    index: faiss.Index, template: Row, corpus: Corpus, vectors: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> list[Row]:
    """One row per knob (nprobe) of a loaded index, and one more re-ranked by exact vectors where
    the index is compressed."""
    ivf = faiss.try_extract_index_ivf(index)
    exact = ExactVectors(vectors) if faiss_index.is_compressed(index) else None
    timed_queries = corpus.queries[: args.timed_flat if template.label == "Flat" else args.timed]
    depth = args.rerank_candidates

    def plain(q: np.ndarray) -> np.ndarray:
        return np.asarray(index.search(q, K)[1])

    def reranked(q: np.ndarray) -> np.ndarray:
        assert exact is not None
        _, candidates = index.search(q, depth)  # (Q, depth)
        return exact.rerank(q, candidates, K)[1]

    rows: list[Row] = []
    for nprobe in args.nprobes if ivf is not None else [None]:
        knob = f"efSearch {args.ef_search}" if "HNSW" in template.label else "-"
        if ivf is not None:
            ivf.nprobe = nprobe
            knob = f"nprobe {nprobe}"
        for how in (plain, reranked) if exact is not None else (plain,):
            found = how(corpus.queries)  # (Q, K)
            p50, p95 = timed(how, timed_queries)
            label = template.label if how is plain else f"{template.label} + exact re-rank of {depth}"
            extra = 0 if how is plain else 4 * DIM  # the kept float32 vectors
            rows.append(
                replace(
                    template,
                    label=label,
                    bytes_per_vector=template.bytes_per_vector + extra,
                    knob=knob,
                    recall=recall(found, truth),
                    p50=p50,
                    p95=p95,
                    gold5=gold_recall5(found, corpus),
                )
            )
    return rows


def print_table(rows: list[Row], squad: bool) -> None:
    base = next(r for r in rows if r.label == "Flat")
    size = base.bytes_per_vector
    gold = " gold recall@5 |" if squad else ""
    print(
        "| index | vectors | B/vector | vs Flat | train s | add s | build s | knob | recall@10 |"
        f"{gold} p50 ms | p95 ms | p50 vs Flat |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|" + ("---:|" if squad else "") + "---:|---:|---:|")
    for r in rows:
        g = f" {r.gold5:.4f} |" if squad and r.gold5 is not None else ""
        print(
            f"| {r.label} | {r.vectors:,} | {r.bytes_per_vector:,.1f} | {r.bytes_per_vector / size:.3f} |"
            f" {r.train_s:.1f} | {r.add_s:.1f} | {r.train_s + r.add_s:.1f} | {r.knob} | {r.recall:.4f} |{g}"
            f" {r.p50:.3f} | {r.p95:.3f} | {r.p50 / base.p50:.3f}x |"
        )


def shape(vectors: np.ndarray, corpus: Corpus, seed: int) -> str:
    """Cosine statistics that say how embedding-like a corpus is: random pairs, and each query's
    nearest and 10th nearest corpus vector."""
    rng = np.random.default_rng(seed + 1)
    n = vectors.shape[0]
    a, b = (np.asarray(vectors[np.sort(rng.integers(0, n, 2_000))]) for _ in range(2))
    pairs = float(np.mean(np.sum(a * b, axis=1)))
    first = float(np.mean(np.sum(np.asarray(vectors[corpus.truth[:, 0]]) * corpus.queries, axis=1)))
    tenth = float(np.mean(np.sum(np.asarray(vectors[corpus.truth[:, K - 1]]) * corpus.queries, axis=1)))
    return f"mean cosine: random pair {pairs:.3f}; query to its 1st neighbour {first:.3f}, to its 10th {tenth:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=2_000_000, help="synthetic corpus size")
    parser.add_argument("--squad", action="store_true", help="the SQuAD v1.1 dev chunks instead")
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--timed", type=int, default=500, help="queries timed one at a time")
    parser.add_argument("--timed-flat", type=int, default=50, help="for Flat (a full scan per query)")
    parser.add_argument("--factories", nargs="+", default=FACTORIES, help="{nlist} is replaced")
    parser.add_argument("--nlist", type=int, help="default: 4096, or the largest power of 2 <= n / 39")
    parser.add_argument("--train", type=int, default=faiss_index.TRAIN_SAMPLE, help="training sample")
    parser.add_argument("--hnsw-vectors", type=int, default=500_000, help="HNSW on the first N (0: all)")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--rerank-candidates", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="ragserve-index-types-"))
    try:
        run(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace, folder: Path) -> None:
    t0 = time.perf_counter()
    if args.squad:
        header("index types on SQuAD v1.1 dev chunks (held-out questions)")
        corpus = squad_corpus(args.queries)
    else:
        header(f"index types on {args.vectors:,} synthetic {DIM}-dim vectors")
        vectors, queries = synthetic(args.vectors, args.queries, args.seed, folder)
        corpus = Corpus(f"synthetic (seed {args.seed})", vectors, queries)
    n = corpus.vectors.shape[0]
    nlist = args.nlist or (4096 if not args.squad else 1 << int(np.log2(max(1, n // 39))))
    made = time.perf_counter() - t0
    print(f"corpus: {corpus.name}, {n:,} vectors; {len(corpus.queries):,} queries; made in {made:.0f} s")
    corpus.truth, flat_add = exact_top(corpus.vectors, corpus.queries)
    print(shape(corpus.vectors, corpus, args.seed))
    print(
        f"FAISS threads {args.threads}; nlist {nlist}; training sample {min(args.train, n):,}; "
        f"latency: single queries ({args.timed} timed, {args.timed_flat} for Flat)"
    )
    rows: list[Row] = []
    subset_truth: np.ndarray | None = None
    for template in args.factories:
        factory = template.format(nlist=nlist)
        vectors, truth = corpus.vectors, corpus.truth
        if "HNSW" in factory and 0 < args.hnsw_vectors < n:
            vectors = corpus.vectors[: args.hnsw_vectors]
            if subset_truth is None:
                subset_truth = exact_top(vectors, corpus.queries)[0]
            truth = subset_truth
        started = time.perf_counter()
        rows.extend(measure(factory, corpus, vectors, truth, folder, args))
        print(f"- {factory}: measured in {time.perf_counter() - started:.0f} s", flush=True)
    print()
    print_table(rows, args.squad)
    print(f"\nFlat recall is 1 by construction (it is the exact reference; its batched add took {flat_add:.1f} s).")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
