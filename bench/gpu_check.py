"""GPU against CPU on SQuAD v1.1 dev: embedding rate and agreement, FAISS build and search
agreement, the generator's answers.

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
4. The stuff reader, given each of `--answers` held-out questions and its gold paragraph, on the
   generator on the CPU (fp32, the reference) and on CUDA in fp32, bf16 and fp16: exact match,
   the share of answers equal to the CPU's, and answers/s.

PASS when every recall is within 0.005 of its CPU reference, Flat / IVF-Flat really ran on the
GPU, CUDA fp32 answers what the CPU answers for >= 0.95 of the questions and every CUDA precision's
exact match is within 0.03 of the CPU's; then exit 0, on FAIL exit 1. Without a GPU (neither
torch nor faiss sees one) it prints "no GPU: nothing to check" and exits 0, or 3 with
--require-gpu. Where only one of them sees a GPU (e.g. faiss-cpu with CUDA torch), the other
part is skipped and said so. `--cpu-only-dry-run`
runs the whole comparison with the CPU on both sides on a subset (the logic, not the hardware).
"""

from __future__ import annotations

import argparse
import functools
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
from ragserve.types import Passage
from reader.generator import Generator
from reader.registry import ReaderContext, create_reader
from retriever import faiss_index, gpu
from retriever.encoder import Encoder
from retriever.gpu import CPU_ONLY, GpuOptions
from service.application.evaluation import load_squad, spread_sample
from service.application.loading import reader_config
from service.application.squad import exact_match, select_articles
from service.settings import Settings

MODEL = "all-MiniLM-L6-v2"
TOLERANCE = 0.005
DEPTH = 10  # chunks searched, so that 5 distinct paragraphs remain
NO_GPU_EXIT = 3
SAME_ANSWERS = 0.95  # CUDA fp32 answers what the CPU answers, for at least this share of questions
EM_TOLERANCE = 0.03  # exact match of each CUDA precision within this of the CPU's


@dataclass
class Check:
    name: str
    side: str
    score: float  # recall@5 (encoder, FAISS) or exact match (generator)
    reference: float  # the same on the CPU
    agreement: float | None  # share of top 5 chunks, or answers, equal to the CPU's
    placed: str  # where it ran
    ok: bool


@dataclass
class Squad:
    token_ids: list[list[int]]
    doc_of: np.ndarray  # (chunks,) paragraph number of each chunk
    questions: list[str]
    gold: np.ndarray  # (questions,) paragraph number of each question
    passages: list[str]  # (questions,) the text of each question's gold paragraph
    answers: list[list[str]]  # (questions,) its reference answers


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
    texts = [data.paragraphs[i].text for i in gold.tolist()]
    questions, answers = [q.question for q in chosen], [q.answers for q in chosen]
    return Squad(token_ids, np.array(doc_of, np.int64), questions, gold, texts, answers)


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


def answers(generator: Generator, data: Squad, n: int) -> tuple[list[str], float]:
    """The stuff reader's answers to the first `n` questions, each from its gold paragraph; answers/s."""
    stuff = create_reader("stuff", ReaderContext(generator, reader_config(Settings())))
    stuff.answer(data.questions[0], [Passage("warm-up", "warm-up", "", data.passages[0], 1.0)])
    t0 = time.perf_counter()
    got = [
        stuff.answer(q, [Passage(f"gold{i}", f"gold{i}", "", text, 1.0)]).text
        for i, (q, text) in enumerate(zip(data.questions[:n], data.passages[:n], strict=True))
    ]
    return got, n / (time.perf_counter() - t0)


def generator_checks(data: Squad, n: int, dry_run: bool, rates: dict[str, float]) -> list[Check]:
    """The generator's answers on the CPU (fp32) against CUDA fp32, bf16 and fp16 (in a dry run:
    the CPU again, fp32 and bf16)."""
    settings = Settings()
    load = functools.partial(Generator, settings.generator_model, settings.cache_dir)
    reference, rates["generator cpu fp32 (answers/s)"] = answers(load("fp32", "cpu"), data, n)
    ref_em = float(np.mean([exact_match(a, g) for a, g in zip(reference, data.answers, strict=False)]))
    device = "cpu" if dry_run else "cuda"
    checks: list[Check] = []
    for precision in ("fp32", "bf16") if dry_run else ("fp32", "bf16", "fp16"):
        got, rates[f"generator {device} {precision} (answers/s)"] = answers(load(precision, device), data, n)
        em = float(np.mean([exact_match(a, g) for a, g in zip(got, data.answers, strict=False)]))
        same = float(np.mean([a == b for a, b in zip(got, reference, strict=True)]))
        ok = abs(em - ref_em) <= EM_TOLERANCE and (precision != "fp32" or same >= SAME_ANSWERS)
        checks.append(Check(f"generator {precision}, exact match", device, em, ref_em, same, device, ok))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--chunks", type=int, help="only the first N chunks (default: all; dry run: 400)")
    parser.add_argument("--cpu-only-dry-run", action="store_true", help="CPU on both sides, on a subset")
    parser.add_argument("--require-gpu", action="store_true", help=f"exit {NO_GPU_EXIT} without a GPU")
    parser.add_argument("--threads", type=int, default=2, help="torch and FAISS CPU threads")
    parser.add_argument("--answers", type=int, default=100, help="questions the generator answers (dry run: 10)")
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
    if dry_run or cuda:
        checks += generator_checks(data, min(args.answers, 10 if dry_run else len(data.questions)), dry_run, rates)
    else:
        print("generator part skipped: torch sees no CUDA GPU")
    print("\n| model | chunks/s (encoder), answers/s (generator) |\n|---|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.1f} |")
    print(
        "\nscore: recall@5 (encoder, FAISS) or exact match (generator); same: share of top 5s or answers as the CPU's"
    )
    print("\n| what | side | ran on | score | CPU score | diff | same | ok |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for c in checks:
        same = "-" if c.agreement is None else f"{c.agreement:.3f}"
        diff, ok = c.score - c.reference, "yes" if c.ok else "NO"
        print(f"| {c.name} | {c.side} | {c.placed} | {c.score:.4f} | {c.reference:.4f} | {diff:+.4f} | {same} | {ok} |")
    passed = all(c.ok for c in checks)
    verdict = "PASS" if passed else "FAIL"
    print(f"\n{verdict}{' (dry run: CPU on both sides)' if dry_run else ''}; {time.perf_counter() - t0:.0f} s")
    return 0 if passed else 1


if __name__ == "__main__":
    main()
