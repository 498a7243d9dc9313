"""Scatter-gather over 1, 2 and 4 shards against the unsharded index, on SQuAD v1.1 dev.

The unsharded Flat index of every SQuAD paragraph is built once (cached), then resharded into 2
and 4 shards without re-embedding (indexer/reshard.py), so every variant holds the same vectors.
For held-out questions, each variant answers the same searches, interleaved question by question
(the machine is shared and noisy): recall@5 of the gold paragraph, the share of questions whose
top 5 equal the unsharded top 5 (chunk ids and scores), and the per-query p50 wall time and CPU
time (the process's, all threads: the shard threads too).

    python -m bench.shards [--questions 600] [--modes dense hybrid]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import SQUAD, header, percentile
from indexer.reshard import reshard_artifact
from ragserve.types import RetrievalMode
from retriever.version import VersionRetriever
from service.application.evaluation import Question, load_squad, ranked_docs, spread_sample
from service.application.loading import (
    cached_index_path,
    configure_threads,
    ensure_index,
    make_encoder,
    open_version,
)
from service.application.squad import select_articles
from service.settings import Settings

DEPTH = 10  # chunks fetched, so that 5 distinct paragraphs remain


def variants(settings: Settings, shard_counts: list[int]) -> dict[int, VersionRetriever]:
    data = load_squad(SQUAD)
    encoder = make_encoder(settings)
    base = ensure_index(
        settings, cached_index_path(settings, "squad-flat", SQUAD), lambda: data.paragraphs, lambda: encoder
    )
    out = {1: open_version(settings, base, encoder)}
    scratch = Path(tempfile.mkdtemp(prefix="ragserve-shards-"))
    for n in (n for n in shard_counts if n > 1):
        reshard_artifact(base, scratch / f"s{n}", n, encoder)
        out[n] = open_version(settings, scratch / f"s{n}", encoder)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=600)
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--modes", nargs="+", default=["dense", "hybrid"], choices=[m.value for m in RetrievalMode])
    args = parser.parse_args()
    header("scatter-gather over shards vs the unsharded index (SQuAD v1.1 dev, held-out articles)")
    settings = Settings(index_factory="Flat")
    configure_threads(settings)
    retrievers = variants(settings, args.shards)
    data = load_squad(SQUAD)
    heldout = select_articles([q.article for q in data.questions], "heldout")
    questions = spread_sample([q for q in data.questions if q.article in heldout], args.questions)
    print(f"corpus: {retrievers[1].size} chunks; {len(questions)} held-out questions; top 5 of {DEPTH} chunks")
    print("| mode | shards | recall@5 | top 5 = unsharded | p50 ms | p50 CPU ms | p50 vs unsharded |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in (RetrievalMode(m) for m in args.modes):
        measure(retrievers, questions, mode)


def measure(retrievers: dict[int, VersionRetriever], questions: list[Question], mode: RetrievalMode) -> None:
    for r in retrievers.values():
        r.search_batch(["warm up"], DEPTH, mode)
    hits = {n: 0 for n in retrievers}
    same = {n: 0 for n in retrievers}
    wall: dict[int, list[float]] = {n: [] for n in retrievers}
    cpu: dict[int, list[float]] = {n: [] for n in retrievers}
    for q in questions:
        top: dict[int, list[tuple[str, float]]] = {}
        for n, retriever in retrievers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            result = retriever.search_batch([q.question], DEPTH, mode)[0]
            wall[n].append((time.perf_counter() - t0) * 1000)
            cpu[n].append((time.process_time() - c0) * 1000)
            hits[n] += q.gold_doc in ranked_docs(result)[:5]
            top[n] = [(p.chunk_id, round(p.score, 5)) for p in result.passages[:5]]
        for n in retrievers:
            same[n] += top[n] == top[1]
    base = percentile(wall[1], 50)
    for n in sorted(retrievers):
        p50 = percentile(wall[n], 50)
        print(
            f"| {mode.value} | {n} | {hits[n] / len(questions):.4f} | {same[n] / len(questions):.3f} | "
            f"{p50:.2f} | {statistics.median(cpu[n]):.2f} | {p50 / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
