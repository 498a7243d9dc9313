"""The baseline reader: the top passages go into the prompt, the LM answers greedily.

Concurrent requests are decoded together (`ReaderConfig.batch_max` > 1, causal generators): see
reader/continuous.py. An encoder-decoder generator answers one request at a time.
"""

import time
from collections.abc import Sequence
from dataclasses import replace

from reader.base import Answer, Reader, ReaderContext, register
from reader.continuous import ContinuousDecoder
from reader.generator import Generator
from reader.prompt import PREFIX, qa_suffix
from retriever.types import Passage


def truncate(generator: Generator, passage: Passage, max_tokens: int) -> Passage:
    """The passage cut to `max_tokens` generator tokens."""
    ids = generator.encode(passage.text)
    if len(ids) <= max_tokens:
        return passage
    return replace(passage, text=generator.decode(ids[:max_tokens]))


@register("stuff")
class StuffingReader(Reader):
    name = "stuff"

    def __init__(self, context: ReaderContext) -> None:
        self.generator = context.generator
        self.config = context.config
        self.prefix = self.generator.encode(PREFIX)
        self._decoder: ContinuousDecoder | None = None
        if self.config.batch_max > 1 and self.generator.is_causal:
            self._decoder = ContinuousDecoder(
                self.generator, self.prefix, self.config.batch_max, self.config.batch_wait_ms
            )

    def answer(self, question: str, passages: Sequence[Passage]) -> Answer:
        used = list(passages)
        cut = [truncate(self.generator, p, self.config.max_passage_tokens) for p in used]
        suffix = self.generator.encode(qa_suffix(question, cut))
        started = time.perf_counter()
        if self._decoder is not None:
            tokens = self._decoder.greedy(suffix, self.config.max_new_tokens)
        else:
            tokens = self.generator.greedy(suffix, self.config.max_new_tokens, prefix=self.prefix)
        elapsed = (time.perf_counter() - started) * 1000
        return Answer(text=self.generator.answer_text(tokens), passages=used, timings_ms={"generate": elapsed})
