"""Fit the edit-memory scope classifier (`retriever/scope.py`) on SQuAD training articles only.

    flock /tmp/bench.lock .venv/bin/python -m bench.fit_scope

Pairs (query, edit question), by kind:
- paraphrase (label 1): a SQuAD training question and a hand-written paraphrase
  (bench/data/scope_train.jsonl), or two paraphrases, both orders;
- same_attribute (0): hand-written "same question, another entity" (same file);
- entity_swap (0): a capitalised span or number of the question replaced by one from another article;
- same_entity (0): another question on the same paragraph (skipped when it has the same gold answer:
  SQuAD has near-duplicates on a paragraph);
- nearest (0): the most similar questions (encoder cosine) of other paragraphs, and random (0): any
  question of another article.
Features and regularisation are chosen by cross-validation by article (folds of whole articles);
Platt scaling is fitted on the out-of-fold scores; the final weights on all pairs. Writes
retriever/data/scope.json and prints the CV figures next to a cosine-threshold baseline.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import SQUAD, header
from retriever.scope import BUNDLED, FEATURES, pair_features
from service.application.evaluation import Question, load_squad
from service.application.loading import make_encoder
from service.application.squad import select_articles
from service.settings import Settings

TRAIN_FILE = Path(__file__).resolve().parent / "data" / "scope_train.jsonl"
FOLDS = 4  # 24 training articles: 6 per fold
NEAREST = 3  # nearest other-paragraph questions per anchor
RANDOM = 2  # random other-article questions per anchor
SEED = 21
L2_GRID = (0.1, 1.0, 10.0)
UV_L2_GRID = (1.0, 10.0, 100.0)  # the u*v projection has 384 weights: it needs more shrinkage
KINDS = ("paraphrase", "same_entity", "same_attribute", "entity_swap", "nearest", "random")
BINS = 10


@dataclass
class Pairs:
    """Parallel lists: texts a (query) and b (edit question), label, kind, fold (by anchor's article)."""

    a: list[str] = field(default_factory=list)
    b: list[str] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    fold: list[int] = field(default_factory=list)

    def add(self, a: str, b: str, label: int, kind: str, fold: int, both: bool = True) -> None:
        for x, y in [(a, b), (b, a)] if both else [(a, b)]:
            self.a.append(x)
            self.b.append(y)
            self.label.append(label)
            self.kind.append(kind)
            self.fold.append(fold)


def _norm_answer(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def same_answer(x: Question, y: Question) -> bool:
    return bool({_norm_answer(a) for a in x.answers} & {_norm_answer(a) for a in y.answers})


_SPAN = re.compile(r"\b(?:\d[\d,.]*|(?:[A-Z][\w'\-]*)(?:\s+(?:of\s+)?[A-Z][\w'\-]*)*)")
_LEADING = {"What", "Which", "Who", "When", "Where", "Why", "How", "In", "The", "A", "An", "On", "For", "From", "To"}


def entity_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, 'num'|'name') of capitalised runs and numbers, sentence-initial question words skipped."""
    spans = []
    for m in _SPAN.finditer(text):
        start, word = m.start(), m.group()
        first = word.split()[0]
        if start == 0 and first in _LEADING:
            rest = word[len(first) :].lstrip()
            if not rest:
                continue
            start, word = m.end() - len(rest), rest
        spans.append((start, start + len(word), "num" if word[0].isdigit() else "name"))
    return spans


def entity_swap(text: str, pool: dict[str, list[str]], rng: random.Random) -> str | None:
    """The text with one entity span replaced by a different one of the same class from the pool."""
    spans = entity_spans(text)
    if not spans:
        return None
    start, end, cls = rng.choice(spans)
    old = text[start:end]
    choices = [s for s in pool[cls] if s.lower() != old.lower() and s.lower() not in text.lower()]
    return text[:start] + rng.choice(choices) + text[end:] if choices else None


def build_pairs(questions: list[Question], vectors: dict[str, np.ndarray], rng: random.Random) -> Pairs:
    """All pair kinds, from the hand-written file and mined from the training articles."""
    by_id = {q.id: q for q in questions}
    articles = sorted({q.article for q in questions})
    fold_of = {a: i % FOLDS for i, a in enumerate(articles)}
    by_doc: dict[str, list[Question]] = {}
    for q in questions:
        by_doc.setdefault(q.gold_doc, []).append(q)
    pool: dict[str, list[str]] = {"num": [], "name": []}
    matrix = np.stack([vectors[q.question] for q in questions])  # (Q, dim)
    pairs = Pairs()
    for row in (json.loads(line) for line in TRAIN_FILE.read_text(encoding="utf-8").splitlines() if line.strip()):
        anchor = by_id[row["squad_id"]]
        fold = fold_of[anchor.article]
        others = [q for q in questions if q.article != anchor.article]
        pool = {"num": [], "name": []}
        for q in rng.sample(others, 200):  # swap pool from other articles only (another entity for sure)
            for s, e, cls in entity_spans(q.question):
                pool[cls].append(q.question[s:e])
        texts = [anchor.question, *row["paraphrases"]]
        for i, x in enumerate(texts):
            for y in texts[i + 1 :]:
                pairs.add(x, y, 1, "paraphrase", fold)
            swapped = entity_swap(x, pool, rng)
            if swapped:
                pairs.add(swapped, x, 0, "entity_swap", fold, both=False)
                pairs.add(swapped, rng.choice([t for t in texts if t != x]), 0, "entity_swap", fold, both=False)
        for neg in row["other_entity"]:
            for x in texts:
                pairs.add(neg, x, 0, "same_attribute", fold)
        for other in by_doc[anchor.gold_doc]:
            if other.id != anchor.id and not same_answer(anchor, other):
                pairs.add(other.question, anchor.question, 0, "same_entity", fold)
                pairs.add(other.question, rng.choice(row["paraphrases"]), 0, "same_entity", fold, both=False)
        cosine = matrix @ vectors[anchor.question]  # (Q,)
        ranked = [questions[int(i)] for i in np.argsort(-cosine)]
        near = [q for q in ranked if q.gold_doc != anchor.gold_doc and not same_answer(q, anchor)][:NEAREST]
        for q in near:
            pairs.add(q.question, anchor.question, 0, "nearest", fold)
            pairs.add(q.question, rng.choice(row["paraphrases"]), 0, "nearest", fold, both=False)
        for q in rng.sample(others, RANDOM):
            pairs.add(q.question, rng.choice(texts), 0, "random", fold)
    return pairs


def features_of(pairs: Pairs, vectors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(P, f) pair features and (P, dim) u*v products."""
    rows = [pair_features(a, vectors[a], [b], vectors[b][None, :])[0] for a, b in zip(pairs.a, pairs.b, strict=True)]
    products = np.stack([vectors[a] * vectors[b] for a, b in zip(pairs.a, pairs.b, strict=True)])
    return np.stack(rows), products.astype(np.float64)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, weight: np.ndarray | None = None, steps: int = 30) -> np.ndarray:
    """Weights (f + 1,) of sigmoid(x @ w[:-1] + w[-1]) by weighted Newton's method (bias not penalised)."""
    weight = np.ones(len(y)) if weight is None else weight  # (n,)
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


def design(feats: np.ndarray, products: np.ndarray, uv: bool) -> np.ndarray:
    return np.column_stack([feats, products]) if uv else feats


def out_of_fold(x: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float) -> np.ndarray:
    """(P,) logits, each from a model fitted without the pair's fold (whole articles)."""
    z = np.zeros(len(y))
    for k in range(FOLDS):
        test = folds == k
        w = fit_logistic(x[~test], y[~test], l2)
        z[test] = x[test] @ w[:-1] + w[-1]
    return z


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a * logit + b), a one-feature logistic fit."""
    w = fit_logistic(logits[:, None], y, l2=1e-6)
    return float(w[0]), float(w[1])


def cross_fitted_platt(z: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """(P,) calibrated probabilities, the Platt map of each fold fitted on the other folds' scores."""
    p = np.zeros(len(y))
    for k in range(FOLDS):
        test = folds == k
        a, b = platt(z[~test], y[~test])
        p[test] = 1 / (1 + np.exp(-(a * z[test] + b)))
    return p


def best_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The cosine threshold with the best balanced accuracy (mean of in-scope and out-of-scope rates)."""
    candidates = np.unique(np.round(scores, 3))
    accuracy = [((scores[y == 1] >= t).mean() + (scores[y == 0] < t).mean()) / 2 for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def cross_fitted_cosine(cosine: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """(P,) 0/1 decisions of the baseline, each fold's threshold chosen on the other folds."""
    decided = np.zeros(len(y))
    for k in range(FOLDS):
        test = folds == k
        decided[test] = cosine[test] >= best_threshold(cosine[~test], y[~test])
    return decided


def reliability(p: np.ndarray, y: np.ndarray) -> float:
    """Prints predicted vs observed in BINS equal-width bins; returns the ECE."""
    print("| bin | pairs | mean predicted | observed |")
    print("|---|---:|---:|---:|")
    bins = np.minimum((p * BINS).astype(int), BINS - 1)
    ece = 0.0
    for b in range(BINS):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(p[mask].mean() - y[mask].mean())
            print(f"| {b / BINS:.1f}-{(b + 1) / BINS:.1f} | {mask.sum()} | {p[mask].mean():.3f} | {y[mask].mean():.3f} |")
    print(f"ECE: {ece:.4f}")
    return ece


def per_kind(kinds: np.ndarray, y: np.ndarray, columns: dict[str, np.ndarray]) -> None:
    """Accuracy by pair kind of each column of 0/1 decisions."""
    print("| kind | pairs | " + " | ".join(columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for kind in [*KINDS, "all (balanced)"]:
        mask = kinds == kind if kind in KINDS else np.ones(len(y), bool)
        cells = []
        for decided in columns.values():
            correct = decided == y
            if kind in KINDS:
                cells.append(f"{correct[mask].mean():.3f}")
            else:
                cells.append(f"{(correct[y == 1].mean() + correct[y == 0].mean()) / 2:.3f}")
        print(f"| {kind} | {mask.sum()} | " + " | ".join(cells) + " |")


def encode_all(texts: Sequence[str]) -> dict[str, np.ndarray]:
    encoder = make_encoder(Settings())
    unique = sorted(set(texts))
    return dict(zip(unique, encoder.encode_queries(unique), strict=True))


def select(x: np.ndarray, uv: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[bool, float, np.ndarray]:
    """Chooses u*v or not and the L2 by pooled out-of-fold AUC; prints the grid."""
    print("\n## Model selection (CV by article, pooled out-of-fold AUC)\n")
    print("| u*v projection | L2 | CV AUC |")
    print("|---|---:|---:|")
    best: tuple[float, bool, float, np.ndarray] = (-1.0, False, 0.0, np.zeros(0))
    for use_uv, grid in ((False, L2_GRID), (True, UV_L2_GRID)):
        for l2 in grid:
            z = out_of_fold(design(x, uv, use_uv), y, folds, l2)
            score = auc(z, y)
            print(f"| {'yes' if use_uv else 'no'} | {l2} | {score:.4f} |", flush=True)
            if score > best[0]:
                best = (score, use_uv, l2, z)
    return best[1], best[2], best[3]


def main() -> None:
    header("Scope classifier fit (edit memory), SQuAD training articles")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    rng = random.Random(SEED)
    data = load_squad(SQUAD)
    train = select_articles({q.article for q in data.questions}, "train")
    questions = [q for q in data.questions if q.article in train]
    rows = [json.loads(line) for line in TRAIN_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    hand = [t for r in rows for t in r["paraphrases"] + r["other_entity"]]
    started = time.perf_counter()
    vectors = encode_all([q.question for q in questions] + hand)
    pairs = build_pairs(questions, vectors, rng)
    missing = sorted({t for t in pairs.a + pairs.b if t not in vectors})
    vectors.update(encode_all(missing))  # the automatic swaps
    print(f"encoded {len(vectors)} texts in {time.perf_counter() - started:.0f} s")
    x, products = features_of(pairs, vectors)
    y, folds, kinds = np.array(pairs.label, float), np.array(pairs.fold), np.array(pairs.kind)
    print(f"\nanchors: {len(rows)} SQuAD training questions, {sum(len(r['paraphrases']) for r in rows)} paraphrases, ")
    print(f"{sum(len(r['other_entity']) for r in rows)} hand-written other-entity negatives; pairs per kind:")
    counts = {k: int((kinds == k).sum()) for k in KINDS}
    print(", ".join(f"{k} {n}" for k, n in counts.items()) + f"; total {len(y)}")
    use_uv, l2, z = select(x, products, y, folds)
    print(f"\nchosen: u*v projection {'yes' if use_uv else 'no'}, L2 {l2}; CV AUC {auc(z, y):.4f} "
          f"(cosine alone: {auc(x[:, 0], y):.4f})")
    p_oof = cross_fitted_platt(z, y, folds)
    print("\n## Reliability of the calibrated out-of-fold probabilities\n")
    ece = reliability(p_oof, y)
    threshold = best_threshold(x[:, 0], y)
    print(f"\n## Accuracy by kind, out of fold (classifier at p >= 0.5; cosine threshold chosen on the other folds;"
          f" on all training pairs it is {threshold:.3f})\n")
    per_kind(kinds, y, {"classifier": (p_oof >= 0.5).astype(float), "cosine baseline": cross_fitted_cosine(x[:, 0], y, folds)})
    a, b = platt(z, y)
    w = fit_logistic(design(x, products, use_uv), y, l2)
    f = len(FEATURES)
    params = {
        "features": list(FEATURES),
        "weights": [round(float(v), 6) for v in w[:f]],
        "bias": round(float(w[-1]), 6),
        "uv_weights": [round(float(v), 6) for v in w[f:-1]] if use_uv else None,
        "calibration": {"method": "platt on out-of-fold logits", "a": round(a, 6), "b": round(b, 6)},
        "fit": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["python", "-m", "bench.fit_scope", *sys.argv[1:]]),
            "data": "SQuAD v1.1 dev, training articles (select_articles 'train'); bench/data/scope_train.jsonl",
            "anchors": len(rows),
            "pairs": counts,
            "l2": l2,
            "uv_projection": use_uv,
            "cv_auc": round(auc(z, y), 4),
            "cv_ece": round(ece, 4),
            "cosine_threshold": threshold,
        },
    }
    BUNDLED.parent.mkdir(parents=True, exist_ok=True)
    BUNDLED.write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {BUNDLED.relative_to(Path.cwd()) if BUNDLED.is_relative_to(Path.cwd()) else BUNDLED}")
    print("weights: " + ", ".join(f"{n} {v:+.3f}" for n, v in zip(FEATURES, w[:f], strict=True)) + f", bias {w[-1]:+.3f}")


if __name__ == "__main__":
    main()
