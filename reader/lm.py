"""Batched, cached decoding over a causal or an encoder-decoder LM: what every reader runs on.

A reader starts a batch of B rows — one prompt per row, e.g. one per retrieved passage — and
extends all rows token by token; the backend keeps each row's KV cache, attention mask and
positions, and hands back the next-token log-probabilities of every row. Rows can be selected
and repeated (beam search, scoring candidates under every passage).

Prompts are `prefix + suffix`. The prefix (the instruction and the worked examples, the same for
every request) of a causal LM is run once and its KV cache reused, so a request pays only for its
passages, question and answer. An encoder-decoder model encodes `prefix + suffix` as its input.

A causal batch may run an adapter (reader/adapters.py), one per row: each row keeps the adapter it
started with through every step, select and merge. A prompt-tuning adapter's learned embeddings
come before the prefix and are cached with it; the prefix cache is kept per adapter.

What a backend can do beyond that is a capability readers ask for instead of checking its type:
`merges` (rows of two batches become one: continuous batching), `fuses_caches` (separately
encoded passages laid side by side in one causal row: the `fusion` reader), `fuses_encodings`
(encoder states of several inputs end to end: Fusion-in-Decoder) and `adapts` (adapters per row).

The model work of every method runs on the process's compute thread (ragserve/compute.py), and
every forward pass goes through `_forward`, the one place a wrapper (RETRO's retrofit) hooks in.
Token choice and stopping are reader/decoding.py's.
"""

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from ragserve.compute import on_compute_thread
from reader import adapters as adapting
from reader.adapters import Adapter
from reader.kv_cache import GrowingLayer, growing_cache, of_layers

PREFIX_CACHE_SIZE = 8


@dataclass(frozen=True)
class Batch:
    """Decoding state of B rows."""

    logprobs: Tensor  # (B, V) log p(next token | everything so far), float32
    cache: Cache  # KV cache of the rows (mutated in place by `extend`; `select` makes it new)
    mask: Tensor  # (B, S) causal: attention mask over the cache; seq2seq: encoder mask
    positions: Tensor  # (B,) causal: position id of the next token; seq2seq: decoder steps so far
    encoded: Tensor | None = None  # (B, T, D) encoder states (seq2seq only)
    adapters: tuple[Adapter | None, ...] = ()  # causal: the adapter of each row; () = none at all

    @property
    def rows(self) -> int:
        return int(self.logprobs.shape[0])

    def adapters_of(self, rows: Sequence[int]) -> tuple[Adapter | None, ...]:
        return tuple(self.adapters[r] for r in rows) if self.adapters else ()


class LM(ABC):
    """The decoding interface readers use; `model` and `pad_id` are the underlying HF model."""

    model: PreTrainedModel
    pad_id: int
    merges: ClassVar[bool] = False
    fuses_caches: ClassVar[bool] = False
    fuses_encodings: ClassVar[bool] = False
    adapts: ClassVar[bool] = False
    decoder_start: int | None = None  # encoder-decoder models: the decoder's first token

    @abstractmethod
    def start(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], adapter: Adapter | None = None) -> Batch:
        """One row per suffix, each conditioned on prefix + suffix, all run with `adapter`."""

    @abstractmethod
    def extend(self, batch: Batch, tokens: Tensor) -> tuple[Batch, Tensor]:
        """Append `tokens` (B, n) to every row; returns the new state (next-token log-probs after
        the last token) and the log-probs after each appended token, (B, n, V)."""

    @abstractmethod
    def select(self, batch: Batch, rows: Tensor) -> Batch:
        """Rows `rows` (R,) of the batch, in that order, repeats allowed."""

    def merge(self, a: Batch, b: Batch) -> Batch:
        """The rows of `a` then those of `b` as one batch (`merges`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot merge batches")

    def fuse(self, batch: Batch, prefix_len: int) -> Batch:
        """One row holding every row's cache after the prefix side by side (`fuses_caches`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot fuse caches")

    def start_fused(self, inputs: Sequence[Sequence[Sequence[int]]]) -> Batch:
        """One row per group of inputs, each input encoded on its own and the encodings of a
        group laid end to end (`fuses_encodings`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot fuse encodings")

    def start_encoded(self, encoded: Tensor, mask: Tensor) -> Batch:
        """Rows over given encoder states (`fuses_encodings`)."""
        raise NotImplementedError(f"{type(self).__name__} has no encoder")

    def _forward(self, **inputs: Any) -> Any:
        """The model's forward pass; every method calls the model through here."""
        return self.model(**inputs)

    def step(self, batch: Batch, tokens: Tensor) -> Batch:
        """Append one token (B,) to every row."""
        assert tokens.shape == (batch.rows,), "one token per row"
        return self.extend(batch, tokens[:, None])[0]

    def continuation_logprob(self, batch: Batch, continuations: Sequence[Sequence[int]]) -> Tensor:
        """(B,) log p(continuation_b | row b) of one continuation per row, teacher-forced."""
        assert len(continuations) == batch.rows and all(continuations), "one non-empty continuation per row"
        width = max(len(c) for c in continuations)
        tokens = torch.full((batch.rows, width), self.pad_id, dtype=torch.long)  # (B, C)
        for row, cont in enumerate(continuations):
            tokens[row, : len(cont)] = torch.tensor(cont)
        _, after = self.extend(batch, tokens)  # (B, C, V): after[:, t] predicts token t + 1
        predictors = torch.cat([batch.logprobs[:, None], after[:, :-1]], dim=1)  # (B, C, V)
        picked = predictors.gather(2, tokens[:, :, None])[:, :, 0]  # (B, C)
        real = torch.arange(width)[None, :] < torch.tensor([len(c) for c in continuations])[:, None]  # (B, C)
        return (picked * real).sum(dim=1)


def kv_of(cache: Cache) -> list[tuple[Tensor, Tensor]]:
    """Per layer (keys, values), each (B, H, S, Dh)."""
    pairs = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        assert isinstance(keys, Tensor) and isinstance(values, Tensor), "expected an attention KV cache"
        pairs.append((keys, values))
    return pairs


class CausalLM(LM):
    merges = True
    fuses_caches = True
    adapts = True

    def __init__(self, model: PreTrainedModel, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self._prefixes: OrderedDict[tuple[str, tuple[int, ...]], list[tuple[Tensor, Tensor]]] = OrderedDict()

    def _prefix_kv(self, prefix: Sequence[int], adapter: Adapter | None) -> list[tuple[Tensor, Tensor]]:
        """Per layer (keys, values), each (1, H, P, Dh), P counting a prompt-tuning adapter's
        virtual tokens: computed once per distinct adapter and prefix."""
        key = (adapter.key if adapter else "", tuple(prefix))
        if key not in self._prefixes:
            ids = torch.tensor([list(prefix)], dtype=torch.long)  # (1, P)
            inputs: dict[str, Tensor] = {"input_ids": ids}
            if adapter is not None and adapter.virtual_tokens is not None:  # as peft runs prompt tuning
                embeds = self.model.get_input_embeddings()(ids)  # (1, P, D)
                inputs = {"inputs_embeds": torch.cat([adapter.virtual_tokens[None].to(embeds.dtype), embeds], dim=1)}
            with adapting.rows([adapter]):
                out = self._forward(**inputs, use_cache=True, logits_to_keep=1)
            self._prefixes[key] = kv_of(out.cache)
            if len(self._prefixes) > PREFIX_CACHE_SIZE:
                self._prefixes.popitem(last=False)
        self._prefixes.move_to_end(key)
        return self._prefixes[key]

    @on_compute_thread
    def start(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], adapter: Adapter | None = None) -> Batch:
        assert suffixes and all(suffixes), "every row needs a non-empty suffix"
        virtual = adapter is not None and adapter.virtual_tokens is not None
        rows, width = len(suffixes), max(len(s) for s in suffixes)
        prefix_kv = self._prefix_kv(prefix, adapter) if prefix or virtual else []
        p = int(prefix_kv[0][0].shape[2]) if prefix_kv else 0
        kv = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix_kv]
        # Suffixes are left-padded so every row's last token is at the end; positions are explicit,
        # so the real tokens of every row sit at positions p, p+1, ... whatever their padding.
        tokens = torch.full((rows, width), self.pad_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros((rows, p + width), dtype=torch.long)  # (B, P+L)
        mask[:, :p] = 1
        positions = torch.zeros((rows, width), dtype=torch.long)  # (B, L)
        for row, suffix in enumerate(suffixes):
            n = len(suffix)
            tokens[row, width - n :] = torch.tensor(list(suffix))
            mask[row, p + width - n :] = 1
            positions[row, width - n :] = torch.arange(p, p + n)
        cache = growing_cache(kv)  # the prefix's KV copied once into room that the suffix and answer fill
        adapters = (adapter,) * rows if adapter is not None else ()
        with adapting.rows(adapters):
            out = self._forward(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
        return Batch(logprobs, out.cache, mask, positions[:, -1] + 1, adapters=adapters)

    @on_compute_thread
    def extend(self, batch: Batch, tokens: Tensor) -> tuple[Batch, Tensor]:
        rows, n = tokens.shape
        assert rows == batch.rows
        mask = torch.cat([batch.mask, torch.ones((rows, n), dtype=torch.long)], dim=1)  # (B, S+n)
        positions = batch.positions[:, None] + torch.arange(n)[None, :]  # (B, n)
        with adapting.rows(batch.adapters):
            out = self._forward(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=positions,
                cache=batch.cache,
                use_cache=True,
                logits_to_keep=0 if n > 1 else 1,
            )
        after = torch.log_softmax(out.logits.float(), dim=-1)  # (B, n, V)
        return Batch(after[:, -1], out.cache, mask, batch.positions + n, adapters=batch.adapters), after

    @on_compute_thread
    def select(self, batch: Batch, rows: Tensor) -> Batch:
        mask = batch.mask[rows]  # (R, S)
        # Columns no selected row attends to (left padding of rows that are gone) are dropped.
        first = int(mask.any(dim=0).int().argmax()) if mask.numel() else 0
        layers = [(keys[rows, :, first:], values[rows, :, first:]) for keys, values in kv_of(batch.cache)]
        adapters = batch.adapters_of(rows.tolist())
        return Batch(
            batch.logprobs[rows], growing_cache(layers), mask[:, first:], batch.positions[rows], adapters=adapters
        )

    @on_compute_thread
    def merge(self, a: Batch, b: Batch) -> Batch:
        """The rows of `a` then those of `b` as one batch: the shorter cache is left-padded with
        masked-out columns, so every row keeps its own positions and its last token at the end."""
        width = max(a.mask.shape[1], b.mask.shape[1])
        pairs = zip(kv_of(a.cache), kv_of(b.cache), strict=True)
        layers = [GrowingLayer.stacked([kv_a, kv_b], width) for kv_a, kv_b in pairs]  # each (Ba+Bb, H, width, Dh)
        mask_a = F.pad(a.mask, (width - a.mask.shape[1], 0))  # (Ba, width)
        mask_b = F.pad(b.mask, (width - b.mask.shape[1], 0))  # (Bb, width)
        adapters = (a.adapters or (None,) * a.rows) + (b.adapters or (None,) * b.rows)
        return Batch(
            torch.cat([a.logprobs, b.logprobs]),
            of_layers(layers),
            torch.cat([mask_a, mask_b]),
            torch.cat([a.positions, b.positions]),
            adapters=adapters if any(adapters) else (),
        )

    @on_compute_thread
    def fuse(self, batch: Batch, prefix_len: int) -> Batch:
        """One row whose cache holds the prefix once, then every row's tokens after the prefix,
        side by side at the positions they were encoded at (fusion of separately encoded passages).
        The next token is at the position after the longest row."""
        kv = []
        for keys, values in kv_of(batch.cache):  # each (B, H, P+L, Dh)
            b, h, s, d = keys.shape
            assert s == batch.mask.shape[1], "cache and mask disagree"
            fused_k = keys[:, :, prefix_len:].transpose(0, 1).reshape(1, h, b * (s - prefix_len), d)  # (1, H, B*L, Dh)
            fused_v = values[:, :, prefix_len:].transpose(0, 1).reshape(1, h, b * (s - prefix_len), d)
            kv.append(
                (torch.cat([keys[:1, :, :prefix_len], fused_k], 2), torch.cat([values[:1, :, :prefix_len], fused_v], 2))
            )
        mask = torch.cat([batch.mask[:1, :prefix_len], batch.mask[:, prefix_len:].reshape(1, -1)], dim=1)  # (1, P+B*L)
        logprobs = batch.logprobs[:1]  # unused: the caller extends the fused row before reading it
        return Batch(logprobs, growing_cache(kv), mask, batch.positions.max()[None], adapters=batch.adapters_of([0]))


class Seq2SeqLM(LM):
    fuses_encodings = True

    def __init__(self, model: PreTrainedModel, pad_id: int) -> None:
        assert model.config.is_encoder_decoder, "Seq2SeqLM needs an encoder-decoder model"
        self.model = model
        self.pad_id = pad_id
        start = model.config.decoder_start_token_id
        self.decoder_start = int(start if start is not None else pad_id)

    @on_compute_thread
    def start(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], adapter: Adapter | None = None) -> Batch:
        assert adapter is None, "adapters need a causal generator"
        inputs = [[*prefix, *s] for s in suffixes]
        rows, width = len(inputs), max(len(i) for i in inputs)
        tokens = torch.full((rows, width), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((rows, width), dtype=torch.long)  # (B, T)
        for row, ids in enumerate(inputs):
            tokens[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        return self.start_encoded(*self._encode(tokens, mask))

    @on_compute_thread
    def start_fused(self, inputs: Sequence[Sequence[Sequence[int]]]) -> Batch:
        """Fusion-in-Decoder: every input of every group encoded in one padded batch, then the
        encodings of a group laid end to end, (N, K·T, D) with K the largest group."""
        assert inputs and all(inputs), "every row needs at least one input"
        flat = [list(ids) for group in inputs for ids in group]
        width = max(len(ids) for ids in flat)
        tokens = torch.full((len(flat), width), self.pad_id, dtype=torch.long)  # (Σk, T)
        mask = torch.zeros((len(flat), width), dtype=torch.long)  # (Σk, T)
        for row, ids in enumerate(flat):  # right-padded, as the encoder expects
            tokens[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        encoded, _ = self._encode(tokens, mask)  # (Σk, T, D)
        return self.start_encoded(*fuse_encodings(encoded, mask, [len(group) for group in inputs]))

    def _encode(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        encoded = self.model.get_encoder()(input_ids=tokens, attention_mask=mask).last_hidden_state  # (B, T, D)
        return encoded, mask

    @on_compute_thread
    def start_encoded(self, encoded: Tensor, mask: Tensor) -> Batch:
        """Rows over given encoder states (B, S, D) and mask (B, S), after the decoder's start token."""
        rows = encoded.shape[0]
        assert mask.shape == encoded.shape[:2], "one mask entry per encoder state"
        empty = Batch(
            torch.empty(rows, 0),
            EncoderDecoderCache(DynamicCache(), DynamicCache()),
            mask,
            torch.zeros(rows, dtype=torch.long),
            encoded,
        )
        start = self.decoder_start
        assert start is not None
        return self.extend(empty, torch.full((rows, 1), start, dtype=torch.long))[0]

    @on_compute_thread
    def extend(self, batch: Batch, tokens: Tensor) -> tuple[Batch, Tensor]:
        assert batch.encoded is not None
        out = self._forward(
            encoder_outputs=BaseModelOutput(last_hidden_state=batch.encoded),
            attention_mask=batch.mask,
            decoder_input_ids=tokens,
            cache=batch.cache,
            use_cache=True,
        )
        after = torch.log_softmax(out.logits.float(), dim=-1)  # (B, n, V)
        return replace(
            batch, logprobs=after[:, -1], cache=out.cache, positions=batch.positions + tokens.shape[1]
        ), after

    @on_compute_thread
    def select(self, batch: Batch, rows: Tensor) -> Batch:
        assert batch.encoded is not None and isinstance(batch.cache, EncoderDecoderCache)
        parts = (batch.cache.self_attention_cache, batch.cache.cross_attention_cache)
        caches = [DynamicCache(ddp_cache_data=[(k[rows], v[rows]) for k, v in kv_of(part)]) for part in parts]
        return Batch(
            batch.logprobs[rows],
            EncoderDecoderCache(*caches),
            batch.mask[rows],
            batch.positions[rows],
            batch.encoded[rows],
        )


def fuse_encodings(encoded: Tensor, mask: Tensor, counts: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Per group, the encoder states of its inputs end to end: (Σk, T, D) -> (N, K·T, D) with
    K = max k, and the mask (Σk, T) -> (N, K·T). Groups with fewer inputs get masked zeros."""
    rows, width, dim = encoded.shape  # (Σk, T, D)
    assert mask.shape == (rows, width) and sum(counts) == rows and min(counts) > 0, "one row per input"
    most = max(counts)
    fused = encoded.new_zeros((len(counts), most * width, dim))  # (N, K·T, D)
    fused_mask = mask.new_zeros((len(counts), most * width))  # (N, K·T)
    per_group = zip(torch.split(encoded, list(counts)), torch.split(mask, list(counts)), strict=True)
    for i, (states, part) in enumerate(per_group):  # (k, T, D), (k, T)
        k = states.shape[0]
        fused[i, : k * width] = states.reshape(k * width, dim)  # (k, T, D) -> (k·T, D)
        fused_mask[i, : k * width] = part.reshape(k * width)  # (k, T) -> (k·T,)
    return fused, fused_mask


def lm_for(model: PreTrainedModel, pad_id: int) -> LM:
    """The backend for a loaded model."""
    backend: type[LM] = Seq2SeqLM if model.config.is_encoder_decoder else CausalLM
    return backend(model, pad_id)  # type: ignore[call-arg]
