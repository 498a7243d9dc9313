"""SQuAD v1.1 answer metrics with the official normalization (lower-case, strip punctuation and
articles, collapse whitespace); scores are the maximum over the gold answers, as fractions. And
the split by article used for anything tuned on SQuAD: titles sorted, the first half to tune
("train"), the second half held out ("heldout")."""

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    return max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    return max(_f1(prediction, g) for g in golds)


ARTICLE_SPLITS = ("all", "train", "heldout")


def select_articles(titles: Iterable[str], split: str) -> set[str]:
    """The article titles of one split (SQuAD v1.1 dev: 48 articles, 24 and 24)."""
    ordered = sorted(set(titles))
    half = len(ordered) // 2
    chosen = {"all": ordered, "train": ordered[:half], "heldout": ordered[half:]}
    if split not in chosen:
        raise ValueError(f"unknown article split {split!r}; one of {', '.join(ARTICLE_SPLITS)}")
    return set(chosen[split])
