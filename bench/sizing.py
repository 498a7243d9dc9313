"""A sizing table for a corpus of N chunks (default one billion), computed from measured figures.

Per-chunk costs are measured on a real artifact (default: the SQuAD v1.1 dev Flat index that
`python -m bench.shards` builds, or any `--artifact`): docstore bytes on disk, BM25 postings in memory (non-zeros ×
(4-byte weight + 4-byte term id) + the row pointers, as retriever/postings.py holds them), and the
FAISS index's bytes per vector for each index type, as `python -m bench.index_types` measured them
on 2M synthetic vectors (`INDEX_BYTES`, the figures of docs/scaling.md). Build
time is chunks / (chunks per second of one embedding worker × workers): the CPU rate is measured
(`python -m bench.index_throughput`), the GPU rate is `--gpu-chunks-per-s` (what
`python -m bench.gpu_check` prints on a GPU machine; no GPU was available here, so the default
is an assumption and is printed as one). Every number is printed with its arithmetic.

    python -m bench.sizing [--artifact DIR] [--chunks 1e9] [--ram-gib 256] [--gpus 8 32 128]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from bench.common import SQUAD, header
from retriever.artifact import DOCSTORE_FILE, read_manifest, shard_folders
from retriever.sparse import TermCounts
from service.application.loading import cached_index_path
from service.settings import Settings

GIB = 1024**3
# Bytes per vector (d = 384) of the index types measured by bench/index_types.py (docs/scaling.md).
# Measured there on 2M vectors (2026-12-04): the IVF figures include the 4096-list quantizer (3.1 B per
# vector at 2M, less at 1B with more lists), so they are slightly high for a billion.
INDEX_BYTES = {
    "Flat": 1_536.0,
    "HNSW32": 1_808.1,
    "IVF,PQ48 (+ exact vectors on disk)": 59.4,
    "IVF,PQ32 (+ exact vectors on disk)": 43.4,
}


def per_chunk(artifact: Path) -> dict[str, float]:
    """Measured bytes per chunk of an artifact: docstore on disk, BM25 postings in memory."""
    manifest = read_manifest(artifact)
    chunks = manifest.counts["chunks"]
    docstore = sum(int(info["bytes"]) for name, info in manifest.files.items() if name.endswith(DOCSTORE_FILE))
    nnz = rows = 0
    for folder in shard_folders(manifest):
        counts = TermCounts.load(artifact / folder)
        nnz += counts.tf.nnz
        rows += counts.tf.shape[0]
    postings = nnz * (4 + 4) + (rows + 1) * 8  # float32 weights + int32 ids + int64 pointers
    return {"chunks": chunks, "docstore": docstore / chunks, "bm25": postings / chunks, "nnz": nnz / chunks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="default: the SQuAD Flat index bench.shards builds")
    parser.add_argument("--chunks", type=float, default=1e9)
    parser.add_argument("--ram-gib", type=float, default=256, help="memory of one serving machine")
    parser.add_argument("--headroom", type=float, default=0.6, help="share of it the index may take")
    parser.add_argument("--cpu-chunks-per-s", type=float, default=304.6, help="measured: bench.index_throughput")
    parser.add_argument("--gpu-chunks-per-s", type=float, default=10_000, help="per GPU: bench.gpu_check")
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--replica-qps", type=float, default=196, help="measured: bench.query_load (hybrid)")
    parser.add_argument("--target-qps", type=float, default=1_000)
    args = parser.parse_args()
    header(f"sizing for {args.chunks:,.0f} chunks")
    artifact = args.artifact or cached_index_path(Settings(index_factory="Flat"), "squad-flat", SQUAD)
    if not artifact.is_dir():
        raise SystemExit(
            f"{artifact}: no artifact; run `python -m bench.shards` first (it builds it) or pass --artifact"
        )
    measured = per_chunk(artifact)
    n = args.chunks
    print(f"measured on {artifact} ({measured['chunks']:,} chunks): docstore {measured['docstore']:.0f} B/chunk on")
    print(f"disk; BM25 postings {measured['bm25']:.0f} B/chunk in memory ({measured['nnz']:.1f} terms per chunk x 8 B)")
    budget = args.ram_gib * args.headroom * GIB
    print(f"one machine: {args.ram_gib:.0f} GiB x {args.headroom} headroom = {budget / GIB:.0f} GiB for index + BM25\n")
    print("| index type | B/vector | index GiB | + BM25 GiB | shards (= machines per copy) | docstore GiB (disk) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, per_vector in INDEX_BYTES.items():
        index, bm25 = n * per_vector, n * measured["bm25"]
        shards = math.ceil((index + bm25) / budget)
        print(
            f"| {name} | {per_vector:,.0f} | {index / GIB:,.0f} | {bm25 / GIB:,.0f} | "
            f"ceil(({index / GIB:,.0f} + {bm25 / GIB:,.0f}) / {budget / GIB:.0f}) = {shards} | "
            f"{n * measured['docstore'] / GIB:,.0f} |"
        )
    replicas = math.ceil(args.target_qps / args.replica_qps)
    print(f"\nreplicas of each shard for {args.target_qps:,.0f} queries/s at {args.replica_qps:.0f} per replica")
    sums = f"ceil({args.target_qps:,.0f} / {args.replica_qps:.0f}) = {replicas}"
    print(f"(a scatter-gather query costs every shard one search): {sums}")
    cpu_hours = n / args.cpu_chunks_per_s / 3600
    rate = f"{args.cpu_chunks_per_s} chunks/s (measured, one 2-core CPU worker)"
    print(f"\nbuild, embedding bound: {n:,.0f} chunks / {rate}")
    print(f"= {cpu_hours:,.0f} worker-hours")
    print(
        f"on GPUs at {args.gpu_chunks_per_s:,.0f} chunks/s each (ASSUMED: no GPU here; pass bench.gpu_check's figure):"
    )
    for gpus in args.gpus:
        hours = n / (args.gpu_chunks_per_s * gpus) / 3600
        print(f"- {gpus} GPUs: {n:,.0f} / ({args.gpu_chunks_per_s:,.0f} x {gpus}) / 3600 = {hours:,.1f} h")


if __name__ == "__main__":
    main()
