"""Training of reader adapters (`ragserve train reader`): LoRA, (IA)³ or prompt tuning with the
`peft` library, on (question, retrieved passages, answer) examples; the base model stays frozen.

- Prompt: the adapter's own prefix (reader/prompt.py ADAPTER_PREFIX, the instruction without the
  worked examples), then the passages and the question exactly as the readers lay them out; the
  loss is the answer's tokens and the line break that ends it, nothing else.
- Passages: what the retriever returns for the question (the caller retrieves them), so the
  adapter learns to read real retrieval, wrong passages included (as in RAG and Atlas).
- A fixed hash split of example ids is held out: its loss is reported during training and decides
  nothing else.
- AdamW on the adapter's parameters, linear warm-up then linear decay, gradient clipping at 1;
  bf16 autocast where the CPU multiplies bf16 natively. Batches group examples of similar length.
- Checkpoints (`<out>/checkpoint/`: adapter weights as safetensors, optimizer state, progress) are
  written atomically every `checkpoint_every` steps; a run started again with the same `--out`
  and the same data and settings resumes from the last one. The finished adapter is written to
  `<out>` itself (reader/adapters.py reads it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import IA3Config, LoraConfig, PeftConfig, PeftModel, PromptTuningConfig, TaskType, get_peft_model
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file
from tqdm import tqdm

from ragserve.atomic import clean_stale, staged_directory
from ragserve.errors import InvalidInputError
from ragserve.types import Passage, Precision
from reader.adapters import ADAPTER_WEIGHTS, RAGSERVE_INFO
from reader.generator import Generator
from reader.prompt import ADAPTER_PREFIX, flatten, qa_suffix
from reader.retro_train import held_out
from reader.train_config import METHOD_LR, AdapterTrainConfig

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
TRAINER_STATE = "trainer.json"
OPTIMIZER_STATE = "optimizer.pt"


def _lora(c: AdapterTrainConfig) -> PeftConfig:
    # every linear layer of the decoder (peft leaves the LM head out)
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=c.rank, lora_alpha=int(c.alpha), lora_dropout=0.0, target_modules="all-linear"
    )


def _ia3(c: AdapterTrainConfig) -> PeftConfig:
    return IA3Config(task_type=TaskType.CAUSAL_LM)  # peft's defaults per architecture (k, v and down for Llama)


def _prompt(c: AdapterTrainConfig) -> PeftConfig:
    return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=c.virtual_tokens)


# Method names are the ones adapters are served under (reader/adapters.py METHODS); their default
# learning rates are reader/train_config.py's METHOD_LR.
METHODS: dict[str, Callable[[AdapterTrainConfig], PeftConfig]] = {"lora": _lora, "ia3": _ia3, "prompt": _prompt}
assert METHODS.keys() == METHOD_LR.keys()


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    question: str
    answer: str
    passages: list[Passage] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Encoded:
    ids: list[int]  # prefix + suffix + answer tokens
    answer_start: int  # index in ids of the first answer token


def encode(generator: Generator, prefix: Sequence[int], example: Example, max_passage_tokens: int) -> Encoded:
    """Prompt as the readers build it for this adapter, then the answer and its line break."""
    passages = [generator.text.truncate(p, max_passage_tokens) for p in example.passages]
    prompt = [*prefix, *generator.text.encode(qa_suffix(example.question, passages))]
    answer = generator.text.encode(" " + flatten(example.answer) + "\n")
    return Encoded(prompt + answer, len(prompt))


def batches(lengths: Sequence[int], batch: int, epochs: float, seed: int) -> list[list[int]]:
    """Example indices per step: each epoch shuffled, then windows of 8 batches sorted by length
    (less padding), then the batches shuffled. Deterministic, so a resumed run sees the rest."""
    out: list[list[int]] = []
    total = math.ceil(len(lengths) * epochs / batch)
    epoch = 0
    while len(out) < total:
        rng = random.Random(seed * 1_000 + epoch)
        order = list(range(len(lengths)))
        rng.shuffle(order)
        window = batch * 8
        steps: list[list[int]] = []
        for start in range(0, len(order), window):
            part = sorted(order[start : start + window], key=lambda i: lengths[i])
            steps += [part[i : i + batch] for i in range(0, len(part), batch)]
        rng.shuffle(steps)
        out += steps
        epoch += 1
    return out[:total]


def _padded(rows: Sequence[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for b, row in enumerate(rows):
        ids[b, : len(row.ids)] = torch.tensor(row.ids)
        mask[b, : len(row.ids)] = 1
    return ids, mask


def answer_nll(model: torch.nn.Module, rows: Sequence[Encoded], pad_id: int, virtual: int) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of every row's answer tokens, and how many there are. Logits
    are computed only where an answer token is predicted (the LM head is ~20% of a forward pass)."""
    ids, mask = _padded(rows, pad_id)  # (B, T)
    predictors = [(b, t - 1) for b, r in enumerate(rows) for t in range(r.answer_start, len(r.ids))]
    keep = sorted({t for _, t in predictors})  # positions whose logits are needed
    column = {t: j for j, t in enumerate(keep)}
    # prompt tuning puts `virtual` embeddings before the tokens: positions shift by that much
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=torch.tensor(keep) + virtual).logits
    assert logits.shape[:2] == (len(rows), len(keep)), "one logit row per kept position"
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, K, V)
    row_of = torch.tensor([b for b, _ in predictors])
    col_of = torch.tensor([column[t] for _, t in predictors])
    target = torch.tensor([rows[b].ids[t + 1] for b, t in predictors])
    return -logprobs[row_of, col_of, target].sum(), len(predictors)


@dataclass
class Progress:
    """What a checkpoint remembers, besides weights and optimizer state."""

    fingerprint: str
    step: int = 0
    seconds: float = 0.0
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last record)
    holdout_loss: list[tuple[int, float]] = field(default_factory=list)


def fingerprint(generator: Generator, examples: Sequence[Example], config: AdapterTrainConfig) -> str:
    """What must not change for a run to resume: base model, data, passages and settings."""
    digest = hashlib.sha256(generator.base_id.encode())
    shaping = {k: v for k, v in asdict(config).items() if k not in ("eval_every", "checkpoint_every")}
    digest.update(json.dumps(shaping, sort_keys=True).encode())
    for ex in examples:
        digest.update(json.dumps([ex.id, ex.question, ex.answer, [p.chunk_id for p in ex.passages]]).encode())
    return digest.hexdigest()[:16]


def _save_adapter(model: PeftModel, folder: Path) -> None:
    model.save_pretrained(str(folder))  # adapter_config.json + adapter_model.safetensors
    (folder / "README.md").unlink(missing_ok=True)  # peft's model card template says nothing true here


def _save_checkpoint(out: Path, model: PeftModel, optimizer: torch.optim.Optimizer, progress: Progress) -> None:
    clean_stale(out / CHECKPOINT)
    with staged_directory(out / CHECKPOINT, replace=True) as folder:  # a crash keeps the last whole one
        _save_adapter(model, folder)
        torch.save(optimizer.state_dict(), folder / OPTIMIZER_STATE)  # tensors only; read back weights_only
        (folder / TRAINER_STATE).write_text(json.dumps(asdict(progress)), encoding="utf-8")


def _resume(out: Path, model: PeftModel, optimizer: torch.optim.Optimizer, progress: Progress) -> Progress:
    folder = out / CHECKPOINT
    if not (folder / TRAINER_STATE).is_file():
        return progress
    saved = Progress(**json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8")))
    if saved.fingerprint != progress.fingerprint:
        raise InvalidInputError(
            f"{folder} is a checkpoint of another run (other data, model or settings); "
            "choose another --out or delete it"
        )
    set_peft_model_state_dict(model, load_file(folder / ADAPTER_WEIGHTS))
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_STATE, weights_only=True))
    saved.train_loss = [tuple(x) for x in saved.train_loss]  # type: ignore[misc]
    saved.holdout_loss = [tuple(x) for x in saved.holdout_loss]  # type: ignore[misc]
    log.info("resuming %s at step %d", out, saved.step)
    return saved


class _Run:
    """One training run of an adapter over `generator`'s model: its rows, model, optimizer and
    schedule, and the progress a checkpoint keeps."""

    def __init__(
        self, generator: Generator, examples: Sequence[Example], out: Path, config: AdapterTrainConfig
    ) -> None:
        held = [ex for ex in examples if held_out(ex.id, config.holdout)]
        used = [ex for ex in examples if not held_out(ex.id, config.holdout)]
        if not used:
            raise InvalidInputError("no training examples left after the held-out split")
        torch.manual_seed(config.seed)
        prefix = generator.text.encode(ADAPTER_PREFIX)
        self.generator, self.config, self.out = generator, config, out
        self.examples, self.held_examples = len(used), len(held)
        self.train_rows = [encode(generator, prefix, ex, config.max_passage_tokens) for ex in used]
        self.held_rows = [encode(generator, prefix, ex, config.max_passage_tokens) for ex in held]
        self.model = get_peft_model(generator.model, METHODS[config.method](config))
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        for p in self.trainable:  # the adapter learns in fp32 whatever the base model's format
            p.data = p.data.float()
        self.virtual = config.virtual_tokens if config.method == "prompt" else 0
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=0.0)
        self.progress = _resume(out, self.model, self.optimizer, Progress(fingerprint(generator, examples, config)))
        self.steps = batches([len(r.ids) for r in self.train_rows], config.batch, config.epochs, config.seed)
        self.autocast = generator.precision is Precision.BF16
        self.pad = generator.lm.pad_id

    def _nll(self, rows: Sequence[Encoded]) -> tuple[torch.Tensor, int]:
        with torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return answer_nll(self.model, rows, self.pad, self.virtual)

    def holdout_loss(self) -> float:
        self.model.train(False)
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(self.held_rows), self.config.batch):
                nll, n = self._nll(self.held_rows[start : start + self.config.batch])
                total, count = total + float(nll), count + n
        self.model.train(True)
        return total / max(count, 1)

    def lr_at(self, step: int) -> float:
        warm = min(self.config.warmup, max(len(self.steps) // 10, 1))
        return self.config.learning_rate * min(1.0, (step + 1) / warm) * max(0.0, 1 - step / len(self.steps))

    def step(self) -> float:
        """One optimizer step on the next batch; its loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.progress.step)
        nll, n = self._nll([self.train_rows[i] for i in self.steps[self.progress.step]])
        loss = nll / n
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        return float(loss.detach())

    def record(self, window: list[float]) -> str:
        """Note the training loss since the last record and the held-out loss now; a summary."""
        progress = self.progress
        progress.train_loss.append((progress.step, sum(window) / len(window)))
        if self.held_rows:
            progress.holdout_loss.append((progress.step, self.holdout_loss()))
        held = f"{progress.holdout_loss[-1][1]:.4f}" if self.held_rows else "-"
        return f"step {progress.step}: train loss {progress.train_loss[-1][1]:.4f}, held-out loss {held}"

    def report(self, seconds: float, about: Mapping[str, Any] | None) -> dict[str, Any]:
        progress, config = self.progress, self.config
        return {
            "method": config.method,
            "examples": self.examples,
            "holdout_examples": self.held_examples,
            "steps": len(self.steps),
            "trainable_parameters": sum(p.numel() for p in self.trainable),
            "seconds": round(seconds, 1),
            "train_loss": [(s, round(v, 4)) for s, v in progress.train_loss],
            "holdout_loss": [(s, round(v, 4)) for s, v in progress.holdout_loss],
            "config": asdict(config),
            "precision": str(self.generator.precision),
            **(about or {}),
        }

    def save(self, report: dict[str, Any]) -> None:
        """The finished adapter in `out` (the checkpoint goes)."""
        generator = self.generator
        info = {"prefix": ADAPTER_PREFIX, "base_id": generator.base_id, "generator": generator.name, "training": report}
        if self.autocast:  # trained in bf16: the weights are stored as it computed with them (half the bytes)
            for p in self.trainable:
                p.data = p.data.to(torch.bfloat16)
        _save_adapter(self.model, self.out)
        (self.out / RAGSERVE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(self.out / CHECKPOINT, ignore_errors=True)


def train(
    generator: Generator,
    examples: Sequence[Example],
    out: Path,
    config: AdapterTrainConfig,
    progress_bar: bool = True,
    about: Mapping[str, Any] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any] | None:
    """Train an adapter of `generator`'s model (which it modifies: use a generator of its own) and
    write it to `out`; returns the training report (with `about`: where the examples came from),
    also stored in `out/ragserve.json`. With `stop_after`, this run stops after that many steps at
    a checkpoint (and returns None) unless training ends first; running it again resumes."""
    if (out / RAGSERVE_INFO).is_file():
        raise InvalidInputError(f"{out} already holds a trained adapter; choose another --out or delete it")
    if not generator.lm.adapts:
        raise InvalidInputError("adapters are trained for causal generators")
    with generator.placed():  # the adapter's weights and every batch on the model's device
        return _train(generator, examples, out, config, progress_bar, about, stop_after)


def _train(
    generator: Generator,
    examples: Sequence[Example],
    out: Path,
    config: AdapterTrainConfig,
    progress_bar: bool,
    about: Mapping[str, Any] | None,
    stop_after: int | None,
) -> dict[str, Any] | None:
    run = _Run(generator, examples, out, config)
    progress, total = run.progress, len(run.steps)
    out.mkdir(parents=True, exist_ok=True)
    run.model.train(True)
    bar = tqdm(total=total, initial=progress.step, desc=f"training {config.method}", disable=not progress_bar)
    window: list[float] = []
    started = time.perf_counter() - progress.seconds
    if run.held_rows and not progress.holdout_loss:
        progress.holdout_loss.append((0, run.holdout_loss()))
    until = total if stop_after is None else min(total, progress.step + stop_after)
    while progress.step < until:
        window.append(run.step())
        bar.update()
        if progress.step % config.eval_every == 0 or progress.step == total:
            log.info(run.record(window))
            window = []
            bar.set_postfix(loss=f"{progress.train_loss[-1][1]:.3f}")
        if progress.step % config.checkpoint_every == 0 or progress.step == until:
            progress.seconds = time.perf_counter() - started
            _save_checkpoint(out, run.model, run.optimizer, progress)
    bar.close()
    if progress.step < total:
        log.info("stopped at step %d of %d; run again with the same --out to resume", progress.step, total)
        return None
    report = run.report(time.perf_counter() - started, about)
    run.save(report)
    return report
