"""GPU against CPU on SQuAD v1.1 dev: embedding rate and agreement, FAISS build and search agreement.

One command for the moment a GPU machine is at hand (a few minutes on one GPU; most of it is the
CPU embedding pass):

    python -m bench.gpu_check [--questions 300] [--chunks N] [--cpu-only-dry-run]

1. Chunks every SQuAD v1.1 dev paragraph the product's way (indexer/chunking.py, 200/40 tokens)
   and embeds them with Encoder(device='cpu') and Encoder(device='cuda'), both fp32, and on CUDA
   also bf16 and fp16: chunks/s of each, and the mean cosine between the CPU and CUDA fp32 vectors.
2. Gold-paragraph recall@5 of held-out questions over a Flat index of each side's vectors.
3. For Flat, IVF64,Flat and IVF64,PQ48 over the CPU vectors: built on the CPU, built on the GPU
   (GpuOptions(build=True)), and that one searched on the GPU (GpuOptions(search=True), and with
   shard=True), through faiss_index.build / write / load as the product does: recall@5 and the
   share of questions whose top 5 chunks equal the CPU index's.

PASS when every recall is within 0.005 of its CPU reference and Flat / IVF-Flat really ran on the
GPU; then exit 0, on FAIL exit 1. Without a GPU (neither torch nor faiss sees one) it prints
"no GPU: nothing to check" and exits 0, or 3 with --require-gpu. Where only one of them sees a GPU
(e.g. faiss-cpu with CUDA torch), the other part is skipped and said so. `--cpu-only-dry-run`
runs the whole comparison with the CPU on both sides on a subset (the logic, not the hardware).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from bench.common import SQUAD, header
from indexer.chunking import ChunkingConfig, chunk_document
from retriever import faiss_index, gpu
from retriever.encoder import Encoder
from retriever.gpu import CPU_ONLY, GpuOptions
from service.application.evaluation import load_squad, spread_sample
from service.application.squad import select_articles

MODEL = "all-MiniLM-L6-v2"
TOLERANCE = 0.005
DEPTH = 10  # chunks searched, so that 5 distinct paragraphs remain
NO_GPU_EXIT = 3


@dataclass
class Check:
    name: str
    side: str
    recall5: float
    reference: float
    same_top5: float | None
    placed: str  # where it ran
    ok: bool


@dataclass
class Squad:
    token_ids: list[list[int]]
    doc_of: np.ndarray  # (chunks,) paragraph number of each chunk
    questions: list[str]
    gold: np.ndarray  # (questions,) paragraph number of each question


def squad(encoder: Encoder, n_chunks: int | None, n_questions: int) -> Squad:
    """The chunks of SQuAD v1.1 dev (the first `n_chunks`) and held-out questions on them."""
    data = load_squad(SQUAD)
    config = ChunkingConfig(200, 40)
    token_ids: list[list[int]] = []
    doc_of: list[int] = []
    tokens = encoder.tokenize([d.text for d in data.paragraphs])
    for p, (doc, toks) in enumerate(zip(data.paragraphs, tokens, strict=True)):
        for chunk in chunk_document(doc, toks, config):
            token_ids.append(chunk.token_ids)
            doc_of.append(p)
    if n_chunks is not None:
        token_ids, doc_of = token_ids[:n_chunks], doc_of[:n_chunks]
    paragraph = {d.id: i for i, d in enumerate(data.paragraphs)}
    kept = set(doc_of)
    heldout = select_articles([q.article for q in data.questions], "heldout")
    pool = [q for q in data.questions if q.article in heldout and paragraph[q.gold_doc] in kept]
    chosen = spread_sample(pool, n_questions)
    gold = np.array([paragraph[q.gold_doc] for q in chosen], np.int64)
    return Squad(token_ids, np.array(doc_of, np.int64), [q.question for q in chosen], gold)


def embed(encoder: Encoder, token_ids: list[list[int]]) -> tuple[np.ndarray, float]:
    """(n, dim) vectors and chunks/s (after a warm-up batch)."""
    encoder.encode_ids(token_ids[:64])
    if encoder.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    vectors = encoder.encode_ids(token_ids)
    return vectors, len(token_ids) / (time.perf_counter() - t0)


def found_paragraphs(rows: np.ndarray, doc_of: np.ndarray) -> list[list[int]]:
    """The first 5 distinct paragraphs of each query's ranked chunk rows (Q, DEPTH)."""
    return [list(dict.fromkeys(doc_of[r[r >= 0]].tolist()))[:5] for r in rows]


def recall5(rows: np.ndarray, data: Squad) -> float:
    paragraphs = found_paragraphs(rows, data.doc_of)
    return float(np.mean([g in p for g, p in zip(data.gold.tolist(), paragraphs, strict=True)]))


def same_top5(rows: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean([set(a[:5].tolist()) == set(b[:5].tolist()) for a, b in zip(rows, reference, strict=True)]))


def encoder_checks(data: Squad, dry_run: bool, rates: dict[str, float]) -> tuple[list[Check], np.ndarray, np.ndarray]:
    """CPU vs CUDA (CPU again in a dry run) fp32 embeddings; the CPU vectors and queries for the FAISS part."""
    cpu = Encoder(MODEL, "fp32", "cpu")
    cpu_vectors, rates["cpu fp32"] = embed(cpu, data.token_ids)
    cpu_queries = cpu.encode_queries(data.questions)
    device = "cpu" if dry_run else "cuda"
    other = Encoder(MODEL, "fp32", device)
    other_vectors, rates[f"{device} fp32 (other side)" if dry_run else "cuda fp32"] = embed(other, data.token_ids)
    other_queries = other.encode_queries(data.questions)
    if not dry_run:
        for precision in ("bf16", "fp16"):
            rates[f"cuda {precision}"] = embed(Encoder(MODEL, precision, "cuda"), data.token_ids)[1]
    cosine = float(np.mean(np.sum(cpu_vectors * other_vectors, axis=1)))
    print(f"mean cosine of the CPU and {device} fp32 vectors of each chunk: {cosine:.6f}")
    reference = faiss_index.build(cpu_vectors, "Flat").search(cpu_queries, DEPTH)[1]
    rows = faiss_index.build(other_vectors, "Flat").search(other_queries, DEPTH)[1]
    ref, got = recall5(reference, data), recall5(rows, data)
    check = Check(
        "encoder fp32, Flat", device, got, ref, same_top5(rows, reference), device, abs(got - ref) <= TOLERANCE
    )
    return [check], cpu_vectors, cpu_queries


def faiss_checks(vectors: np.ndarray, queries: np.ndarray, data: Squad, dry_run: bool, folder: Path) -> list[Check]:
    """Each factory built on the CPU (the reference), built on the GPU, and searched there."""
    nlist = 1 << int(np.log2(max(1, vectors.shape[0] // faiss_index.POINTS_PER_CENTROID)))
    checks: list[Check] = []
    for factory in ("Flat", f"IVF{nlist},Flat", f"IVF{nlist},PQ48"):
        cpu_file, gpu_file = folder / "cpu.faiss", folder / "gpu.faiss"
        faiss_index.write(faiss_index.build(vectors, factory), cpu_file)
        built = faiss_index.build(vectors, factory, options=GpuOptions(build=True))
        faiss_index.write(built, gpu_file)
        reference = faiss_index.load(cpu_file, 128, 16).search(queries, DEPTH)[1]
        ref = recall5(reference, data)
        must_move = not dry_run and factory != f"IVF{nlist},PQ48"  # PQ48 may lack a GPU kernel: it then stays
        sides = {
            "built on GPU, searched on CPU": (gpu_file, CPU_ONLY),
            "built on GPU, searched on GPU": (gpu_file, GpuOptions(search=True)),
            "built on GPU, searched on GPU, sharded": (gpu_file, GpuOptions(search=True, shard=True)),
        }
        for side, (file, options) in sides.items():
            index = faiss_index.load(file, 128, 16, options)
            placed = "GPU" if gpu.on_gpu(index) else "CPU"
            if gpu.on_gpu(index):
                faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", 16)  # type: ignore[attr-defined]
            rows = index.search(queries, DEPTH)[1]
            got = recall5(rows, data)
            ok = abs(got - ref) <= TOLERANCE and (placed == "GPU" or not (must_move and options.search))
            checks.append(Check(factory, side, got, ref, same_top5(rows, reference), placed, ok))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--chunks", type=int, help="only the first N chunks (default: all; dry run: 400)")
    parser.add_argument("--cpu-only-dry-run", action="store_true", help="CPU on both sides, on a subset")
    parser.add_argument("--require-gpu", action="store_true", help=f"exit {NO_GPU_EXIT} without a GPU")
    parser.add_argument("--threads", type=int, default=2, help="torch and FAISS CPU threads")
    args = parser.parse_args()
    sys.exit(run(args))


def run(args: argparse.Namespace) -> int:
    header("GPU vs CPU: embedding and FAISS agreement (SQuAD v1.1 dev, held-out questions)")
    faiss_gpus, cuda = gpu.gpu_count(), torch.cuda.is_available()
    print(f"faiss sees {faiss_gpus} GPU(s); torch sees CUDA: {cuda}")
    dry_run = args.cpu_only_dry_run
    if not dry_run and faiss_gpus == 0 and not cuda:
        print("no GPU: nothing to check (faiss and torch see none; --cpu-only-dry-run runs the logic on the CPU)")
        return NO_GPU_EXIT if args.require_gpu else 0
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    chunks = args.chunks if args.chunks is not None else (400 if dry_run else None)
    probe = Encoder(MODEL, "fp32", "cpu")
    data = squad(probe, chunks, min(args.questions, 100) if dry_run else args.questions)
    print(
        f"{len(data.token_ids):,} chunks; {len(data.questions)} held-out questions; top 5 paragraphs of {DEPTH} chunks"
    )
    rates: dict[str, float] = {}
    checks: list[Check] = []
    if dry_run or cuda:
        more, vectors, queries = encoder_checks(data, dry_run, rates)
        checks += more
    else:
        print("encoder part skipped: torch sees no CUDA GPU (a CPU build of torch?)")
        vectors, rates["cpu fp32"] = embed(probe, data.token_ids)
        queries = probe.encode_queries(data.questions)
    if dry_run or faiss_gpus:
        with tempfile.TemporaryDirectory(prefix="ragserve-gpu-check-") as folder:
            checks += faiss_checks(vectors, queries, data, dry_run, Path(folder))
    else:
        print("FAISS part skipped: faiss sees no GPU (faiss-cpu installed? see the gpu extra in pyproject.toml)")
    print("\n| encoder | chunks/s |\n|---|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.1f} |")
    print("\n| what | side | ran on | recall@5 | CPU recall@5 | diff | top 5 = CPU's | ok |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for c in checks:
        same = "-" if c.same_top5 is None else f"{c.same_top5:.3f}"
        diff, ok = c.recall5 - c.reference, "yes" if c.ok else "NO"
        print(
            f"| {c.name} | {c.side} | {c.placed} | {c.recall5:.4f} | {c.reference:.4f} | {diff:+.4f} | {same} | {ok} |"
        )
    passed = all(c.ok for c in checks)
    verdict = "PASS" if passed else "FAIL"
    print(f"\n{verdict}{' (dry run: CPU on both sides)' if dry_run else ''}; {time.perf_counter() - t0:.0f} s")
    return 0 if passed else 1


if __name__ == "__main__":
    main()
