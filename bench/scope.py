"""The fitted scope classifier on the held-out edit evaluation set (bench/data/edits_eval.jsonl).

    flock /tmp/bench.lock .venv/bin/python -m bench.scope

Nothing here is tuned: the classifier (retriever/data/scope.json) and the cosine baseline's threshold
were both fitted by `bench/fit_scope.py` on SQuAD training articles; the SQuAD half of this set
comes from held-out articles, the other half from an invented corpus. Two views:

- pairwise: each query against its own edit's question only; in scope when p >= 0.5 (cosine
  baseline: cosine >= its training threshold). Edited questions and paraphrases should be in scope
  (generalization), neighbours out (locality), reported by neighbour kind;
- store: each query against every edit of the set at once, as /v1/ask sees it: the top
  STORE_CANDIDATES edits by cosine are classified and the best one with p >= 0.5 answers. A
  paraphrase counts when its own edit answers; a neighbour when no edit answers it, unless it is
  that edit's question or one of its paraphrases (then it is rightly in scope). A neighbour of one
  edit is often a near neighbour of another edit of the set, so this view is the stricter one, and
  the one `bench/edits.py` measures end to end.

Also the metrics the fit shares (pair weights, AUC, reliability table, accuracy by kind) and the
classifier's cost per query.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.common import SQUAD, header
from retriever.scope import ScopeClassifier, analyse

if TYPE_CHECKING:
    from retriever.encoder import Encoder

BINS = 10  # reliability table: equal-width probability bins
THRESHOLD = 0.5  # the default edit_scope_threshold (design21.md)
STORE_CANDIDATES = 16  # edits classified per query (design21.md: n <= 16)
TIMING_REPEATS = 200  # calls timed for the cost per query
# The cascade's cosine floor: this quantile of the in-scope training pairs' cosines (rounded down to
# FLOOR_STEP), so that about 1 in 200 in-scope pairs is lost to it and most far candidates skip word vectors.
FLOOR_QUANTILE = 0.005
FLOOR_STEP = 0.01


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half; pairs unweighted)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability(p: np.ndarray, y: np.ndarray, weight: np.ndarray) -> float:
    """Prints weighted predicted vs observed in BINS equal-width bins; returns the ECE."""
    print("| bin | pairs | weight | mean predicted | observed |")
    print("|---|---:|---:|---:|---:|")
    bins = np.minimum((p * BINS).astype(int), BINS - 1)
    ece = 0.0
    for b in range(BINS):
        mask = bins == b
        if mask.any():
            share = weight[mask].sum() / weight.sum()
            predicted, observed = np.average(p[mask], weights=weight[mask]), np.average(y[mask], weights=weight[mask])
            ece += share * abs(predicted - observed)
            cells = f"{mask.sum()} | {share:.3f} | {predicted:.3f} | {observed:.3f}"
            print(f"| {b / BINS:.1f}-{(b + 1) / BINS:.1f} | {cells} |")
    print(f"ECE: {ece:.4f}")
    return ece


@dataclass(frozen=True)
class Labelled:
    """Per pair: label y (P,), weight (P,), fold (P,), kind (P,)."""

    y: np.ndarray
    weight: np.ndarray
    folds: np.ndarray
    kinds: np.ndarray

    @classmethod
    def of(cls, label: list[int], kind: list[str], fold: list[int]) -> Labelled:
        """Weights give in-scope and out-of-scope pairs half the mass each, and every negative kind the
        same share of the negatives: the prior under which p is calibrated is 1/2, and no mined kind
        outweighs the hand-written ones by its count."""
        y, kinds = np.array(label, float), np.array(kind)
        weight = np.zeros(len(y))
        negatives = sorted(set(kinds[y == 0]))
        weight[y == 1] = 0.5 / max(1, int((y == 1).sum()))
        for kind in negatives:
            weight[kinds == kind] = 0.5 / len(negatives) / max(1, int((kinds == kind).sum()))
        return cls(y, weight * len(y), np.array(fold), kinds)

    def part(self, mask: np.ndarray) -> Labelled:
        return Labelled(self.y[mask], self.weight[mask], self.folds[mask], self.kinds[mask])


def balanced_accuracy(decided: np.ndarray, data: Labelled) -> float:
    """Mean of the weighted in-scope and out-of-scope accuracies of 0/1 decisions."""
    correct = (decided == data.y) * data.weight
    pos = data.y == 1
    return float((correct[pos].sum() / data.weight[pos].sum() + correct[~pos].sum() / data.weight[~pos].sum()) / 2)


def per_kind(data: Labelled, kinds: tuple[str, ...], columns: dict[str, np.ndarray]) -> None:
    """Accuracy by pair kind of each column of 0/1 decisions, and the weighted balanced accuracy."""
    print("| kind | pairs | " + " | ".join(columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for kind in kinds:
        mask = data.kinds == kind
        cells = [f"{(decided == data.y)[mask].mean():.3f}" for decided in columns.values()]
        print(f"| {kind} | {mask.sum()} | " + " | ".join(cells) + " |")
    cells = [f"{balanced_accuracy(decided, data):.3f}" for decided in columns.values()]
    print(f"| balanced (weighted) | {len(data.y)} | " + " | ".join(cells) + " |")


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, weight: np.ndarray, steps: int = 30) -> np.ndarray:
    """Weights (f + 1,) of sigmoid(x @ w[:-1] + w[-1]) by weighted Newton's method (bias not penalised)."""
    x = np.column_stack([x, np.ones(len(x))])  # (n, f + 1)
    w = np.zeros(x.shape[1])
    penalty = np.full(len(w), l2)
    penalty[-1] = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -50, 50)))
        grad = x.T @ (weight * (p - y)) + penalty * w
        hess = (x * (weight * p * (1 - p))[:, None]).T @ x + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def best_threshold(cosine: np.ndarray, data: Labelled) -> float:
    """The cosine threshold with the best weighted balanced accuracy on these pairs."""
    candidates = np.unique(np.round(cosine, 3))
    scores = [balanced_accuracy((cosine >= t).astype(float), data) for t in candidates]
    return float(candidates[int(np.argmax(scores))])


def cross_fitted_cosine(cosine: np.ndarray, data: Labelled) -> np.ndarray:
    """(P,) 0/1 decisions of the baseline, each fold's threshold chosen on the other folds."""
    decided = np.zeros(len(cosine))
    for k in np.unique(data.folds):
        test = data.folds == k
        decided[test] = cosine[test] >= best_threshold(cosine[~test], data.part(~test))
    return decided


def cascade_floor(cosine: np.ndarray, data: Labelled) -> float:
    """The cosine floor: FLOOR_QUANTILE of the in-scope pairs' cosines, rounded down to FLOOR_STEP."""
    return float(np.floor(np.quantile(cosine[data.y == 1], FLOOR_QUANTILE) / FLOOR_STEP) * FLOOR_STEP)


@functools.cache
def encoder() -> Encoder:
    """The frozen encoder of the service's default settings, loaded once per process."""
    from service.application.loading import make_encoder
    from service.settings import Settings

    return make_encoder(Settings())


def report_cascade(x: np.ndarray, data: Labelled, floor: float) -> None:
    below = x[:, 0] < floor
    print(
        f"\ncascade: cosine floor {floor:.2f} ({FLOOR_QUANTILE} quantile of in-scope pairs); below it: "
        f"{int((below & (data.y == 1)).sum())}/{int((data.y == 1).sum())} in-scope pairs, "
        f"{int((below & (data.y == 0)).sum())}/{int((data.y == 0).sum())} out-of-scope pairs"
    )


def _rate(values: list[bool]) -> str:
    return f"{np.mean(values):.3f} ({sum(values)}/{len(values)})" if values else "-"


def main() -> None:
    from bench.edit_set import load_edit_set

    header("Scope classifier on the held-out edit set (bench/data/edits_eval.jsonl)")
    cases = load_edit_set(SQUAD if Path(SQUAD).is_file() else None)
    model = ScopeClassifier.load(words=encoder().encode_words)
    cosine_threshold = float(model.meta["cosine_threshold"])
    print(
        f"model: {model.meta.get('model')}, fitted {model.meta.get('date')}; cosine baseline threshold "
        f"{cosine_threshold:.3f} (chosen on training pairs); decision threshold p >= {THRESHOLD}; cascade "
        f"cosine floor {model.floor:.2f}"
    )
    texts = sorted({t for c in cases for t in [c.question, *c.paraphrases, *(n.question for n in c.neighbours)]})
    vectors = dict(zip(texts, encoder().encode_queries(texts), strict=True))
    edits = [c.question for c in cases]
    edit_matrix = np.stack([vectors[e] for e in edits])  # (E, dim)

    # Which edits each text rightly falls under: its own case's, when it is that question or a paraphrase.
    rightful: dict[str, set[int]] = {}
    for index, case in enumerate(cases):
        for text in (case.question, *case.paraphrases):
            rightful.setdefault(text, set()).add(index)
    # (group, source) -> per query: [classifier pairwise, cosine pairwise, classifier store, cosine store]
    results: dict[tuple[str, str], list[list[bool]]] = {}
    for index, case in enumerate(cases):
        queries = [("edited question", case.question), *(("paraphrase", p) for p in case.paraphrases)]
        queries += [(f"neighbour: {n.kind}", n.question) for n in case.neighbours]
        for group, query in queries:
            inside = not group.startswith("neighbour")
            v = vectors[query]
            p_own = float(model.probabilities(query, v, [case.question], edit_matrix[index : index + 1])[0])
            cos_own = float(edit_matrix[index] @ v)
            top = np.argsort(-(edit_matrix @ v))[:STORE_CANDIDATES]  # (k,) candidate edits
            p_top = model.probabilities(query, v, [edits[i] for i in top], edit_matrix[top])  # (k,)
            cos_top = edit_matrix[top] @ v  # (k,)
            answered = int(top[np.argmax(p_top)]) if p_top.max() >= THRESHOLD else None
            answered_cos = int(top[0]) if cos_top[0] >= cosine_threshold else None
            verdicts = [p_own >= THRESHOLD, cos_own >= cosine_threshold]
            if inside:
                verdicts += [answered == index, answered_cos == index]
            else:
                allowed = rightful.get(query, set())
                verdicts = [
                    not verdicts[0],
                    not verdicts[1],
                    *(a is None or a in allowed for a in (answered, answered_cos)),
                ]
            for key in ((group, case.source), (group, "all")):
                results.setdefault(key, [[], [], [], []])
                for column, verdict in zip(results[key], verdicts, strict=True):
                    column.append(verdict)
    report(results, len(cases))
    timing(model, vectors, edits, edit_matrix)


def report(results: dict[tuple[str, str], list[list[bool]]], n_cases: int) -> None:
    """The table: rates by query group and source, classifier and cosine baseline, both views."""
    print(
        f"\n{n_cases} edits. In-scope rate for the edited questions and paraphrases (generalization), "
        "out-of-scope rate for neighbours (locality)\n"
    )
    print("| queries | source | classifier, pairwise | cosine, pairwise | classifier, store | cosine, store |")
    print("|---|---|---:|---:|---:|---:|")
    order = ["edited question", "paraphrase", "neighbour: entity", "neighbour: attribute"]
    for group in order:
        for source in ("squad", "corpus", "all"):
            if (group, source) in results:
                cells = " | ".join(_rate(column) for column in results[(group, source)])
                print(f"| {group} | {source} | {cells} |")


# Questions no edit of the set is about: the cost of a query whose candidates all fall below the floor.
UNRELATED = (
    "What is the boiling point of water at sea level?",
    "How many strings does a standard violin have?",
    "Who painted the ceiling of the Sistine Chapel?",
    "What is the chemical symbol for gold?",
    "Which planet is closest to the sun?",
)


def _p50_ms(
    model: ScopeClassifier,
    queries: list[tuple[str, np.ndarray]],
    edits: list[str],
    matrix: np.ndarray,
    cold: bool = False,
) -> tuple[float, float]:
    """(p50 ms of `probabilities` over TIMING_REPEATS calls cycling through `queries` against their top
    STORE_CANDIDATES edits, mean number of candidates past the floor); `cold`: caches emptied each call."""
    costs, near = [], []
    for r in range(TIMING_REPEATS):
        query, v = queries[r % len(queries)]
        top = np.argsort(-(matrix @ v))[:STORE_CANDIDATES]  # (k,)
        if cold:
            analyse.cache_clear()
            if model.words is not None:
                model.words.clear()
        started = time.perf_counter()
        model.probabilities(query, v, [edits[i] for i in top], matrix[top])
        costs.append(time.perf_counter() - started)
        near.append(int((matrix[top] @ v >= model.floor).sum()))
    return float(np.median(costs) * 1e3), float(np.mean(near))


def timing(model: ScopeClassifier, vectors: dict[str, np.ndarray], edits: list[str], matrix: np.ndarray) -> None:
    """p50 cost per query: one with near candidates (a paraphrase; edit word vectors cached, and cold), one
    without (no candidate past the floor)."""
    paraphrases = [(q, vectors[q]) for q in edits]  # the edited questions: their own edit is near
    unrelated = list(zip(UNRELATED, encoder().encode_queries(list(UNRELATED)), strict=True))
    print(f"\ncost of `probabilities` per query, top {STORE_CANDIDATES} candidates, p50 over {TIMING_REPEATS} calls:")
    for label, queries, cold in (
        ("near candidates, edit caches warm", paraphrases, False),
        ("near candidates, caches cold", paraphrases, True),
        ("no near candidate", unrelated, False),
    ):
        ms, near = _p50_ms(model, queries, edits, matrix, cold)
        print(f"- {label}: {ms:.2f} ms ({near:.1f} candidates past the floor on average)")


if __name__ == "__main__":
    main()
