"""The baseline reader: the top passages go into the prompt, the LM answers greedily."""

import time
from collections.abc import Sequence
from dataclasses import replace

from reader.base import Answer, Reader, ReaderContext, register
from reader.prompt import qa_prompt
from retriever.types import Passage


@register("stuff")
class StuffingReader(Reader):
    name = "stuff"

    def __init__(self, context: ReaderContext) -> None:
        self.generator = context.generator
        self.config = context.config

    def _truncate(self, passage: Passage) -> Passage:
        ids = self.generator.encode(passage.text)
        if len(ids) <= self.config.max_passage_tokens:
            return passage
        return replace(passage, text=self.generator.decode(ids[: self.config.max_passage_tokens]))

    def answer(self, question: str, passages: Sequence[Passage]) -> Answer:
        used = list(passages)
        prompt = self.generator.encode(qa_prompt(question, [self._truncate(p) for p in used]))
        started = time.perf_counter()
        tokens = self.generator.greedy(prompt, self.config.max_new_tokens)
        elapsed = (time.perf_counter() - started) * 1000
        text = self.generator.decode(tokens).split("\n")[0].strip()
        return Answer(text=text, passages=used, timings_ms={"generate": elapsed})
