"""A lean forward pass for BERT-family sentence encoders with mean pooling (all-MiniLM-L6-v2).

Same weights, same arithmetic as the sentence-transformers modules (Transformer -> Pooling(mean)
-> Normalize), without their per-call Python work: on a lone query the Hugging Face forward spends
most of its ~5 ms in module dispatch, mask building and argument checks, not in matrix products,
and that time holds the GIL that the server's request threads need. Here a layer is six tensor
ops, and the query, key and value projections are one matrix product.

`LeanBert.of(model)` returns None for anything it does not reproduce exactly (another
architecture, pooling, activation or position scheme); the encoder then runs the model as loaded.
Equality with `SentenceTransformer.encode` is tested in tests/test_encoder.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor


@dataclass(frozen=True)
class _Layer:
    qkv_w: Tensor  # (3D, D): query, key and value projections stacked
    qkv_b: Tensor  # (3D,)
    out_w: Tensor  # (D, D)
    out_b: Tensor
    ln1: tuple[Tensor, Tensor]  # LayerNorm after attention: weight, bias (D,)
    up_w: Tensor  # (F, D)
    up_b: Tensor
    down_w: Tensor  # (D, F)
    down_b: Tensor
    ln2: tuple[Tensor, Tensor]  # LayerNorm after the feed-forward block


class LeanBert:
    def __init__(self, model: SentenceTransformer) -> None:
        bert: Any = model[0].auto_model  # a transformers BertModel (checked in `of`)
        config = bert.config
        self.heads = int(config.num_attention_heads)
        self.eps = float(config.layer_norm_eps)
        emb = bert.embeddings
        self.word = emb.word_embeddings.weight  # (V, D)
        self.position = emb.position_embeddings.weight  # (P, D)
        self.token_type = emb.token_type_embeddings.weight[0]  # (D,): every token is segment 0
        self.emb_ln = (emb.LayerNorm.weight, emb.LayerNorm.bias)
        self.layers = [self._layer(layer) for layer in bert.encoder.layer]

    @staticmethod
    def _layer(layer: Any) -> _Layer:
        att = layer.attention
        q, k, v = att.self.query, att.self.key, att.self.value
        return _Layer(
            qkv_w=torch.cat([q.weight, k.weight, v.weight]).detach(),
            qkv_b=torch.cat([q.bias, k.bias, v.bias]).detach(),
            out_w=att.output.dense.weight,
            out_b=att.output.dense.bias,
            ln1=(att.output.LayerNorm.weight, att.output.LayerNorm.bias),
            up_w=layer.intermediate.dense.weight,
            up_b=layer.intermediate.dense.bias,
            down_w=layer.output.dense.weight,
            down_b=layer.output.dense.bias,
            ln2=(layer.output.LayerNorm.weight, layer.output.LayerNorm.bias),
        )

    @classmethod
    def of(cls, model: SentenceTransformer) -> LeanBert | None:
        """A lean forward for `model`, or None where it would not give the model's own output."""
        names = [type(m).__name__ for m in model]
        if names not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]):
            return None
        pooling = model[1]
        if getattr(pooling, "pooling_mode", None) != "mean" or not getattr(pooling, "include_prompt", True):
            return None
        bert: Any = getattr(model[0], "auto_model", None)
        if bert is None or type(bert).__name__ != "BertModel":
            return None
        config = bert.config
        if config.hidden_act != "gelu" or getattr(config, "position_embedding_type", "absolute") != "absolute":
            return None
        return cls(model)

    @torch.inference_mode()
    def embed(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """(B, T) token ids and 0/1 mask -> (B, D) mean-pooled, L2-normalised float32 embeddings."""
        B, T = input_ids.shape
        assert mask.shape == (B, T) and self.position.shape[0] >= T, "ids and mask disagree or exceed the window"
        x = self.word[input_ids] + self.position[:T] + self.token_type  # (B, T, D)
        x = F.layer_norm(x, x.shape[-1:], *self.emb_ln, self.eps)
        attend = mask.bool()[:, None, None, :]  # (B, 1, 1, T): keys a query may attend to
        for layer in self.layers:
            x = self._block(x, layer, attend)
        m = mask[:, :, None].to(x.dtype)  # (B, T, 1)
        pooled = (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)  # (B, D)
        return F.normalize(pooled.float(), dim=-1)

    def _block(self, x: Tensor, layer: _Layer, attend: Tensor) -> Tensor:
        B, T, D = x.shape
        qkv = F.linear(x, layer.qkv_w, layer.qkv_b)  # (B, T, 3D)
        q, k, v = qkv.view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)  # (B, H, T, Dh)
        a = a.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        x = F.layer_norm(F.linear(a, layer.out_w, layer.out_b) + x, (D,), *layer.ln1, self.eps)
        h = F.gelu(F.linear(x, layer.up_w, layer.up_b))  # (B, T, F)
        return F.layer_norm(F.linear(h, layer.down_w, layer.down_b) + x, (D,), *layer.ln2, self.eps)
