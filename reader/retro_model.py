"""RETRO retrofit (Borgeaud et al., 2021): chunked cross-attention added to a frozen decoder-only LM.

The input is split into chunks of m tokens. Chunk u has k neighbours (retrieved passages, each
cut or padded to r tokens: the retrieved text plus the text that follows it in its document, i.e.
the paper's [N, F]). The pieces, one class each:

- `NeighbourEncoder`: a small bidirectional transformer over each neighbour's tokens (embedded
  with the frozen LM token embeddings, plus learned positions). Each layer also cross-attends to
  the hidden states of the chunk that retrieved the neighbour, taken at the first CCA layer: the
  encoder is "conditioned on the chunk", as in the paper. It runs once per forward, at the first
  CCA layer, and every CCA layer reads its output.
- `ChunkedCrossAttention` (CCA): hidden states are shifted by m−1, so token i attends to the
  encoded neighbours of chunk u = (i+1)//m − 1 — the last chunk that is complete at i (token
  u·m+m−1 is the last of chunk u: it predicts the first token of chunk u+1). Tokens before
  position m−1, and tokens whose chunk has no neighbours, get exactly 0.
- `Retrofit`: the wrapper. After each decoder layer in `layers`, the residual stream becomes
  h + tanh(gate) · CCA(h). Gates start at 0, so an untrained retrofit is the base model exactly.
  The base model is never modified: forward hooks are attached only while `attached(state)` is
  open (callers hold `Generator.lock`, as every user of the shared model does). The new layers
  compute in their own number format (`Retrofit.dtype`); hidden states cross into it and back at
  the hooks, so fp32 layers also run on a bf16 generator (an uncast fp32 retrofit on a bf16
  generator once made every `retro` answer fail with a dtype mismatch: HTTP 500).

`RetroState` carries what a forward needs beyond the token ids: the neighbours known so far, the
absolute position of the next token (for KV-cached generation), the first CCA layer's hidden
states of earlier calls (the encoder's conditioning), and the encoded neighbours computed so far.
A full-sequence forward (training, scoring) uses a fresh state; generation keeps one state per
answer and adds neighbours at every chunk boundary (`RetroState.add_chunk`).
"""

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel


@dataclass(frozen=True, slots=True)
class RetroConfig:
    chunk: int = 32  # m: tokens per chunk
    neighbours: int = 2  # k: neighbours per chunk
    neighbour_tokens: int = 64  # r: tokens per neighbour (retrieved chunk + continuation), 2·m as in the paper
    layers: tuple[int, ...] = (12, 17, 22, 27)  # CCA after these decoder layers (0-based)
    heads: int = 9  # CCA heads (model width must divide)
    encoder_dim: int = 384
    encoder_layers: int = 2
    encoder_heads: int = 6

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "RetroConfig":
        raw: dict[str, Any] = json.loads(text)
        raw["layers"] = tuple(raw["layers"])
        return RetroConfig(**raw)


@dataclass(slots=True)
class RetroState:
    """Per-sequence-batch state of a retrofit forward (see the module docstring)."""

    neighbours: torch.Tensor  # (B, L, k, r) token ids of the neighbours of chunks 0..L-1
    mask: torch.Tensor  # (B, L, k, r) bool: True = a real token, False = padding / no neighbour
    position: int = 0  # absolute position of the next token fed to the model
    memory: torch.Tensor | None = None  # (B, P, D) first-CCA-layer hidden states of positions 0..P-1
    encoded: torch.Tensor | None = None  # (B, E, k*r, De) encoded neighbours of chunks 0..E-1
    pending: int = 0  # tokens of the call in flight

    @staticmethod
    def empty(batch: int, config: RetroConfig) -> "RetroState":
        shape = (batch, 0, config.neighbours, config.neighbour_tokens)
        return RetroState(torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.bool))

    def add_chunk(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        """Neighbours of the next chunk: ids and mask (B, k, r)."""
        assert ids.shape == mask.shape == self.neighbours.shape[:1] + self.neighbours.shape[2:]
        self.neighbours = torch.cat([self.neighbours, ids[:, None]], dim=1)
        self.mask = torch.cat([self.mask, mask[:, None]], dim=1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention, (..., H, Tq, dh) x (..., H, Tk, dh); mask (..., 1, 1|Tq, Tk) bool True = attend.
    A query with no key to attend gets 0 (never NaN)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (..., H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    out = scores.softmax(dim=-1) @ v  # (..., H, Tq, dh)
    if mask is not None:
        out = out * mask.any(dim=-1, keepdim=True)
    return out


class Attention(nn.Module):
    """Multi-head attention without positions: queries from x, keys/values from a memory."""

    def __init__(self, dim: int, memory_dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        assert dim % heads == 0
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(memory_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        *lead, tq, dim = x.shape  # x: (..., Tq, D); memory: (..., Tk, Dm)
        tk = memory.shape[-2]
        h = self.heads
        q = self.q(x).view(*lead, tq, h, dim // h).transpose(-2, -3)  # (..., H, Tq, dh)
        k, v = self.kv(memory).view(*lead, tk, 2, h, dim // h).unbind(dim=-3)  # (..., Tk, H, dh) each
        y = _attend(q, k.transpose(-2, -3), v.transpose(-2, -3), mask)  # (..., H, Tq, dh)
        out: torch.Tensor = self.out(y.transpose(-2, -3).reshape(*lead, tq, dim))  # (..., Tq, out_dim)
        return out


class EncoderLayer(nn.Module):
    """Pre-norm: bidirectional self-attention over a neighbour, cross-attention to its chunk, MLP."""

    def __init__(self, dim: int, chunk_dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, dim, heads, dim)
        self.cross_attn = Attention(dim, chunk_dim, heads, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        # x: (N, k, r, De) neighbours; mask: (N, k, r); chunk: (N, m, D) hidden states of the retrieving chunk
        n, k = x.shape[:2]
        pad = mask[:, :, None, None, :]  # (N, k, 1, 1, r): keys of the same neighbour
        x = x + self.self_attn(self.norm1(x), self.norm1(x), pad)
        cond = chunk[:, None].expand(n, k, *chunk.shape[1:])  # (N, k, m, D)
        x = x + self.cross_attn(self.norm2(x), cond, None)
        mlp: torch.Tensor = self.mlp(self.norm3(x))
        return x + mlp  # (N, k, r, De)


class NeighbourEncoder(nn.Module):
    def __init__(self, config: RetroConfig, model_dim: int) -> None:
        super().__init__()
        de = config.encoder_dim
        self.inp = nn.Linear(model_dim, de, bias=False)
        self.pos = nn.Parameter(torch.randn(config.neighbour_tokens, de) * 0.02)
        self.layers = nn.ModuleList(
            EncoderLayer(de, model_dim, config.encoder_heads) for _ in range(config.encoder_layers)
        )
        self.norm = nn.LayerNorm(de)

    def forward(self, embedded: torch.Tensor, mask: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        # embedded: (N, k, r, D) LM token embeddings; mask: (N, k, r); chunk: (N, m, D)
        x = self.inp(embedded) + self.pos  # (N, k, r, De)
        for layer in self.layers:
            x = layer(x, mask, chunk)
        out: torch.Tensor = self.norm(x)  # (N, k, r, De)
        return out


class ChunkedCrossAttention(nn.Module):
    def __init__(self, config: RetroConfig, model_dim: int) -> None:
        super().__init__()
        self.m = config.chunk
        self.norm = nn.LayerNorm(model_dim)
        self.attn = Attention(model_dim, config.encoder_dim, config.heads, model_dim)

    def forward(self, h: torch.Tensor, start: int, encoded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h: (B, T, D) hidden states of absolute positions start..start+T-1; encoded: (B, E, K, De)
        and mask (B, E, K) for chunks 0..E-1 (K = k·r). Returns (B, T, D), 0 where nothing is attended."""
        b, t, d = h.shape
        m = self.m
        out = h.new_zeros(b, t, d)
        skip = max(0, (m - 1) - start)  # positions before m-1 see no complete chunk
        if skip >= t:
            return out
        s = start + skip - (m - 1)  # shifted index of the first attending position (>= 0)
        first, lead = divmod(s, m)  # its chunk, and its offset in that chunk
        n = math.ceil((lead + t - skip) / m)  # chunks touched by this call
        q = F.pad(self.norm(h[:, skip:]), (0, 0, lead, n * m - lead - (t - skip)))  # (B, n*m, D)
        q = q.view(b, n, m, d)  # (B, n, m, D): shifted chunk j attends to neighbours of chunk first+j
        have = max(0, min(n, encoded.shape[1] - first))  # chunks with encoded neighbours
        if have == 0:
            return out
        kv = encoded[:, first : first + have]  # (B, have, K, De)
        keys = mask[:, first : first + have, None, None, :]  # (B, have, 1, 1, K)
        y = self.attn(q[:, :have], kv, keys)  # (B, have, m, D)
        y = y.reshape(b, have * m, d)[:, lead : lead + t - skip]  # (B, <=T-skip, D)
        out[:, skip : skip + y.shape[1]] = y
        return out


class Retrofit(nn.Module):
    """The new layers of a RETRO retrofit around a (frozen) Hugging Face causal LM."""

    def __init__(self, model: PreTrainedModel, config: RetroConfig) -> None:
        super().__init__()
        dim = int(model.config.hidden_size)
        n_layers = int(model.config.num_hidden_layers)
        assert all(0 <= i < n_layers for i in config.layers), f"CCA layers {config.layers} outside 0..{n_layers - 1}"
        assert list(config.layers) == sorted(set(config.layers)), "CCA layers must be increasing"
        self.config = config
        self.encoder = NeighbourEncoder(config, dim)
        self.cca = nn.ModuleList(ChunkedCrossAttention(config, dim) for _ in config.layers)
        self.gates = nn.Parameter(torch.zeros(len(config.layers)))  # tanh(0) = 0: starts as the base model
        # Not a submodule: the base model's weights are not the retrofit's (state_dict = new layers only).
        self._base: list[PreTrainedModel] = [model]
        self._state: RetroState | None = None

    @property
    def base(self) -> PreTrainedModel:
        return self._base[0]

    @property
    def dtype(self) -> torch.dtype:
        """The number format the new layers compute in. The hooks convert the base model's hidden
        states to it and CCA's output back, so a retrofit in another format than its base (fp32
        layers on a bf16 generator: an untrained or freshly trained retrofit not yet cast by
        `reader.retro.for_inference`) still runs instead of failing in its first matmul."""
        return self.gates.dtype

    @contextmanager
    def attached(self, state: RetroState) -> Iterator[None]:
        """Hooks on the base model's CCA layers for the duration of the block; every model call
        inside advances `state.position` by its length."""
        layers = self.base.model.layers
        handles = [layers[i].register_forward_hook(self._hook(j)) for j, i in enumerate(self.config.layers)]
        self._state = state
        try:
            yield
        finally:
            self._state = None
            for handle in handles:
                handle.remove()

    def forward(self, input_ids: torch.Tensor, state: RetroState, **kwargs: Any) -> Any:
        """The base model's forward with CCA; kwargs go to the base model (cache=, logits_to_keep=...)."""
        with self.attached(state):
            state.pending = input_ids.shape[1]
            result = self.base(input_ids=input_ids, **kwargs)
            state.position += state.pending
            state.pending = 0
        return result

    def _hook(self, j: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            state = self._state
            assert state is not None and isinstance(output, torch.Tensor)
            h = output  # (B, T, D)
            assert h.shape[1] == state.pending, "the retrofit must see every token (call through Retrofit)"
            if j == 0:
                self._remember(h, state)
            assert state.encoded is not None
            flat_mask = state.mask.flatten(2)[:, : state.encoded.shape[1]]  # (B, E, k*r)
            y: torch.Tensor = self.cca[j](h.to(self.dtype), state.position, state.encoded, flat_mask)  # (B, T, D)
            return h + (torch.tanh(self.gates[j]) * y).to(h.dtype)  # back in the base model's format

        return hook

    def _remember(self, h: torch.Tensor, state: RetroState) -> None:
        """Keep the first CCA layer's hidden states and encode the neighbours that became usable."""
        state.memory = h if state.memory is None else torch.cat([state.memory, h], dim=1)  # (B, P, D)
        m = self.config.chunk
        complete = state.memory.shape[1] // m  # chunks whose hidden states are all known
        usable = min(complete, state.neighbours.shape[1])
        done = 0 if state.encoded is None else state.encoded.shape[1]
        if state.encoded is None or usable > done:
            fresh = self._encode(state, done, max(usable, done))  # (B, usable-done, k*r, De)
            state.encoded = fresh if state.encoded is None else torch.cat([state.encoded, fresh], dim=1)

    def _encode(self, state: RetroState, lo: int, hi: int) -> torch.Tensor:
        assert state.memory is not None
        b, _, k, r = state.neighbours.shape
        m, de = self.config.chunk, self.config.encoder_dim
        ids, mask = state.neighbours[:, lo:hi], state.mask[:, lo:hi]  # (B, n, k, r)
        n = hi - lo
        if n == 0:
            return state.memory.new_zeros(b, 0, k * r, de, dtype=self.dtype)
        embedded = self.base.get_input_embeddings()(ids).to(self.dtype)  # (B, n, k, r, D)
        chunk = state.memory[:, lo * m : hi * m].reshape(b * n, m, -1).to(self.dtype)  # (B*n, m, D)
        assert chunk.shape[0] == b * n
        enc: torch.Tensor = self.encoder(embedded.flatten(0, 1), mask.flatten(0, 1), chunk)  # (B*n, k, r, De)
        return enc.view(b, n, k * r, de)
