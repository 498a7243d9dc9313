"""Evidence-copying decoding: the answer is constrained to be a span of the retrieved passages.

Each passage is tokenized the way the model sees it in the prompt: flattened onto one line, every
word with its leading space (as after "Context:"). While the answer is decoded, `SpanConstraint`
keeps every place in the passages where the tokens chosen so far occur; the next token may only
continue one of them, or end the answer once it holds a token. The answer is therefore always a
contiguous run of one passage's tokens, and where it came from is known: the passage and the
character offsets in its text, returned as the answer's evidence.

This is the suffix-automaton idea done directly: a prompt holds a few hundred passage tokens, so
the set of matching positions is small enough to filter at every step.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ragserve.compute import on_compute_thread
from ragserve.errors import ReaderUnavailableError
from reader.base import Evidence


@dataclass(frozen=True, slots=True)
class Source:
    """One passage as token ids, with each token's [start, end) characters in the passage's text."""

    text: str
    ids: list[int]
    spans: list[tuple[int, int]]


def flatten_with_map(text: str) -> tuple[str, list[int]]:
    """`prompt.flatten(text)` (whitespace runs -> one space, stripped) and, for each of its
    characters, the index of the character of `text` it came from."""
    flat: list[str] = []
    where: list[int] = []
    for match in re.finditer(r"\S+", text):
        if flat:
            flat.append(" ")
            where.append(match.start() - 1)  # a whitespace run becomes one space: point at its last char
        flat.append(match.group())
        where.extend(range(match.start(), match.end()))
    return "".join(flat), where


def source_of(tokenizer: PreTrainedTokenizerBase, text: str) -> Source:
    """A passage's tokens as the prompt presents them, with their character spans in `text`."""
    if not tokenizer.is_fast:
        raise ReaderUnavailableError("extractive answers need a fast tokenizer (one that reports character offsets)")
    flat, where = flatten_with_map(text)
    encoded = tokenizer(" " + flat, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    spans = []
    for start, end in encoded["offset_mapping"]:  # offsets into " " + flat
        first, last = max(start - 1, 0), max(end - 2, 0)  # characters of flat
        spans.append((where[first], where[last] + 1) if where else (0, 0))
    return Source(text, ids, spans)


class SpanConstraint:
    """The tokens an answer may take next so that it stays a span of one of `sources`."""

    def __init__(self, sources: Sequence[Source], end_ids: Collection[int]) -> None:
        self.sources = list(sources)
        self.end_ids = frozenset(end_ids)
        # (passage, index of the token that would come next) for every occurrence of the answer so far
        self._at = [(p, i) for p, source in enumerate(self.sources) for i in range(len(source.ids))]
        self.taken = 0
        self.ended = False

    def allowed(self) -> list[int]:
        """Token ids that may come next (sorted): a continuation of some occurrence, or an end
        token once the answer holds at least one token."""
        assert not self.ended, "the answer has ended"
        nexts = {self.sources[p].ids[i] for p, i in self._at if i < len(self.sources[p].ids)}
        return sorted(nexts | self.end_ids) if self.taken else sorted(nexts)

    def advance(self, token: int) -> None:
        if self.taken and token in self.end_ids:
            self.ended = True
            return
        at = [(p, i + 1) for p, i in self._at if i < len(self.sources[p].ids) and self.sources[p].ids[i] == token]
        assert at, "token is not a continuation of the evidence"
        self._at, self.taken = at, self.taken + 1

    def evidence(self) -> Evidence | None:
        """The first occurrence of the answer, trimmed of surrounding whitespace; None before any token."""
        if not self.taken:
            return None
        passage, end = self._at[0]
        source = self.sources[passage]
        start_char, end_char = source.spans[end - self.taken][0], source.spans[end - 1][1]
        text = source.text[start_char:end_char]
        start_char += len(text) - len(text.lstrip())
        end_char -= len(text) - len(text.rstrip())
        return Evidence(passage, start_char, end_char, source.text[start_char:end_char])


@on_compute_thread  # a (B, V) reduction starts an OpenMP team in whichever thread runs it
def constrained_argmax(logprobs: Tensor, constraints: Sequence[SpanConstraint | None]) -> Tensor:
    """(B, V) log-probabilities -> (B,) greedy tokens, each constrained row limited to what its
    constraint allows."""
    assert logprobs.shape[0] == len(constraints), "one constraint (or None) per row"
    chosen = logprobs.argmax(dim=-1)  # (B,)
    for row, constraint in enumerate(constraints):
        if constraint is not None:
            allowed = torch.tensor(constraint.allowed(), dtype=torch.long)  # (A,)
            chosen[row] = allowed[logprobs[row, allowed].argmax()]
    return chosen
