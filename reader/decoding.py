"""The one greedy decoding loop. Every reader's answers are chosen here, one token per row per
step, over the batch a backend (reader/lm.py) started: the same token choice (on the compute
thread), the same stop rule (`TextCodec.ends_answer`: the token is kept, last) and the same limit.

A row may carry a `SpanConstraint` (extractive answers: only spans of the passages) and the caller
may watch each chosen token (`on_token`: RETRO retrieves at every chunk boundary). A request that
is no longer wanted (ragserve/cancel.py: deadline passed, client gone) stops at the next step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ragserve import cancel
from reader.extractive import SpanConstraint, constrained_argmax
from reader.lm import LM, Batch

# Called with (row, token) for each chosen token that does not end its row's answer, before the
# next step runs.
OnToken = Callable[[int, int], None]


@torch.inference_mode()
def greedy(
    lm: LM,
    batch: Batch,
    max_new_tokens: int,
    ends: Callable[[int], bool],
    constraints: Sequence[SpanConstraint | None] | None = None,
    on_token: OnToken | None = None,
) -> list[list[int]]:
    """Greedy continuation of every row until a token that `ends` the answer (kept, last) or the
    limit. The caller holds the model's lock."""
    out: list[list[int]] = [[] for _ in range(batch.rows)]
    done = [False] * batch.rows
    constraints = constraints or [None] * batch.rows
    assert len(constraints) == batch.rows, "one constraint (or None) per row"
    for step in range(max_new_tokens):
        cancel.check()
        chosen = constrained_argmax(batch.logprobs, constraints)  # (B,)
        for row, token in enumerate(chosen.tolist()):
            if done[row]:
                continue
            out[row].append(token)
            done[row] = ends(token)
            if (constraint := constraints[row]) is not None:
                constraint.advance(token)
            if on_token is not None and not done[row]:
                on_token(row, token)
        if all(done) or step == max_new_tokens - 1:
            break
        batch = lm.step(batch, chosen)
    return out


def without_end(tokens: list[int], ends: Callable[[int], bool]) -> list[int]:
    """An answer's tokens without the one that ended it."""
    return tokens[:-1] if tokens and ends(tokens[-1]) else tokens
