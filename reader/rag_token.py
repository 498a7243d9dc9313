"""RAG-Token (Lewis et al., 2020): every answer token is drawn from the mixture over passages,
p(y_t | x, y_<t) = Σ_z p(z|x) · p(y_t | x, z, y_<t).

The k passage prompts run as one batch with their KV caches; at each step the k next-token
distributions are marginalized in log space and the same chosen token is appended to every
passage's row. Beam search (`num_beams` > 1) keeps the best partial answers under the marginal;
one beam is greedy decoding. The answer's probability is the product of its marginal token
probabilities (terminator included); passages are ranked by their posterior p(z | x, y).
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ragserve.compute import on_compute_thread
from ragserve.types import Passage
from reader.adapters import Adapter
from reader.base import Answer, Reader
from reader.marginal import marginal_next_token, passage_prior, posterior
from reader.prompt import prefix_for, qa_suffix
from reader.registry import ReaderContext, register


@dataclass(frozen=True, slots=True)
class Hypothesis:
    tokens: list[int]
    score: float  # log p(tokens | x) under the marginal
    per_passage: Tensor  # (k,) log p(tokens | x, z) of each passage


@on_compute_thread  # a logsumexp and a top-k over (beams·k, V): OpenMP work, so on the model's thread
def best_next(log_prior: Tensor, per_row: Tensor, scores: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Beam totals log p(tokens + t | x) for every beam and next token t under the marginal, and
    the best `width` of them: per_row (B, k, V) log-probs, scores (B,) -> (values, flat indices)."""
    marginal = marginal_next_token(log_prior, per_row)  # (B, V)
    totals = scores[:, None] + marginal  # (B, V)
    values, flat = totals.view(-1).topk(min(width, totals.numel()))
    return values, flat


@register("rag-token")
class RagTokenReader(Reader):
    name = "rag-token"
    adapts = True

    def __init__(self, context: ReaderContext) -> None:
        self.generator = context.generator
        self.config = context.config

    def answer(self, question: str, passages: Sequence[Passage], adapter: Adapter | None = None) -> Answer:
        used = list(passages)
        text = self.generator.text
        suffixes = [text.encode(qa_suffix(question, [text.truncate(p, self.config.max_passage_tokens)])) for p in used]
        started = time.perf_counter()
        with self.generator.running():
            log_prior = passage_prior([p.score for p in used], self.config.temperature)  # (k,)
            best = self.beam_search(log_prior, suffixes, adapter)
        weights = posterior(log_prior, best.per_passage)
        order = sorted(range(len(used)), key=lambda z: -float(weights[z]))
        return Answer(
            text=text.answer_text(best.tokens),
            passages=[used[z] for z in order],
            timings_ms={"generate": (time.perf_counter() - started) * 1000},
            probability=float(torch.exp(torch.tensor(best.score))),
            weights=[float(weights[z]) for z in order],
        )

    def beam_search(self, log_prior: Tensor, suffixes: list[list[int]], adapter: Adapter | None = None) -> Hypothesis:
        """Beam search over the marginal; rows of the batch are beam-major: row = beam·k + z."""
        lm, text, k, width = self.generator.lm, self.generator.text, len(suffixes), self.config.num_beams
        batch = lm.start(text.prefix_ids(prefix_for(adapter)), suffixes, adapter)
        beams = [Hypothesis([], 0.0, torch.zeros(k))]
        finished: list[Hypothesis] = []
        for step in range(self.config.max_new_tokens):
            per_row = batch.logprobs.view(len(beams), k, -1)  # (B, k, V)
            vocab = per_row.shape[2]
            scores = torch.tensor([b.score for b in beams])  # (B,)
            survivors: list[tuple[int, Hypothesis]] = []
            for value, flat in zip(*best_next(log_prior, per_row, scores, 2 * width), strict=True):
                parent, token = divmod(int(flat), vocab)
                hyp = Hypothesis(
                    [*beams[parent].tokens, token], float(value), beams[parent].per_passage + per_row[parent, :, token]
                )
                if text.ends_answer(token):
                    finished.append(hyp)
                elif len(survivors) < width:
                    survivors.append((parent, hyp))
            best_done = max((h.score for h in finished), default=float("-inf"))
            # scores only fall as answers grow: no live beam can overtake a better finished one
            if not survivors or best_done >= survivors[0][1].score or step == self.config.max_new_tokens - 1:
                beams = [h for _, h in survivors]
                break
            rows = torch.tensor([parent * k + z for parent, _ in survivors for z in range(k)])
            tokens = torch.tensor([hyp.tokens[-1] for _, hyp in survivors for _ in range(k)])
            batch = lm.step(lm.select(batch, rows), tokens)
            beams = [hyp for _, hyp in survivors]
        return max(finished + beams, key=lambda h: h.score)
