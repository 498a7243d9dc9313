"""/v1/retrieve under concurrent load over a large index: a real server on loopback, N clients for a
bounded time, per retrieval mode; p50/p99 latency and requests per second, with one client as the
baseline measured in the same run.

    python -m bench.query_load [--copies 40] [--clients 8] [--seconds 20]

Run twice, with query batching off (RAGSERVE_QUERY_BATCH_MAX=1) and on (the default), each with a
fresh server, so the two are compared in the same run.

The corpus: the 2,539 chunks of the SQuAD v1.1 dev index, repeated `--copies` times (40 copies =
101,560 chunks). Copy i > 0 of a chunk drops a seeded random 10% of its words (so BM25 postings
grow with the corpus and differ between copies) and gets the original's vector plus Gaussian noise
(sigma 0.02 per dimension, then L2-normalised; cosine to the original ~0.9), written through the
indexer's artifact writer (retriever/writer.py) — the same FAISS (HNSW32 above 50,000 chunks), BM25 and docstore a
build would write, without embedding 100k texts (about 30 min on this CPU). The artifact is cached
under <home>/bench/ and reused. Queries are SQuAD questions, top 5.
"""

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from bench.common import SQUAD, header, percentile
from bench.load import phase, server
from indexer.build import artifact_writer
from ragserve.atomic import clean_stale, staged_directory
from retriever import faiss_index
from retriever.artifact import DOCSTORE_FILE, INDEX_FILE
from retriever.docstore import Docstore, StoredChunk
from retriever.encoder import Encoder
from retriever.writer import ModelInfo
from service.application.evaluation import load_squad, spread_sample
from service.application.loading import build_config, cached_index_path, ensure_index, make_encoder
from service.settings import Settings

DROP = 0.1
SIGMA = 0.02


def perturbed(chunk: StoredChunk, copy: int, rng: random.Random) -> StoredChunk:
    words = chunk.text.split()
    kept = [w for w in words if rng.random() >= DROP] or words
    text = " ".join(kept)
    doc_id = f"{chunk.doc_id}~{copy}"
    ordinal = chunk.chunk_id.rsplit("#", 1)[1]
    return StoredChunk(chunk.row, f"{doc_id}#{ordinal}", doc_id, chunk.title, text, 0, len(text), {})


def scaled_index(settings: Settings, encoder: Encoder, copies: int) -> Path:
    """The SQuAD index repeated `copies` times with perturbed texts and vectors (cached)."""
    data = load_squad(SQUAD)
    base = cached_index_path(settings, "squad", SQUAD)
    ensure_index(settings, base, lambda: data.paragraphs, lambda: encoder, progress=True)
    out = settings.cache_dir / "bench" / f"squad-x{copies}-{base.name}"
    if out.exists():
        return out
    chunks = [c for batch in Docstore(base / DOCSTORE_FILE).scan() for c in batch]
    index = faiss_index.read_cpu(base / INDEX_FILE)
    vectors = index.reconstruct_n(0, index.ntotal)  # (n, dim)
    rng, noise = random.Random(0), np.random.default_rng(0)
    clean_stale(out)
    started = time.perf_counter()
    with staged_directory(out) as staging:
        writer = artifact_writer(staging, ModelInfo.of(encoder), build_config(settings))
        writer.add(chunks, vectors)
        for copy in range(1, copies):
            moved = vectors + noise.normal(0, SIGMA, vectors.shape).astype(np.float32)  # (n, dim)
            moved /= np.linalg.norm(moved, axis=1, keepdims=True)
            writer.add([perturbed(c, copy, rng) for c in chunks], moved)
        writer.seal({"documents": len(chunks) * copies}, started)
    print(f"built {out} ({len(chunks) * copies} chunks) in {time.perf_counter() - started:.0f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=40)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--modes", default="dense,hybrid")
    args = ap.parse_args()
    header(f"/v1/retrieve under load: {args.clients} clients vs 1, {args.seconds:.0f} s each, large index")
    settings = Settings()
    index = scaled_index(settings, make_encoder(settings), args.copies)
    queries = [q.question for q in spread_sample(load_squad(SQUAD).questions, 1000)]
    chunks = json.loads((index / "manifest.json").read_text())["counts"]["chunks"]
    print(f"index: {chunks} chunks; torch threads {settings.torch_threads}; top 5; SQuAD questions")
    print("| query batching | retrieval | clients | requests/s | p50 ms | p99 ms | non-200 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for batching, extra in (("off", {"RAGSERVE_QUERY_BATCH_MAX": "1"}), ("on (default)", {})):
        with server(index, extra) as port:
            for mode in args.modes.split(","):
                bodies = [{"query": q, "top_k": 5, "retrieval": mode} for q in queries]
                phase(port, "/v1/retrieve", bodies, 1, 2)  # warm-up
                for clients in (1, args.clients):
                    times, errors = phase(port, "/v1/retrieve", bodies, clients, args.seconds)
                    rate, p50, p99 = len(times) / args.seconds, percentile(times, 50), percentile(times, 99)
                    row = f"| {batching} | {mode} | {clients} | {rate:.0f} | {p50:.1f} | {p99:.1f} | {errors} |"
                    print(row, flush=True)


if __name__ == "__main__":
    main()
