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
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from reader.adapters import Adapter
from reader.base import Answer, Reader, ReaderContext, register
from reader.prompt import flatten
from retriever.errors import ModelNotFoundError, ReaderUnavailableError
from retriever.types import Passage

UNAVAILABLE = (
    "fid needs an encoder-decoder model: set RAGSERVE_FID_MODEL to a local T5-family folder "
    "(any AutoModelForSeq2SeqLM checkpoint with its tokenizer, e.g. a FiD/T5 reader)"
)


def fid_input(question: str, passage: Passage | None) -> str:
    """One encoder input: the question with one passage (FiD's format), or the question alone."""
    if passage is None:
        return f"question: {flatten(question)}"
    return f"question: {flatten(question)} title: {flatten(passage.title)} context: {flatten(passage.text)}"


def truncate(tokenizer: PreTrainedTokenizerBase, passage: Passage, max_tokens: int) -> Passage:
    """The passage cut to `max_tokens` tokens of the reader's tokenizer."""
    ids = tokenizer.encode(passage.text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return passage
    text = tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)
    assert isinstance(text, str)
    return replace(passage, text=text)


def load_seq2seq(folder: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """An encoder-decoder model (float32, inference mode) and its tokenizer from a local folder."""
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"fid model {folder!r} is not a local model folder (no config.json)")
    if not AutoConfig.from_pretrained(path, local_files_only=True).is_encoder_decoder:
        raise ReaderUnavailableError(f"fid model {folder!r} is not an encoder-decoder model; " + UNAVAILABLE)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    model.train(False)  # inference mode for dropout and friends
    return model, tokenizer


def stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    for eos in (tokenizer.eos_token_id, model.generation_config.eos_token_id):
        ids.update([eos] if isinstance(eos, int) else eos or [])
    return ids


def decoder_start(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    for start in (model.config.decoder_start_token_id, model.generation_config.decoder_start_token_id):
        if isinstance(start, int):
            return start
    assert isinstance(tokenizer.pad_token_id, int), "no decoder start token and no pad token"
    return tokenizer.pad_token_id  # T5's convention


def fuse(encoded: Tensor, mask: Tensor, counts: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Per question, the encoder states of its passages end to end: (Σk, T, D) -> (N, K·T, D) with
    K = max k, and the mask (Σk, T) -> (N, K·T). Questions with fewer passages get masked zeros."""
    rows, width, dim = encoded.shape  # (Σk, T, D)
    assert mask.shape == (rows, width) and sum(counts) == rows and min(counts) > 0, "one row per passage"
    most = max(counts)
    fused = encoded.new_zeros((len(counts), most * width, dim))  # (N, K·T, D)
    fused_mask = mask.new_zeros((len(counts), most * width))  # (N, K·T)
    per_question = zip(torch.split(encoded, list(counts)), torch.split(mask, list(counts)), strict=True)
    for i, (states, part) in enumerate(per_question):  # (k, T, D), (k, T)
        k = states.shape[0]
        fused[i, : k * width] = states.reshape(k * width, dim)  # (k, T, D) -> (k·T, D)
        fused_mask[i, : k * width] = part.reshape(k * width)  # (k, T) -> (k·T,)
    return fused, fused_mask


@torch.inference_mode()
def greedy(
    model: PreTrainedModel, encoded: Tensor, mask: Tensor, max_new_tokens: int, start: int, stops: set[int]
) -> tuple[list[list[int]], Tensor]:
    """Greedy decoding of N rows over their encoder states (N, S, D), with the decoder's KV cache.
    A row ends at a stop token (not kept) or after `max_new_tokens`. Also returns the logits of
    the first step, (N, V)."""
    rows = encoded.shape[0]
    assert mask.shape == encoded.shape[:2] and max_new_tokens > 0
    states = BaseModelOutput(last_hidden_state=encoded)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())  # cross-attention K/V computed on step 1
    token = torch.full((rows, 1), start, dtype=torch.long)  # (N, 1)
    answers: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    first: Tensor | None = None
    for _ in range(max_new_tokens):
        out = model(encoder_outputs=states, attention_mask=mask, decoder_input_ids=token, cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[:, -1].float()  # (N, V)
        first = logits if first is None else first
        token = logits.argmax(dim=-1, keepdim=True)  # (N, 1)
        for row, chosen in enumerate(token[:, 0].tolist()):
            done[row] = done[row] or chosen in stops
            if not done[row]:
                answers[row].append(chosen)
        if all(done):
            break
    assert first is not None
    return answers, first


@register("fid")
class FidReader(Reader):
    name = "fid"

    def __init__(self, context: ReaderContext) -> None:
        self.config = context.config
        self.lock: threading.Lock
        if self.config.fid_model:
            self.model, self.tokenizer = load_seq2seq(self.config.fid_model)
            self.lock = threading.Lock()
        elif context.generator.model.config.is_encoder_decoder:
            self.model, self.tokenizer = context.generator.model, context.generator.tokenizer
            self.lock = context.generator.lock  # one generation at a time on the shared model
        else:
            raise ReaderUnavailableError(UNAVAILABLE)
        self.start = decoder_start(self.model, self.tokenizer)
        self.stops = stop_ids(self.model, self.tokenizer)

    def inputs(self, question: str, passages: Sequence[Passage]) -> list[str]:
        """The k encoder inputs of one question, each passage cut to `max_passage_tokens`."""
        cut = [truncate(self.tokenizer, p, self.config.max_passage_tokens) for p in passages]
        return [fid_input(question, p) for p in cut] or [fid_input(question, None)]

    @torch.inference_mode()
    def encode(self, questions: Sequence[str], passages: Sequence[Sequence[Passage]]) -> tuple[Tensor, Tensor]:
        """All inputs of all questions encoded as one padded batch, then fused per question:
        encoder states (N, K·T, D) and their mask (N, K·T)."""
        texts = [self.inputs(q, ps) for q, ps in zip(questions, passages, strict=True)]
        batch = self.tokenizer([t for per_question in texts for t in per_question], padding=True, return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (Σk, T) each
        encoded = self.model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state  # (Σk, T, D)
        return fuse(encoded, mask, [len(t) for t in texts])

    def answer_text(self, tokens: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
        assert isinstance(text, str)
        return text.split("\n")[0].strip()

    def answer_batch(self, questions: Sequence[str], passages: Sequence[Sequence[Passage]]) -> list[Answer]:
        """Answers to several questions, each from its own passages, decoded together."""
        started = time.perf_counter()
        with self.lock:
            encoded, mask = self.encode(questions, passages)
            tokens, _ = greedy(self.model, encoded, mask, self.config.max_new_tokens, self.start, self.stops)
        elapsed = (time.perf_counter() - started) * 1000
        return [
            Answer(text=self.answer_text(t), passages=list(ps), timings_ms={"generate": elapsed})
            for t, ps in zip(tokens, passages, strict=True)
        ]

    def answer(self, question: str, passages: Sequence[Passage], adapter: Adapter | None = None) -> Answer:
        assert adapter is None, "this reader does not adapt"
        (answer,) = self.answer_batch([question], [passages])
        return answer
