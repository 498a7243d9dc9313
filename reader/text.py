"""The text side of a generator: its tokenizer, what ends an answer, and how an answer is read
back from its tokens. Every reader encodes, truncates and stops through this one object, so two
readers never disagree on where an answer ends."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from transformers import PreTrainedTokenizerBase

from ragserve import streaming
from ragserve.types import Passage
from reader.extractive import SpanConstraint, source_of


class TextCodec:
    """Encoding and decoding with one tokenizer; `stop_ids` are the model's end-of-sequence tokens.
    An answer is one line: any token whose text holds a line break ends it too."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_ids: Iterable[int]) -> None:
        self.tokenizer = tokenizer
        self.stop_ids: set[int] = set(stop_ids)
        pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        self.newline_ids = {i for i, piece in enumerate(pieces) if "\n" in piece}
        self._prefixes: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        assert isinstance(text, str)
        return text

    def prefix_ids(self, text: str) -> list[int]:
        """The token ids of a fixed prompt prefix (a reader's or an adapter's), encoded once."""
        if text not in self._prefixes:
            self._prefixes[text] = self.encode(text)
        return self._prefixes[text]

    def ends_answer(self, token: int) -> bool:
        return token in self.stop_ids or token in self.newline_ids

    def answer_text(self, tokens: Sequence[int]) -> str:
        """The answer a token sequence spells: its first line, stripped."""
        return self.decode([t for t in tokens if t not in self.stop_ids]).split("\n")[0].strip()

    def truncate(self, passage: Passage, max_tokens: int) -> Passage:
        """The passage cut to `max_tokens` tokens of this tokenizer."""
        ids = self.encode(passage.text)
        if len(ids) <= max_tokens:
            return passage
        return replace(passage, text=self.decode(ids[:max_tokens]))

    def span_constraint(self, texts: Sequence[str]) -> SpanConstraint:
        """Answers limited to spans of `texts` (passages as they are in the prompt), ended by any
        token that ends an answer."""
        return SpanConstraint([source_of(self.tokenizer, t) for t in texts], self.stop_ids | self.newline_ids)


class AnswerStream:
    """An answer's text, piece by piece, as its tokens are chosen: `push(token)` hands `on_text`
    what the answer gained. Text is held back while it ends in an incomplete character or in
    whitespace, so the pieces always concatenate to a prefix of `answer_text(tokens)`, and to
    all of it once the answer ends."""

    def __init__(self, codec: TextCodec, on_text: Callable[[str], None]) -> None:
        self.codec = codec
        self.on_text = on_text
        self.tokens: list[int] = []
        self.sent = ""

    def push(self, token: int) -> None:
        if token in self.codec.stop_ids:
            return
        self.tokens.append(token)
        text = self.codec.decode(self.tokens).split("\n")[0].strip()  # answer_text, without the filter
        if text.endswith("\ufffd") or not text.startswith(self.sent):  # half a character; a re-merge
            return
        if piece := text[len(self.sent) :]:
            self.sent = text
            self.on_text(piece)

    def on_row(self, _row: int, token: int) -> None:
        """`push`, as reader/decoding.py's `on_token` (one-row batches)."""
        self.push(token)


def answer_stream(codec: TextCodec) -> AnswerStream | None:
    """A stream of the answer to decode, when the current request streams (ragserve/streaming.py)."""
    sink = streaming.current()
    return None if sink is None else AnswerStream(codec, sink)
