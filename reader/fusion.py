"""Fusion for decoder-only models, in the spirit of Fusion-in-Decoder: each passage is encoded on
its own, the question and the answer attend to all of them at once.

Every passage gets its own KV cache, computed after the shared prefix (instruction and worked
examples) and at the same position range (prefix length onwards), so passages do not attend to
each other and their order does not matter. The caches are laid side by side behind one copy of
the prefix; the question and the answer continue at the position after the longest passage. The
cost is linear in the number of passages (k passages of length L: k·L·(P+L) for the passages,
P+k·L keys per question or answer token) instead of quadratic in their total length.
"""

import time
from collections.abc import Sequence

import torch

from ragserve.errors import ReaderUnavailableError
from ragserve.types import Passage
from reader.adapters import Adapter
from reader.base import Answer, Reader
from reader.decoding import greedy
from reader.prompt import PREFIX, as_data, flatten
from reader.registry import ReaderContext, register
from reader.text import answer_stream


def passage_segment(text: str) -> str:
    return f"Context: {as_data(text)}\n"


def question_segment(question: str) -> str:
    return f"Question: {flatten(question)}\nAnswer:"


@register("fusion")
class FusionReader(Reader):
    name = "fusion"

    def __init__(self, context: ReaderContext) -> None:
        if not context.generator.lm.fuses_caches:
            raise ReaderUnavailableError("fusion needs a decoder-only generator; use `fid` for encoder-decoder models")
        self.lm = context.generator.lm
        self.generator = context.generator
        self.config = context.config
        self.prefix = self.generator.text.encode(PREFIX)

    def answer(self, question: str, passages: Sequence[Passage], adapter: Adapter | None = None) -> Answer:
        assert adapter is None, "this reader does not adapt"
        used = list(passages)
        text = self.generator.text
        segments = [text.encode(passage_segment(text.truncate(p, self.config.max_passage_tokens).text)) for p in used]
        asked_ids = text.encode(question_segment(question))
        started = time.perf_counter()
        with self.generator.running():
            asked = torch.tensor([asked_ids])  # (1, Q)
            fused = self.lm.fuse(self.lm.start(self.prefix, segments), len(self.prefix))
            fused, _ = self.lm.extend(fused, asked)
            stream = answer_stream(text)
            watch = None if stream is None else stream.on_row
            (tokens,) = greedy(self.lm, fused, self.config.max_new_tokens, text.ends_answer, on_token=watch)
        return Answer(
            text=text.answer_text(tokens),
            passages=used,
            timings_ms={"generate": (time.perf_counter() - started) * 1000},
        )
