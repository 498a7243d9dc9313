"""Index build throughput: `ragserve index build` vs plain `SentenceTransformer.encode` of the same
chunks, measured in the same run with the same thread count.

    python -m bench.index_throughput [--data ../shared/data/squad-v1.1-dev.parquet] [--threads 2]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import header
from indexer.build import BuildConfig, build_artifact
from indexer.chunking import chunk_document
from retriever.encoder import Encoder
from service.evaluation import load_squad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/squad-v1.1-dev.parquet"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, help="first N paragraphs only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header("index build throughput")

    docs = load_squad(args.data).paragraphs[: args.limit]
    encoder = Encoder()
    config = BuildConfig()
    chunks = [
        c
        for d, t in zip(docs, encoder.tokenize([d.text for d in docs]), strict=True)
        for c in chunk_document(d, t, config.chunking)
    ]
    texts = [c.text for c in chunks]
    tokens = sum(len(c.token_ids) for c in chunks)
    print(
        f"corpus: {len(docs)} paragraphs -> {len(chunks)} chunks, {tokens} tokens "
        f"(chunk_tokens={config.chunking.chunk_tokens}, overlap={config.chunking.overlap_tokens}); "
        f"threads={args.threads}"
    )

    started = time.perf_counter()
    plain = encoder.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    plain_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        build_artifact(docs, Path(tmp) / "idx", encoder, config, progress=False)
        build_s = time.perf_counter() - started

    ours = encoder.encode_ids([c.token_ids for c in chunks])
    max_diff = float(np.abs(ours - plain).max())

    print(f"{'path':<48}{'seconds':>9}{'chunks/s':>10}{'tokens/s':>10}")
    print(
        f"{'SentenceTransformer.encode (embed only)':<48}{plain_s:>9.1f}{len(chunks) / plain_s:>10.1f}"
        f"{tokens / plain_s:>10.0f}"
    )
    print(
        f"{'ragserve index build (chunk+embed+FAISS+store)':<48}{build_s:>9.1f}{len(chunks) / build_s:>10.1f}"
        f"{tokens / build_s:>10.0f}"
    )
    print(f"speed-up: {plain_s / build_s:.2f}x; max |embedding difference| = {max_diff:.2e}")


if __name__ == "__main__":
    main()
