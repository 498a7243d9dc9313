"""RAG-Sequence (Lewis et al., 2020) with thorough decoding: one passage conditions the whole
answer, p(y|x) = Σ_z p(z|x) · Π_t p(y_t | x, z, y_<t).

A candidate answer is generated from each passage (greedy, the k prompts as one batch); then
every distinct candidate is scored under every passage (teacher-forced, one batch of
candidates × passages rows on copies of the passages' KV caches) and the candidate with the
highest marginal probability wins. Passages are ranked by their posterior p(z | x, y).
"""

import time
from collections.abc import Sequence

import torch

from ragserve.types import Passage
from reader.adapters import Adapter
from reader.base import Answer, Reader
from reader.decoding import greedy
from reader.marginal import marginal_sequence, passage_prior, posterior
from reader.prompt import prefix_for, qa_suffix
from reader.registry import ReaderContext, register


@register("rag-sequence")
class RagSequenceReader(Reader):
    name = "rag-sequence"
    adapts = True

    def __init__(self, context: ReaderContext) -> None:
        self.generator = context.generator
        self.config = context.config

    def answer(self, question: str, passages: Sequence[Passage], adapter: Adapter | None = None) -> Answer:
        used = list(passages)
        k = len(used)
        text = self.generator.text
        suffixes = [text.encode(qa_suffix(question, [text.truncate(p, self.config.max_passage_tokens)])) for p in used]
        started = time.perf_counter()
        lm = self.generator.lm
        with self.generator.running():
            log_prior = passage_prior([p.score for p in used], self.config.temperature)  # (k,)
            batch = lm.start(text.prefix_ids(prefix_for(adapter)), suffixes, adapter)
            kept = lm.select(batch, torch.arange(k))  # a copy: decoding below grows `batch`'s cache
            decoded = greedy(lm, batch, self.config.max_new_tokens, text.ends_answer)
            candidates = list(dict.fromkeys(tuple(c) for c in decoded if c))
            rows = torch.tensor([z for _ in candidates for z in range(k)])
            loglik = lm.continuation_logprob(lm.select(kept, rows), [c for c in candidates for _ in range(k)])
        loglik = loglik.view(len(candidates), k)  # (C, k): log p(y_c | x, z)
        scores = marginal_sequence(log_prior, loglik)  # (C,)
        best = int(scores.argmax())
        weights = posterior(log_prior, loglik[best])
        order = sorted(range(k), key=lambda z: -float(weights[z]))
        return Answer(
            text=text.answer_text(candidates[best]),
            passages=[used[z] for z in order],
            timings_ms={"generate": (time.perf_counter() - started) * 1000},
            probability=float(scores[best].exp()),
            weights=[float(weights[z]) for z in order],
        )
