"""The `retro` reader: the stuff reader's prompt, read by the generator retrofitted with chunked
cross-attention (see reader/retro_model.py), retrieving again at every chunk boundary.

- The prompt is `qa_prompt(question, passages)`, exactly as for `stuff`, with the same passages.
- Neighbours of the prompt's chunks are those same passages (the engine's top k for the question).
- While generating, each time a chunk of m tokens completes, its text is the query of a new
  `context.search` (the serving index), and the top k hits become that chunk's neighbours, which
  the following tokens attend to. Without a search function the engine's passages are reused.
- Greedy decoding with a KV cache; stops at end-of-sequence or a newline, like `stuff`.

Weights: `ReaderConfig.retro_weights`, default `<cache_dir>/retro/<generator>.safetensors`, written
by `ragserve train retro`. Without a weights file the retrofit is untrained: its gates are 0 and
the answers are the base model's (the reader still runs, and says so in the log).
"""

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from ragserve.atomic import write_file
from ragserve.errors import ReaderUnavailableError
from ragserve.types import Passage
from reader.adapters import Adapter
from reader.base import Answer, Reader, SearchFn
from reader.decoding import greedy
from reader.generator import Generator
from reader.lm import CausalLM
from reader.prompt import flatten, qa_prompt
from reader.registry import ReaderContext, register
from reader.retro_model import RetroConfig, Retrofit, RetroState

log = logging.getLogger(__name__)


def default_weights_path(cache_dir: Path, generator_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(generator_name).name) or "generator"
    return cache_dir.expanduser() / "retro" / f"{safe}.safetensors"


def save_retrofit(retrofit: Retrofit, path: Path, extra: dict[str, str] | None = None) -> None:
    """The new layers only (safetensors, config in the metadata); written atomically."""
    tensors = {name: t.detach().contiguous() for name, t in retrofit.state_dict().items()}
    metadata = {"config": retrofit.config.to_json(), "hidden_size": str(retrofit.base.config.hidden_size)}
    write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata={**metadata, **(extra or {})}))


def load_retrofit(path: Path, model: PreTrainedModel) -> Retrofit:
    with safe_open(str(path), framework="pt") as fh:
        metadata: dict[str, str] = fh.metadata() or {}
    if "config" not in metadata:
        raise ReaderUnavailableError(f"{path} is not a RETRO retrofit (no config in its metadata)")
    if metadata.get("hidden_size") != str(model.config.hidden_size):
        raise ReaderUnavailableError(
            f"{path} was trained for a generator of width {metadata.get('hidden_size')}, "
            f"the loaded generator has width {model.config.hidden_size}"
        )
    retrofit = Retrofit(model, RetroConfig.from_json(metadata["config"]))
    retrofit.load_state_dict(load_file(str(path)))
    return for_inference(retrofit)


def for_inference(retrofit: Retrofit) -> Retrofit:
    """On the base model's device, in its number format (bf16 where the generator runs in it: half
    the bytes, and no conversion of hidden states at the hooks), in inference mode. Every retrofit
    the reader runs goes through here, trained or not."""
    retrofit.to(device=retrofit.base.device, dtype=retrofit.base.dtype)
    retrofit.train(False)
    return retrofit


def neighbour_tensors(
    generator: Generator, per_chunk: Sequence[Sequence[Passage]], config: RetroConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask (L, k, r) of the first k passages of each chunk, each cut to r tokens
    (a chunk with fewer passages gets masked-out rows)."""
    k, r = config.neighbours, config.neighbour_tokens
    ids = torch.zeros(len(per_chunk), k, r, dtype=torch.long)  # (L, k, r)
    mask = torch.zeros(len(per_chunk), k, r, dtype=torch.bool)  # (L, k, r)
    for u, passages in enumerate(per_chunk):
        for j, passage in enumerate(list(passages)[:k]):
            tokens = generator.text.encode(flatten(passage.text))[:r]
            ids[u, j, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[u, j, : len(tokens)] = True
    return ids, mask


class RetroLM(CausalLM):
    """The decoding backend with the retrofit attached: every forward pass of the base model runs
    through `Retrofit.forward`, with the neighbours and positions of `state` (one answer's)."""

    def __init__(self, generator: Generator, retrofit: Retrofit, state: RetroState) -> None:
        super().__init__(generator.model, generator.lm.pad_id)
        self.retrofit = retrofit
        self.state = state

    def _forward(self, **inputs: Any) -> Any:
        return self.retrofit(inputs.pop("input_ids"), self.state, **inputs)


class RetroReader(Reader):
    name = "retro"

    def __init__(self, context: ReaderContext, retrofit: Retrofit) -> None:
        self.generator = context.generator
        self.config = context.config
        self.search: SearchFn | None = context.search
        self.retrofit = retrofit

    def _add(self, state: RetroState, passages: Sequence[Passage]) -> None:
        ids, mask = neighbour_tensors(self.generator, [passages], self.retrofit.config)  # (1, k, r)
        state.add_chunk(ids, mask)

    def answer(self, question: str, passages: Sequence[Passage], adapter: Adapter | None = None) -> Answer:
        assert adapter is None, "this reader does not adapt"
        used = list(passages)
        text = self.generator.text
        prompt = text.encode(qa_prompt(question, [text.truncate(p, self.config.max_passage_tokens) for p in used]))
        started = time.perf_counter()
        with self.generator.running():
            tokens, retrieve_ms = self._generate(prompt, used)
        elapsed = (time.perf_counter() - started) * 1000
        timings = {"generate": elapsed - retrieve_ms, "retrieve": retrieve_ms}
        return Answer(text=text.answer_text(tokens), passages=used, timings_ms=timings)

    def _generate(self, prompt: list[int], passages: list[Passage]) -> tuple[list[int], float]:
        """Greedy decoding through the shared loop; whenever a chunk of m tokens completes, its text
        retrieves the neighbours the following tokens attend to."""
        m, k = self.retrofit.config.chunk, self.retrofit.config.neighbours
        state = RetroState.empty(1, self.retrofit.config)
        for _ in range(len(prompt) // m):  # complete chunks of the prompt: the engine's passages
            self._add(state, passages)
        seq = list(prompt)
        retrieve_ms = 0.0

        def on_token(_: int, token: int) -> None:
            nonlocal retrieve_ms
            seq.append(token)
            if len(seq) % m == 0:  # a chunk just completed: its neighbours, before its last token is fed
                started = time.perf_counter()
                query = self.generator.text.decode(seq[-m:])
                found = self.search([query], k)[0] if self.search is not None else passages
                retrieve_ms += (time.perf_counter() - started) * 1000
                self._add(state, found)

        lm = RetroLM(self.generator, self.retrofit, state)
        batch = lm.start((), [prompt])
        (tokens,) = greedy(lm, batch, self.config.max_new_tokens, self.generator.text.ends_answer, on_token=on_token)
        return tokens, retrieve_ms


@register("retro")
def make_retro_reader(context: ReaderContext) -> Reader:
    path = context.config.retro_weights or default_weights_path(context.config.cache_dir, context.generator.name)
    model = context.generator.model
    if path.is_file():
        retrofit = load_retrofit(path, model)
        log.info("retro: loaded trained retrofit %s", path)
    elif context.config.retro_weights is not None:
        raise ReaderUnavailableError(f"retro weights {path} do not exist (train them with `ragserve train retro`)")
    else:
        retrofit = for_inference(Retrofit(model, RetroConfig()))
        log.info("retro: no trained retrofit at %s; gates are 0, so answers equal the base model's", path)
    return RetroReader(context, retrofit)
