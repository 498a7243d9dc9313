"""Index build throughput: ragserve's embedding paths vs plain `SentenceTransformer.encode` of the
same chunks, with the same thread count, in one run; and what bf16 costs in retrieval quality.

    python -m bench.index_throughput [--data ../shared/data/squad-v1.1-dev.parquet] [--threads 2]

Rows: `SentenceTransformer.encode` (batch 32, its default, sorts by length itself) is the baseline.
`ragserve fp32` feeds the chunker's token ids in length-sorted batches of 8; its vectors must equal
the baseline's within float tolerance. `ragserve bf16` is the same with bf16 weights (AMX); its
recall is measured against fp32 on every SQuAD question, searching all chunks exactly. The `build`
rows are the whole `ragserve index build` pipeline (chunk + embed + FAISS + BM25 + docstore + seal).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import header
from indexer.build import BuildConfig, build_artifact
from indexer.chunking import Chunk, chunk_document
from ragserve.types import Precision
from retriever.encoder import Encoder
from service.application.evaluation import RECALL_AT, SquadData, load_squad
from service.application.loading import build_config
from service.settings import Settings


def recall(encoder: Encoder, chunks: list[Chunk], vectors: np.ndarray, squad: SquadData) -> list[float]:
    """Recall@k of the gold paragraph over all questions, exact inner-product search of `vectors`."""
    queries = encoder.encode_queries([q.question for q in squad.questions])  # (Q, dim)
    scores = queries @ vectors.T  # (Q, chunks)
    deepest = min(scores.shape[1], 4 * max(RECALL_AT))
    top = np.argsort(-scores, axis=1)[:, :deepest]  # (Q, deepest) chunk rows, best first
    hits = {k: 0 for k in RECALL_AT}
    for question, rows in zip(squad.questions, top, strict=True):
        docs = list(dict.fromkeys(chunks[r].doc_id for r in rows))
        for k in RECALL_AT:
            hits[k] += question.gold_doc in docs[:k]
    return [hits[k] / len(squad.questions) for k in RECALL_AT]


def timed_build(squad: SquadData, encoder: Encoder, config: BuildConfig) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        build_artifact(squad.paragraphs, Path(tmp) / "idx", encoder, config, progress=False)
        return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/squad-v1.1-dev.parquet"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header("index build throughput")

    squad = load_squad(args.data)
    settings = Settings()
    fp32 = Encoder(settings.retriever_model, precision=Precision.FP32)
    bf16 = Encoder(settings.retriever_model, precision=Precision.BF16)
    config = build_config(settings)
    tokenized = fp32.tokenize([d.text for d in squad.paragraphs])
    pairs = zip(squad.paragraphs, tokenized, strict=True)
    chunks = [c for d, t in pairs for c in chunk_document(d, t, config.chunking)]
    texts, ids = [c.text for c in chunks], [c.token_ids for c in chunks]
    tokens = sum(len(i) for i in ids)
    print(
        f"corpus: {len(squad.paragraphs)} paragraphs -> {len(chunks)} chunks, {tokens} tokens "
        f"(chunk_tokens={config.chunking.chunk_tokens}, overlap={config.chunking.overlap_tokens}); "
        f"threads={args.threads}; AMX: {torch.cpu._is_amx_tile_supported()}"
    )
    for encoder in (fp32, bf16):  # warm-up: first calls allocate and pick kernels
        encoder.encode_ids(ids[:64])

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    plain = fp32.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    seconds["SentenceTransformer.encode (embed only)"] = time.perf_counter() - started
    vectors = {}
    for encoder in (fp32, bf16):
        started = time.perf_counter()
        vectors[encoder.precision] = encoder.encode_ids(ids)
        seconds[f"ragserve {encoder.precision} (embed only)"] = time.perf_counter() - started
    for encoder in (fp32, bf16):
        seconds[f"ragserve {encoder.precision} index build (whole pipeline)"] = timed_build(squad, encoder, config)

    baseline = seconds["SentenceTransformer.encode (embed only)"]
    print(f"\n{'path':<52}{'seconds':>9}{'chunks/s':>10}{'tokens/s':>10}{'vs ST':>8}")
    for name, s in seconds.items():
        print(f"{name:<52}{s:>9.1f}{len(chunks) / s:>10.1f}{tokens / s:>10.0f}{baseline / s:>7.2f}x")

    diff = float(np.abs(vectors[Precision.FP32] - plain).max())
    cosine = float((vectors[Precision.BF16] * vectors[Precision.FP32]).sum(axis=1).min())
    print(f"\nfp32 vs SentenceTransformer: max |difference| = {diff:.2e}")
    print(f"bf16 vs fp32: min cosine of a chunk's two vectors = {cosine:.5f}")
    print(f"\nrecall of the gold paragraph, {len(squad.questions)} questions, dense exact search over all chunks")
    print(f"{'precision':<12}" + "".join(f"{'R@' + str(k):>9}" for k in RECALL_AT))
    rows = {e.precision: recall(e, chunks, vectors[e.precision], squad) for e in (fp32, bf16)}
    for name, values in rows.items():
        print(f"{name:<12}" + "".join(f"{v:>9.4f}" for v in values))
    loss = [a - b for a, b in zip(rows[Precision.FP32], rows[Precision.BF16], strict=True)]
    print(f"{'loss':<12}" + "".join(f"{v:>9.4f}" for v in loss))


if __name__ == "__main__":
    main()
