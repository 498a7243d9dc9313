"""The baseline reader: the top passages go into the prompt, the LM answers greedily."""

import time
from collections.abc import Sequence
from dataclasses import replace

from reader.base import Answer, Reader, ReaderContext, register
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

    def answer(self, question: str, passages: Sequence[Passage]) -> Answer:
        used = list(passages)
        cut = [truncate(self.generator, p, self.config.max_passage_tokens) for p in used]
        suffix = self.generator.encode(qa_suffix(question, cut))
        started = time.perf_counter()
        tokens = self.generator.greedy(suffix, self.config.max_new_tokens, prefix=self.prefix)
        elapsed = (time.perf_counter() - started) * 1000
        return Answer(text=self.generator.answer_text(tokens), passages=used, timings_ms={"generate": elapsed})
