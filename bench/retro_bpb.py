"""Bits per byte of held-out text, with and without retrieval: the base generator and its RETRO
retrofit (reader/retro_model.py) as trained by `ragserve train retro`.

    python -m bench.retro_bpb --build-squad ../shared/data/squad-v1.1-dev.parquet --index squad  # once
    ragserve train retro --index squad --steps 150 --out /tmp/retro-squad.safetensors
    python -m bench.retro_bpb --index squad --weights /tmp/retro-squad.safetensors --docs 150

Held-out text: the first T tokens of chunks of documents in the held-out split (the same hash
split that training skips). Neighbours are retrieved from the whole index per chunk of m tokens,
excluding the scored document itself. All rows score the same tokens, positions m..T-1 (the
first chunk has no complete chunk before it, so nothing retrieved may inform it):

- base: the generator alone;
- base + neighbours in prompt: the k neighbours of the first chunk as text before the sequence;
- retrofit + retrieval: neighbours of every complete chunk through chunked cross-attention;
- retrofit, random neighbours: each sequence gets another held-out sequence's neighbours;
- retrofit, no neighbours: all neighbour masks off (equals base by construction: CCA adds 0).

bpb = sum of token NLL (nats) / ln 2 / UTF-8 bytes of the scored text.
"""

import argparse
import functools
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from bench.common import header
from ragserve.types import Passage, Precision, RetrievalMode
from reader.generator import Generator
from reader.prompt import flatten
from reader.retro import default_weights_path, load_retrofit
from reader.retro_model import Retrofit
from reader.retro_train import Batch, TrainSequence, held_out, make_batch, nll, retrieve_neighbours, sequences
from retriever.encoder import Encoder
from service.application.loading import make_encoder, open_registry, open_version
from service.settings import Settings


def build_squad(settings: Settings, data: Path, encoder: Encoder) -> None:
    from indexer.build import build_artifact
    from service.application.evaluation import load_squad
    from service.application.loading import build_config

    registry = open_registry(settings)
    paragraphs = load_squad(data).paragraphs
    version = registry.add(lambda out: build_artifact(paragraphs, out, encoder, build_config(settings), progress=False))
    registry.set_serving(version)
    print(f"index {settings.index_name!r}: version {version} from {len(paragraphs)} paragraphs, now serving")


def base_nll(model: torch.nn.Module, ids: list[int], start: int) -> float:
    """Sum of NLL (nats) of ids[start:] given everything before them."""
    x = torch.tensor([ids], dtype=torch.long)  # (1, T)
    logits = model(input_ids=x).logits[0, start - 1 : -1]  # (T-start, V)
    return float(F.cross_entropy(logits, x[0, start:], reduction="sum"))


def prompt_prefix(generator: Generator, passages: list[Passage], tokens: int) -> list[int]:
    parts = [generator.text.encode(flatten(p.text))[:tokens] + generator.text.encode("\n\n") for p in passages]
    return [t for part in parts for t in part]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", default="squad", help="registry index name (default: %(default)s)")
    ap.add_argument("--build-squad", type=Path, help="first add a SQuAD v1.1 paragraphs version to --index, then stop")
    ap.add_argument("--weights", type=Path, help="retrofit weights (default: setting retro_weights)")
    ap.add_argument("--docs", type=int, default=150, help="held-out sequences scored (default: %(default)s)")
    ap.add_argument("--seq-tokens", type=int, default=128)
    ap.add_argument("--holdout", type=float, default=0.1, help="must match training (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings(index_name=args.index)
    encoder = make_encoder(settings)
    if args.build_squad:
        build_squad(settings, args.build_squad, encoder)
        return
    header("RETRO retrofit: bits per byte on held-out text")
    registry = open_registry(settings)
    version = registry.serving()
    assert version is not None, f"index {args.index!r} has no serving version"
    retriever = open_version(settings, registry.path_of(version), encoder)
    generator = Generator(settings.generator_model, settings.cache_dir, Precision.FP32)
    weights = args.weights or settings.retro_weights or default_weights_path(settings.cache_dir, generator.name)
    retrofit = load_retrofit(weights, generator.model)
    with safe_open(str(weights), framework="pt") as fh:
        trained = fh.metadata() or {}
    cfg = retrofit.config
    m = cfg.chunk

    seqs: list[TrainSequence] = []
    corpus = ((c.doc_id, c.text) for batch in retriever.docstore.scan() for c in batch)
    for s in sequences(corpus, generator, args.seq_tokens, lambda d: held_out(d, args.holdout)):
        if all(s.doc_id != t.doc_id for t in seqs):  # one sequence per document
            seqs.append(s)
    seqs = seqs[: args.docs]
    assert len(seqs) >= 2, "too few held-out sequences"

    neighbours = retrieve_neighbours(
        functools.partial(retriever.passages, mode=RetrievalMode.DENSE), generator, seqs, cfg
    )
    shuffled = neighbours[1:] + neighbours[:1]  # another held-out document's neighbours
    nbytes = sum(len(generator.text.decode(s.ids[m:]).encode("utf-8")) for s in seqs)

    totals = dict.fromkeys(
        [
            "base",
            "base + neighbours in prompt",
            "retrofit + retrieval",
            "retrofit, random neighbours",
            "retrofit, no neighbours",
        ],
        0.0,
    )
    started = time.perf_counter()
    with torch.inference_mode():
        for i, s in enumerate(seqs):
            totals["base"] += base_nll(generator.model, s.ids, m)
            prefix = prompt_prefix(generator, neighbours[i][0], cfg.neighbour_tokens)
            totals["base + neighbours in prompt"] += base_nll(generator.model, prefix + s.ids, len(prefix) + m)
            batch = make_batch(generator, [s], [neighbours[i]], cfg)
            totals["retrofit + retrieval"] += retro_nll(retrofit, batch, m)
            totals["retrofit, random neighbours"] += retro_nll(
                retrofit, make_batch(generator, [s], [shuffled[i]], cfg), m
            )
            empty = Batch(batch.ids, batch.neighbours, torch.zeros_like(batch.mask))
            totals["retrofit, no neighbours"] += retro_nll(retrofit, empty, m)
    seconds = time.perf_counter() - started

    print(f"index: {args.index} version {version} ({retriever.manifest.counts['chunks']} chunks)")
    print(f"weights: {weights}")
    print("training: " + json.dumps({k: v for k, v in trained.items() if k not in ("config",)}))
    print(f"retro config: {cfg.to_json()}")
    print(
        f"held-out: {len(seqs)} documents, {args.seq_tokens} tokens each, scored tokens {m}..{args.seq_tokens - 1} "
        f"({nbytes} bytes); {seconds:.0f} s"
    )
    print(f"{'setting':<32}{'bits/byte':>10}")
    for name, total in totals.items():
        print(f"{name:<32}{total / math.log(2) / nbytes:>10.4f}")


def retro_nll(retrofit: Retrofit, batch: Batch, m: int) -> float:
    return float(nll(retrofit, batch, from_position=m - 1).sum())


if __name__ == "__main__":
    main()
