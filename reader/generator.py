"""The generator: a causal or encoder-decoder LM, its text side (reader/text.py) and its decoding
backend (reader/lm.py), loaded from a bundled alias or a local folder (reader/models.py)."""

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel

from ragserve.errors import InvalidAdapterError
from ragserve.precision import resolve_device, resolve_precision
from ragserve.types import Precision
from reader import adapters as adapting
from reader.adapters import Adapter
from reader.decoding import greedy, without_end
from reader.extractive import SpanConstraint
from reader.lm import lm_for
from reader.models import resolve_generator
from reader.text import TextCodec

_VOLATILE_CONFIG = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache"}


DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


class Generator:
    """A loaded LM for inference: `model`, its `text` (tokenizer, stop rule) and its decoding
    backend `lm`, on `device` (cpu or cuda[:n]) in `precision`. Readers decode inside `running()`:
    one generation at a time (on a small CPU two only fight over the same cores, see the
    `torch_threads` setting; on a GPU the continuous batcher already batches them), and every
    tensor the decoding code makes is made on the model's device."""

    def __init__(self, name_or_path: str, cache_dir: Path, precision: Precision | str, device: str = "cpu") -> None:
        self.name = name_or_path
        self.device = resolve_device(device, "generator")
        self.precision = resolve_precision(precision, self.device)
        self.path = resolve_generator(name_or_path, cache_dir.expanduser())
        tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        dtype = DTYPES[self.precision]
        self.model: PreTrainedModel = auto.from_pretrained(self.path, local_files_only=True, dtype=dtype)
        torch.nn.Module.to(self.model, self.device)  # (transformers types its own `to` oddly)
        self.model.train(False)  # inference mode for dropout and friends
        stops: set[int] = set()
        for eos in (tokenizer.eos_token_id, self.model.generation_config.eos_token_id):
            stops.update([eos] if isinstance(eos, int) else eos or [])
        self.text = TextCodec(tokenizer, stops)
        pad = tokenizer.pad_token_id
        self.lm = lm_for(self.model, int(pad if pad is not None else min(stops, default=0)))
        self.lock = threading.Lock()

    def placed(self) -> contextlib.AbstractContextManager[object]:
        """Tensors made inside are made on the model's device (torch's device context: thread-local,
        so other threads are not affected). On the CPU, torch's default, nothing is entered: the
        context is a function mode that every torch call inside would go through."""
        return contextlib.nullcontext() if self.device == "cpu" else torch.device(self.device)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Decoding: the model to itself (`lock`), no autograd, new tensors on its device."""
        with self.lock, torch.inference_mode(), self.placed():
            yield

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
        if not self.lm.adapts:
            raise InvalidAdapterError("adapters need a causal generator; this one is an encoder-decoder")
        adapter = adapting.load_adapter(folder, name, self.model, self.base_id)
        with self.lock:
            adapting.install(self.model, list(adapter.modules))
        return adapter

    def greedy(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        prefix: Sequence[int] = (),
        constraint: SpanConstraint | None = None,
        adapter: Adapter | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> list[int]:
        """Greedy answer tokens for one prompt (after `prefix`), without the token that ended it;
        `on_token` sees each one as it is chosen (a streamed answer)."""
        watch = None if on_token is None else (lambda _row, token: on_token(token))
        with self.running():
            batch = self.lm.start(prefix, [prompt_ids], adapter)
            (tokens,) = greedy(self.lm, batch, max_new_tokens, self.text.ends_answer, [constraint], watch)
        return without_end(tokens, self.text.ends_answer)
