"""Fit the edit-memory scope classifier (`retriever/scope.py`) on SQuAD training articles only.

    flock /tmp/bench.lock .venv/bin/python -m bench.fit_scope

Pairs (query, edit question), by kind:
- paraphrase (label 1): a SQuAD training question and a hand-written paraphrase
  (bench/data/scope_train.jsonl), or two paraphrases, both orders;
- same_attribute (0): hand-written "same question, another entity" (same file);
- other_attribute (0): hand-written "same entity, another attribute" (same file);
- entity_swap (0): a capitalised span or number of the question replaced by one from another article;
- wh_swap (0): the question with its asking phrase changed (same entity, other attribute);
- same_entity (0): another question on the same paragraph (skipped when it has the same gold answer:
  SQuAD has near-duplicates on a paragraph);
- nearest (0): the most similar questions (encoder cosine) of other paragraphs, and random (0): any
  question of another article.
Model and regularisation are chosen by cross-validation by article (folds of whole articles), Platt
scaling is fitted on the out-of-fold scores, the final model on all pairs. Writes retriever/data/scope.json;
prints the CV figures next to a cosine-threshold baseline.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import SQUAD, header
from bench.edit_set import read_jsonl
from bench.scope import (
    FLOOR_QUANTILE,
    Labelled,
    auc,
    balanced_accuracy,
    best_threshold,
    cascade_floor,
    cross_fitted_cosine,
    encoder,
    fit_logistic,
    per_kind,
    reliability,
    report_cascade,
)
from retriever.scope import BUNDLED, FEATURES, ScopeClassifier, full_features, pair_features, question_type
from retriever.scope_features import ALIGNMENT_FEATURES, Words
from service.application.evaluation import Question, load_squad
from service.application.squad import normalize_answer, select_articles

TRAIN_FILE = Path(__file__).resolve().parent / "data" / "scope_train.jsonl"
# Anchors about invented entities (their own question, no SQuAD id): paraphrase styles and neighbours
# that SQuAD-anchored pairs lack (added context, abbreviations, relation synonyms, close roles).
WRITTEN_FILE = TRAIN_FILE.with_name("scope_train_written.jsonl")
FOLDS = 4  # 24 training articles: 6 per fold
NEAREST = 3  # nearest other-paragraph questions per anchor
RANDOM = 2  # random other-article questions per anchor
SEED = 21
L2_GRID = (0.1, 1.0)
MLP_GRID = ((8, 1e-3), (16, 1e-1))  # (hidden units, L2 alpha)
BELOW_FLOOR = -50.0  # the logit of a pair the cascade drops (p = 0 after any Platt map)
MLP_ITERATIONS = 2000  # enough for adam to converge on ~12k pairs of 10 features
_KIND_TEXT = "paraphrase same_entity other_attribute wh_swap same_attribute entity_swap nearest random"
KINDS = tuple(_KIND_TEXT.split())


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


def same_answer(x: Question, y: Question) -> bool:
    return bool({normalize_answer(a) for a in x.answers} & {normalize_answer(a) for a in y.answers})


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


# The asking phrase of a question: a specific wh-phrase, or "what"/"which" with the word after it.
_ASKING = re.compile(
    r"\b(?:how (?:many|much|long)|(?:what|which) (?:year|city|country|person|reason)|when|where|why|who|whom|how"
    r"|(?:what|which)(?: \w+)?)\b",
    re.IGNORECASE,
)
ASKING = ("when", "where", "why", "who", "how many", "in what year", "in which country", "how")


def wh_swap(text: str, rng: random.Random) -> str | None:
    """The question with its asking phrase changed ("When was X founded?" -> "Who was X founded?", "Who
    wrote X?" -> "Where wrote X?"): the same entity asked about another attribute, nearly every word
    shared. Grammar suffers at times; the features (words, entities, types) and the encoder barely mind."""
    matches = list(_ASKING.finditer(text))
    if len(matches) != 1:  # "When X moved, what ...?": which phrase asks is unclear, leave it
        return None
    match = matches[0]
    for phrase in rng.sample(ASKING, len(ASKING)):
        phrase = phrase.capitalize() if match.group()[0].isupper() else phrase
        swapped = text[: match.start()] + phrase + text[match.end() :]
        if question_type(swapped) not in (question_type(text), "THING"):
            return swapped
    return None


def _swap_pool(others: list[Question], rng: random.Random) -> dict[str, list[str]]:
    """Entity spans ('num', 'name') of 200 questions of other articles: another entity for sure."""
    pool: dict[str, list[str]] = {"num": [], "name": []}
    for q in rng.sample(others, 200):
        for s, e, cls in entity_spans(q.question):
            pool[cls].append(q.question[s:e])
    return pool


def anchor_pairs(
    pairs: Pairs, texts: list[str], row: dict[str, list[str]], fold: int, pool: dict[str, list[str]], rng: random.Random
) -> None:
    """The pairs every anchor gives: its texts (question, paraphrases) in scope of each other; their
    wh- and entity swaps (from `pool`) and the hand-written neighbours out of scope."""
    for i, x in enumerate(texts):
        for y in texts[i + 1 :]:
            pairs.add(x, y, 1, "paraphrase", fold)
        asked = wh_swap(x, rng)
        if asked:
            pairs.add(asked, x, 0, "wh_swap", fold)
        swapped = entity_swap(x, pool, rng)
        if swapped:
            pairs.add(swapped, x, 0, "entity_swap", fold, both=False)
            pairs.add(swapped, rng.choice([t for t in texts if t != x]), 0, "entity_swap", fold, both=False)
    for key, kind in (("other_entity", "same_attribute"), ("other_attribute", "other_attribute")):
        for neg in row[key]:
            for x in texts:
                pairs.add(neg, x, 0, kind, fold)


def nearest_pairs(pairs: Pairs, anchor: str, row: dict[str, list[str]], fold: int, near: list[Question]) -> None:
    """The anchor and one of its paraphrases against questions close by cosine that ask other things."""
    for q in near[:NEAREST]:
        pairs.add(q.question, anchor, 0, "nearest", fold)
        pairs.add(q.question, random.Random(q.id).choice(row["paraphrases"]), 0, "nearest", fold, both=False)


def build_pairs(questions: list[Question], vectors: dict[str, np.ndarray], rng: random.Random) -> Pairs:
    """All pair kinds, from the hand-written files and mined from the training articles. Written anchors
    (about invented entities) are spread over the folds by their position in their file."""
    by_id = {q.id: q for q in questions}
    articles = sorted({q.article for q in questions})
    fold_of = {a: i % FOLDS for i, a in enumerate(articles)}
    by_doc: dict[str, list[Question]] = {}
    for q in questions:
        by_doc.setdefault(q.gold_doc, []).append(q)
    matrix = np.stack([vectors[q.question] for q in questions])  # (Q, dim)
    pairs = Pairs()
    for row in read_jsonl(TRAIN_FILE):
        anchor = by_id[row["squad_id"]]
        fold = fold_of[anchor.article]
        others = [q for q in questions if q.article != anchor.article]
        texts = [anchor.question, *row["paraphrases"]]
        anchor_pairs(pairs, texts, row, fold, pool=_swap_pool(others, rng), rng=rng)
        for other in by_doc[anchor.gold_doc]:
            if other.id != anchor.id and not same_answer(anchor, other):
                pairs.add(other.question, anchor.question, 0, "same_entity", fold)
                pairs.add(other.question, rng.choice(row["paraphrases"]), 0, "same_entity", fold, both=False)
        cosine = matrix @ vectors[anchor.question]  # (Q,)
        ranked = [questions[int(i)] for i in np.argsort(-cosine)]
        near = [q for q in ranked if q.gold_doc != anchor.gold_doc and not same_answer(q, anchor)]
        nearest_pairs(pairs, anchor.question, row, fold, near)
        for q in rng.sample(others, RANDOM):
            pairs.add(q.question, rng.choice(texts), 0, "random", fold)
    for i, row in enumerate(read_jsonl(WRITTEN_FILE)):
        fold, texts = i % FOLDS, [row["question"], *row["paraphrases"]]
        anchor_pairs(pairs, texts, row, fold, pool=_swap_pool(questions, rng), rng=rng)
        cosine = matrix @ vectors[row["question"]]  # (Q,): SQuAD questions are about other entities
        nearest_pairs(pairs, row["question"], row, fold, [questions[int(j)] for j in np.argsort(-cosine)])
        for q in rng.sample(questions, RANDOM):
            pairs.add(q.question, rng.choice(texts), 0, "random", fold)
    return pairs


def features_of(pairs: Pairs, vectors: dict[str, np.ndarray], words: dict[str, Words]) -> np.ndarray:
    """(P, f + a) pair features: FEATURES then ALIGNMENT_FEATURES, computed as the service computes them."""
    rows = [
        full_features(pair_features(a, vectors[a], [b], vectors[b][None, :]), words[a], [words[b]])[0]
        for a, b in zip(pairs.a, pairs.b, strict=True)
    ]
    return np.stack(rows)


@dataclass(frozen=True)
class Option:
    """One model of the grid: logistic or MLP, on FEATURES alone or with ALIGNMENT_FEATURES; `cascade`:
    pairs below the cosine floor are dropped (p = 0), the model is fitted and calibrated on the rest."""

    label: str
    kind: str = "logistic"
    l2: float = 0.0
    hidden: int = 0
    alpha: float = 0.0
    aligned: bool = False
    cascade: bool = False

    def __str__(self) -> str:
        size = f"hidden {self.hidden}, alpha {self.alpha}" if self.hidden else f"L2 {self.l2}"
        return f"{self.label}{', + alignment' if self.aligned else ''}{', cascade' if self.cascade else ''} ({size})"


GRID = tuple(
    option
    for aligned, cascade in ((False, False), (True, False), (True, True))
    for option in (
        *(Option("logistic", l2=l2, aligned=aligned, cascade=cascade) for l2 in L2_GRID),
        *(Option("MLP, tanh", "mlp", hidden=h, alpha=a, aligned=aligned, cascade=cascade) for h, a in MLP_GRID),
    )
)


def columns(x: np.ndarray, option: Option) -> np.ndarray:
    """(P, f) the option's feature columns: FEATURES, then ALIGNMENT_FEATURES if `aligned`."""
    return x if option.aligned else x[:, : len(FEATURES)]


def fit_model(x: np.ndarray, data: Labelled, option: Option) -> dict[str, object]:
    """One grid option fitted on (P, f) features: the `model` object of scope.json."""
    x = columns(x, option)
    if option.kind == "mlp":
        return fit_mlp(x, data, option.hidden, option.alpha)
    w = fit_logistic(x, data.y, option.l2, data.weight)
    return {"kind": "logistic", "weights": w[:-1].tolist(), "bias": float(w[-1])}


def fit_mlp(x: np.ndarray, data: Labelled, hidden: int, alpha: float) -> dict[str, object]:
    """A one-hidden-layer tanh MLP on standardised features (scikit-learn; weighted pairs)."""
    from sklearn.neural_network import MLPClassifier  # type: ignore[import-untyped]

    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9  # (f,), (f,); 1e-9: constant columns
    net = MLPClassifier((hidden,), activation="tanh", alpha=alpha, max_iter=MLP_ITERATIONS, random_state=SEED)
    net.fit((x - mean) / scale, data.y, sample_weight=data.weight)
    return {
        "kind": "mlp",
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "hidden_weights": net.coefs_[0].T.tolist(),  # (h, f)
        "hidden_bias": net.intercepts_[0].tolist(),
        "output_weights": net.coefs_[1][:, 0].tolist(),
        "output_bias": float(net.intercepts_[1][0]),
    }


def classifier(model: dict[str, object]) -> ScopeClassifier:
    """The serving class over a fitted model, so the fit scores pairs exactly as the service will."""
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in model.items() if k != "kind"}
    return ScopeClassifier(str(model["kind"]), arrays, (1.0, 0.0), {})


def kept(x: np.ndarray, option: Option, floor: float) -> np.ndarray:
    """(P,) bool: the pairs the option's model sees (all, or those at or above the cascade's floor)."""
    return x[:, 0] >= floor if option.cascade else np.ones(len(x), dtype=bool)


def out_of_fold(x: np.ndarray, data: Labelled, option: Option, floor: float) -> np.ndarray:
    """(P,) logits, each from a model fitted without the pair's fold (whole articles); BELOW_FLOOR for
    pairs the cascade drops."""
    z = np.full(len(data.y), BELOW_FLOOR)
    seen = kept(x, option, floor)
    for k in range(FOLDS):
        test, train = (data.folds == k) & seen, (data.folds != k) & seen
        z[test] = classifier(fit_model(x[train], data.part(train), option)).logits(columns(x[test], option))
    return z


def platt(logits: np.ndarray, data: Labelled) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a * logit + b), a one-feature weighted logistic fit (dropped pairs excluded)."""
    seen = logits > BELOW_FLOOR
    w = fit_logistic(logits[seen, None], data.y[seen], 1e-6, data.weight[seen])
    return float(w[0]), float(w[1])


def cross_fitted_platt(z: np.ndarray, data: Labelled) -> np.ndarray:
    """(P,) calibrated probabilities, the Platt map of each fold fitted on the other folds' scores; 0 for
    pairs the cascade drops."""
    p = np.zeros(len(z))
    for k in range(FOLDS):
        test = (data.folds == k) & (z > BELOW_FLOOR)
        a, b = platt(z[data.folds != k], data.part(data.folds != k))
        p[test] = 1 / (1 + np.exp(-(a * z[test] + b)))
    return p


def encode_all(texts: Sequence[str]) -> dict[str, np.ndarray]:
    unique = sorted(set(texts))
    return dict(zip(unique, encoder().encode_queries(unique), strict=True))


def select(x: np.ndarray, data: Labelled, floor: float) -> dict[Option, np.ndarray]:
    """Out-of-fold logits of every grid option; prints the grid."""
    print("\n## Model selection (CV by article: 4 folds of 6 articles, pooled out-of-fold AUC)\n")
    print("| model | CV AUC | balanced accuracy at 0.5 |\n|---|---:|---:|")
    found = {}
    for option in GRID:
        z = found[option] = out_of_fold(x, data, option, floor)
        accuracy = balanced_accuracy((cross_fitted_platt(z, data) >= 0.5).astype(float), data)
        print(f"| {option} | {auc(z, data.y):.4f} | {accuracy:.3f} |", flush=True)
    return found


def training_pairs() -> tuple[Pairs, dict[str, np.ndarray], dict[str, Words], int]:
    """The pairs, every text's vector and word vectors, and the number of hand-written anchors."""
    data = load_squad(SQUAD)
    train = select_articles({q.article for q in data.questions}, "train")
    questions = [q for q in data.questions if q.article in train]
    rows, written = read_jsonl(TRAIN_FILE), read_jsonl(WRITTEN_FILE)
    hand = [r["question"] for r in written]
    hand += [t for r in rows + written for t in r["paraphrases"] + r["other_entity"] + r["other_attribute"]]
    vectors = encode_all([q.question for q in questions] + hand)
    pairs = build_pairs(questions, vectors, random.Random(SEED))
    vectors.update(encode_all(sorted({t for t in pairs.a + pairs.b if t not in vectors})))  # the swaps
    texts = sorted(set(pairs.a + pairs.b))
    words = dict(zip(texts, encoder().encode_words(texts), strict=True))
    print(
        f"anchors: {len(rows)} SQuAD training questions and {len(written)} written ones, "
        f"{sum(len(r['paraphrases']) for r in rows + written)} paraphrases, "
        f"{sum(len(r['other_entity']) for r in rows + written)} hand-written other-entity and "
        f"{sum(len(r['other_attribute']) for r in rows + written)} other-attribute negatives"
    )
    return pairs, vectors, words, len(rows) + len(written)


def main() -> None:
    header("Scope classifier fit (edit memory), SQuAD training articles")
    pairs, vectors, words, anchors = training_pairs()
    x = features_of(pairs, vectors, words)
    data = Labelled.of(pairs.label, pairs.kind, pairs.fold)
    counts = {k: int((data.kinds == k).sum()) for k in KINDS}
    print("pairs per kind: " + ", ".join(f"{k} {n}" for k, n in counts.items()) + f"; total {len(data.y)}")
    floor = cascade_floor(x[:, 0], data)
    report_cascade(x, data, floor)
    grid = select(x, data, floor)
    # Served: the lexical model, or an aligned one behind the cascade (without it, every candidate would need
    # word vectors); the aligned options without the cascade are in the grid to show what the cascade costs.
    option = max((o for o in grid if o.cascade or not o.aligned), key=lambda o: auc(grid[o], data.y))
    lexical = max((o for o in grid if not o.aligned), key=lambda o: auc(grid[o], data.y))
    z = grid[option]
    cv_auc = auc(z, data.y)
    print(f"\nchosen: {option}; CV AUC {cv_auc:.4f} (cosine alone: {auc(x[:, 0], data.y):.4f})")
    p_oof = cross_fitted_platt(z, data)
    print("\n## Reliability of the calibrated out-of-fold probabilities (pairs weighted as in the fit)\n")
    ece = reliability(p_oof, data.y, data.weight)
    threshold = best_threshold(x[:, 0], data)
    print(
        f"\n## Accuracy by kind, out of fold (classifiers: p >= 0.5; cosine: threshold chosen on the other folds, "
        f"on all training pairs {threshold:.3f})\n"
    )
    decided = {f"chosen: {option}": (p_oof >= 0.5).astype(float)}
    decided[f"lexical only: {lexical}"] = (cross_fitted_platt(grid[lexical], data) >= 0.5).astype(float)
    per_kind(data, KINDS, {**decided, "cosine baseline": cross_fitted_cosine(x[:, 0], data)})
    fit = {"anchors": anchors, "pairs": counts, "model": str(option), "cv_auc": round(cv_auc, 4)}
    fit.update({"cv_ece": round(ece, 4), "cosine_threshold": threshold})
    seen = kept(x, option, floor)
    params = {
        "features": list(FEATURES + ALIGNMENT_FEATURES if option.aligned else FEATURES),
        "model": {
            k: np.round(v, 6).tolist() if isinstance(v, list) else v
            for k, v in fit_model(x[seen], data.part(seen), option).items()
        },
        "calibration": dict(zip(("a", "b"), platt(z, data), strict=True), method="Platt, on out-of-fold logits"),
        "cascade": {"cosine_floor": floor if option.cascade else -1.0, "quantile": FLOOR_QUANTILE},
        "fit": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "flock /tmp/bench.lock .venv/bin/python -m bench.fit_scope",
            "data": "SQuAD v1.1 dev, training articles (select_articles 'train'); bench/data/scope_train.jsonl",
            "prior": "in-scope and out-of-scope pairs weighted 1/2 each; negative kinds equally",
            **fit,
        },
    }
    BUNDLED.parent.mkdir(parents=True, exist_ok=True)
    BUNDLED.write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {BUNDLED} ({option})")


if __name__ == "__main__":
    main()
