"""Fusion-in-Decoder (Izacard & Grave 2021; Atlas) for encoder-decoder models, the T5 family.

Each passage is encoded on its own, together with the question, as
"question: … title: … context: …". The k encoder outputs (k, T, D) are laid end to end into one
sequence (1, k·T, D) and the decoder cross-attends to all of them at once while it answers
greedily. Passages never attend to each other, so the encoder's cost is linear in k; the decoder
still combines evidence from every passage. T5's cross-attention has no position bias, so the
order of the passages only permutes the keys the decoder sees.

The model is a local folder (`fid_model`, RAGSERVE_FID_MODEL) holding any AutoModelForSeq2SeqLM
checkpoint and its tokenizer, e.g. a FiD reader trained on NQ/TriviaQA or a plain T5; without one,
the generator is used when it is itself an encoder-decoder model.
"""

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ragserve.errors import ModelNotFoundError, ReaderUnavailableError
from ragserve.types import Passage
from reader.adapters import Adapter
from reader.base import Answer, Reader
from reader.decoding import greedy, without_end
from reader.generator import Generator
from reader.lm import Batch
from reader.prompt import as_data, flatten
from reader.registry import ReaderContext, register

UNAVAILABLE = (
    "fid needs an encoder-decoder model: set RAGSERVE_FID_MODEL to a local T5-family folder "
    "(any AutoModelForSeq2SeqLM checkpoint with its tokenizer, e.g. a FiD/T5 reader)"
)


def fid_input(question: str, passage: Passage | None) -> str:
    """One encoder input: the question with one passage (FiD's format), or the question alone."""
    if passage is None:
        return f"question: {flatten(question)}"
    return f"question: {flatten(question)} title: {as_data(passage.title)} context: {as_data(passage.text)}"


def fid_generator(context: ReaderContext) -> Generator:
    """The encoder-decoder model FiD reads with: `fid_model` (a local folder, float32, on the
    generator's device), else the generator itself when its backend fuses encodings."""
    folder = context.config.fid_model
    if folder is None:
        if not context.generator.lm.fuses_encodings:
            raise ReaderUnavailableError(UNAVAILABLE)
        return context.generator
    if not (Path(folder).expanduser() / "config.json").is_file():
        raise ModelNotFoundError(f"fid model {folder!r} is not a local model folder (no config.json)")
    generator = Generator(folder, context.config.cache_dir, "fp32", context.generator.device)
    if not generator.lm.fuses_encodings:
        raise ReaderUnavailableError(f"fid model {folder!r} is not an encoder-decoder model; " + UNAVAILABLE)
    return generator


@register("fid")
class FidReader(Reader):
    name = "fid"

    def __init__(self, context: ReaderContext) -> None:
        self.config = context.config
        self.generator = fid_generator(context)  # its lock: one generation at a time on its model

    @property
    def model(self) -> PreTrainedModel:
        return self.generator.model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.generator.text.tokenizer

    @property
    def stops(self) -> set[int]:
        return self.generator.text.stop_ids

    @property
    def start(self) -> int:
        """The decoder's start token."""
        start = self.generator.lm.decoder_start
        assert start is not None
        return start

    @property
    def lock(self) -> threading.Lock:
        return self.generator.lock

    def inputs(self, question: str, passages: Sequence[Passage]) -> list[str]:
        """The k encoder inputs of one question, each passage cut to `max_passage_tokens`."""
        cut = [self.generator.text.truncate(p, self.config.max_passage_tokens) for p in passages]
        return [fid_input(question, p) for p in cut] or [fid_input(question, None)]

    @torch.inference_mode()
    def encode(self, questions: Sequence[str], passages: Sequence[Sequence[Passage]]) -> tuple[Tensor, Tensor]:
        """All inputs of all questions encoded, then fused per question: encoder states
        (N, K·T, D) and their mask (N, K·T)."""
        batch = self.prefill(questions, passages)
        assert batch.encoded is not None
        return batch.encoded, batch.mask

    def prefill(self, questions: Sequence[str], passages: Sequence[Sequence[Passage]]) -> Batch:
        texts = [self.inputs(q, ps) for q, ps in zip(questions, passages, strict=True)]
        ids = [[self.tokenizer(t)["input_ids"] for t in per_question] for per_question in texts]  # with </s>
        return self.generator.lm.start_fused(ids)

    def greedy(
        self, encoded: Tensor, mask: Tensor, max_new_tokens: int, stops: set[int] | None = None
    ) -> tuple[list[list[int]], Tensor]:
        """Greedy answers (without the token that ended them) over fused encoder states, and the
        log-probabilities of the first step (N, V). `stops` ends answers instead of the model's
        own stop rule (tests)."""
        ends: Callable[[int], bool] = self.generator.text.ends_answer if stops is None else stops.__contains__
        lm = self.generator.lm
        with torch.inference_mode():
            batch = lm.start_encoded(encoded, mask)
            rows = greedy(lm, batch, max_new_tokens, ends)
        return [without_end(r, ends) for r in rows], batch.logprobs

    def answer_text(self, tokens: Sequence[int]) -> str:
        return self.generator.text.answer_text(tokens)

    def answer_batch(self, questions: Sequence[str], passages: Sequence[Sequence[Passage]]) -> list[Answer]:
        """Answers to several questions, each from its own passages, decoded together."""
        started = time.perf_counter()
        text, lm = self.generator.text, self.generator.lm
        with self.generator.running():
            tokens = greedy(lm, self.prefill(questions, passages), self.config.max_new_tokens, text.ends_answer)
        elapsed = (time.perf_counter() - started) * 1000
        return [
            Answer(text=text.answer_text(t), passages=list(ps), timings_ms={"generate": elapsed})
            for t, ps in zip(tokens, passages, strict=True)
        ]

    def answer(self, question: str, passages: Sequence[Passage], adapter: Adapter | None = None) -> Answer:
        assert adapter is None, "this reader does not adapt"
        (answer,) = self.answer_batch([question], [passages])
        return answer
