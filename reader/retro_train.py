"""Training of the RETRO retrofit (`ragserve train retro`): the base model is frozen, only the
neighbour encoder, the CCA layers and their gates learn, by next-token prediction on the corpus
of an index artifact.

- Sequences: the first T generator tokens of each indexed chunk whose document is not held out
  (`held_out(doc_id)`: a fixed hash split, shared with bench/retro_bpb.py); shorter chunks are
  skipped.
- Neighbours: the text of each of a sequence's chunks (m tokens) is a query to the same index;
  hits from the sequence's own document are dropped, the top k others are kept. A sequence's last
  chunk gets none (no position inside the sequence attends to it). Retrieval runs once, before
  training, for the sequences the run will see.
- AdamW on the new parameters, linear warm-up then cosine decay, gradient clipping at 1.

The corpus and the neighbour search are handed in (service/application/training.py wires them to
an index version), so this module knows no index format.
"""

import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ragserve.errors import InvalidInputError
from ragserve.types import Passage
from reader.base import SearchFn
from reader.generator import Generator
from reader.retro import neighbour_tensors, save_retrofit
from reader.retro_model import RetroConfig, Retrofit, RetroState
from reader.train_config import RetroTrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainSequence:
    doc_id: str
    ids: list[int]  # (T,)


@dataclass(frozen=True, slots=True)
class Batch:
    ids: torch.Tensor  # (B, T)
    neighbours: torch.Tensor  # (B, L, k, r)
    mask: torch.Tensor  # (B, L, k, r)


def held_out(doc_id: str, fraction: float) -> bool:
    """A fixed pseudo-random split of documents, independent of corpus order."""
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def sequences(
    corpus: Iterable[tuple[str, str]], generator: Generator, tokens: int, keep: Callable[[str], bool]
) -> list[TrainSequence]:
    """The first `tokens` generator tokens of every (doc_id, text) chunk whose doc_id `keep`s."""
    found: list[TrainSequence] = []
    for doc_id, text in corpus:
        if not keep(doc_id):
            continue
        ids = generator.text.encode(text)
        if len(ids) >= tokens:
            found.append(TrainSequence(doc_id, ids[:tokens]))
    return found


def retrieve_neighbours(
    search: SearchFn, generator: Generator, seqs: list[TrainSequence], config: RetroConfig, depth: int = 10
) -> list[list[list[Passage]]]:
    """Per sequence, per chunk: the top k passages `search` finds for the chunk's text, not from
    the sequence's own document; the last chunk gets none. RETRO finds neighbours by embedding
    kNN (frozen BERT embeddings there): the caller's `search` is dense."""
    m, k = config.chunk, config.neighbours
    queries = [generator.text.decode(s.ids[u * m : (u + 1) * m]) for s in seqs for u in range(len(s.ids) // m - 1)]
    results = search(queries, k + depth) if queries else []
    out: list[list[list[Passage]]] = []
    at = 0
    for s in seqs:
        per_chunk: list[list[Passage]] = []
        for _ in range(len(s.ids) // m - 1):
            per_chunk.append([p for p in results[at] if p.doc_id != s.doc_id][:k])
            at += 1
        per_chunk.append([])
        out.append(per_chunk)
    assert at == len(results)
    return out


def make_batch(
    generator: Generator, seqs: list[TrainSequence], neighbours: list[list[list[Passage]]], config: RetroConfig
) -> Batch:
    pairs = [neighbour_tensors(generator, per_chunk, config) for per_chunk in neighbours]
    ids = torch.tensor([s.ids for s in seqs], dtype=torch.long)  # (B, T)
    nb = torch.stack([p[0] for p in pairs])  # (B, L, k, r)
    mask = torch.stack([p[1] for p in pairs])  # (B, L, k, r)
    assert nb.shape[:2] == (ids.shape[0], ids.shape[1] // config.chunk)
    return Batch(ids, nb, mask)


def nll(retrofit: Retrofit, batch: Batch, from_position: int = 0) -> torch.Tensor:
    """Per-token negative log-likelihood (nats) of tokens from_position+1..T-1, shape (B, T-1-from)."""
    logits = retrofit(batch.ids, RetroState(batch.neighbours, batch.mask)).logits  # (B, T, V)
    targets = batch.ids[:, from_position + 1 :]  # (B, T-1-from)
    scored = logits[:, from_position:-1]  # (B, T-1-from, V)
    return F.cross_entropy(scored.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


def learning_rate(step: int, config: RetroTrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    corpus: Iterable[tuple[str, str]],
    search: SearchFn,
    generator: Generator,
    out: Path,
    config: RetroTrainConfig,
    retro: RetroConfig | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, float | int | str]:
    """Train a retrofit on a corpus of (doc_id, text) chunks, with neighbours from `search` (dense),
    and save it to `out`; returns a summary."""
    started = time.perf_counter()
    retro = retro or RetroConfig()
    assert config.seq_tokens % retro.chunk == 0, "seq_tokens must be a multiple of the chunk size"
    torch.manual_seed(config.seed)
    model = generator.model
    for p in model.parameters():
        p.requires_grad_(False)
    retrofit = Retrofit(model, retro).to(model.device)  # new layers beside the base model's
    seqs = sequences(corpus, generator, config.seq_tokens, lambda d: not held_out(d, config.holdout))
    if not seqs:
        raise InvalidInputError(f"no chunk of the corpus has {config.seq_tokens} tokens outside the held-out set")
    random.Random(config.seed).shuffle(seqs)
    seqs = seqs[: config.steps * config.batch]  # the sequences this run will see (cycled if fewer)
    progress(f"retrieving neighbours for {len(seqs)} sequences ...")
    neighbours = retrieve_neighbours(search, generator, seqs, retro)
    prepared = time.perf_counter()
    optimizer = torch.optim.AdamW([p for p in retrofit.parameters()], lr=config.lr, weight_decay=0.0)
    losses: list[float] = []
    with generator.lock, generator.placed():
        retrofit.train(True)
        for step in range(config.steps):
            at = [(step * config.batch + i) % len(seqs) for i in range(config.batch)]
            batch = make_batch(generator, [seqs[i] for i in at], [neighbours[i] for i in at], retro)
            loss = nll(retrofit, batch).mean()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(retrofit.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            if (step + 1) % 10 == 0 or step + 1 == config.steps:
                recent = sum(losses[-10:]) / len(losses[-10:])
                gates = ", ".join(f"{float(g):+.3f}" for g in torch.tanh(retrofit.gates.detach()))
                progress(f"step {step + 1}/{config.steps}  loss {recent:.4f}  tanh(gates) [{gates}]")
        retrofit.train(False)
    seconds = time.perf_counter() - started
    summary: dict[str, float | int | str] = {
        "weights": str(out),
        "steps": config.steps,
        "sequences": len(seqs),
        "train_loss_last10": sum(losses[-10:]) / len(losses[-10:]),
        "seconds_total": round(seconds, 1),
        "seconds_training": round(time.perf_counter() - prepared, 1),
    }
    save_retrofit(retrofit, out, {k: str(v) for k, v in summary.items()} | {"generator": generator.name})
    return summary
