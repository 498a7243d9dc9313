"""The baseline reader: the top passages go into the prompt, the LM answers greedily.

Concurrent requests are decoded together (`ReaderConfig.batch_max` > 1, backends that merge
batches): see reader/continuous.py. Otherwise a request decodes alone.
"""

import time
from collections.abc import Sequence

from ragserve.types import Passage
from reader.adapters import Adapter
from reader.base import Answer, Reader
from reader.continuous import ContinuousDecoder
from reader.prompt import prefix_for, qa_suffix
from reader.registry import ReaderContext, register
from reader.text import answer_stream


@register("stuff")
class StuffingReader(Reader):
    name = "stuff"
    extractive = True
    adapts = True

    def __init__(self, context: ReaderContext) -> None:
        self.generator = context.generator
        self.config = context.config
        self._decoder: ContinuousDecoder | None = None
        if self.config.batch_max > 1 and self.generator.lm.merges:
            self._decoder = ContinuousDecoder(self.generator, self.config.batch_max, self.config.batch_wait_ms)

    def answer(self, question: str, passages: Sequence[Passage], adapter: Adapter | None = None) -> Answer:
        return self._answer(question, passages, False, adapter)

    def answer_extractive(self, question: str, passages: Sequence[Passage], adapter: Adapter | None = None) -> Answer:
        return self._answer(question, passages, True, adapter)

    def _answer(self, question: str, passages: Sequence[Passage], extractive: bool, adapter: Adapter | None) -> Answer:
        used = list(passages)
        text = self.generator.text
        prefix = text.prefix_ids(prefix_for(adapter))
        cut = [text.truncate(p, self.config.max_passage_tokens) for p in used]
        suffix = text.encode(qa_suffix(question, cut))
        # The cut texts are prefixes of the passages' texts, so offsets into them hold for the passages.
        constraint = text.span_constraint([p.text for p in cut]) if extractive else None
        stream = answer_stream(text)
        on_token = None if stream is None else stream.push
        started = time.perf_counter()
        if constraint is not None and not constraint.allowed():  # passages without a single token
            tokens: list[int] = []
        elif self._decoder is not None:
            tokens = self._decoder.greedy(suffix, self.config.max_new_tokens, prefix, constraint, adapter, on_token)
        else:
            tokens = self.generator.greedy(suffix, self.config.max_new_tokens, prefix, constraint, adapter, on_token)
        elapsed = (time.perf_counter() - started) * 1000
        timings = {"generate": elapsed}
        if constraint is None:
            return Answer(text.answer_text(tokens), used, timings)
        evidence = constraint.evidence()
        return Answer(evidence.text if evidence else "", used, timings, evidence=evidence)
