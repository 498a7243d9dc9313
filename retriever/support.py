"""Calibrated p(the retrieved passages answer the question), from retrieval alone.

Judged before any reader runs, so an abstained answer costs no generation. The motivating failure:
a question about a lighthouse no document mentions was answered "1975" from a passage about k-d
trees that scored 0.80. A score alone cannot tell that passage from a good one; what it lacks is
the question's own words, above all its names and numbers. So the features are scores and lexical
coverage (`FEATURES`), combined by a logistic regression per retrieval mode (scores mean different
things in each: cosine, normalised BM25, fused) and then Platt-calibrated on questions the fit did
not see. The parameters live in `retriever/data/support.json` (plain JSON), written by
`python -m bench.abstention --fit` from SQuAD's training articles, each question asked once
against the full index (answerable) and once against an index without its article (unanswerable).

The event is the same whatever the number of passages handed in: "the top `top_k` passages of
this mode (5, the setting retrieve_top_k) hold the answer". A request that retrieves fewer (the
/v1/ask default top_k is 1) is judged by a combination fitted on that many, so the probability
and the one threshold per mode keep their meaning.

Serving cost is a few tokenisations of the passages and one dot product: well under 1 ms.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragserve.types import Passage, RetrievalMode
from retriever.sparse import indexed_text, terms

SUPPORT_FILE = Path(__file__).resolve().parent / "data" / "support.json"

# Every feature the model can use; the JSON names the ones each mode's fit kept, in its order.
FEATURES = (
    "top_score",  # the best passage's retrieval score
    "gap",  # best minus second best (0 with one passage)
    "mean_score",  # mean score of the passages given
    "cover_top",  # share of the question's content terms in the best passage (title included)
    "cover_all",  # the same in the union of the passages
    "entity_top",  # share of the question's names and numbers in the best passage (1 when it has none)
    "entity_all",  # the same in the union of the passages
    "has_entity",  # 1 when the question has a name or a number: the two entity features mean something
)

_TOKEN = re.compile(r"\w+")


def entity_terms(question: str) -> set[str]:
    """The terms of the question's "entities": capitalised words after the first, and numbers.
    The first word is skipped because every question starts with a capital."""
    words = _TOKEN.findall(question)[1:]
    picked = [w for w in words if w[0].isupper() or any(ch.isdigit() for ch in w)]
    return {t for w in picked for t in terms(w)}


def _share(wanted: set[str], present: set[str]) -> float:
    """The fraction of `wanted` found in `present` (1 when nothing is wanted: nothing is missing)."""
    return len(wanted & present) / len(wanted) if wanted else 1.0


def features(question: str, passages: Sequence[Passage]) -> dict[str, float]:
    """Every feature in `FEATURES` for a non-empty list of passages, best first."""
    assert passages, "features need at least one passage"
    scores = [p.score for p in passages]
    content = set(terms(question))
    entities = entity_terms(question)
    per_passage = [set(terms(indexed_text(p.title, p.text))) for p in passages]
    union = set().union(*per_passage)
    return {
        "top_score": scores[0],
        "gap": scores[0] - scores[1] if len(scores) > 1 else 0.0,
        "mean_score": sum(scores) / len(scores),
        "cover_top": _share(content, per_passage[0]),
        "cover_all": _share(content, union),
        "entity_top": _share(entities, per_passage[0]),
        "entity_all": _share(entities, union),
        "has_entity": float(bool(entities)),
    }


@dataclass(frozen=True, slots=True)
class Combination:
    """One fitted combination: p = sigmoid(scale * (x . weights + bias) + shift)."""

    features: tuple[str, ...]
    weights: np.ndarray  # (f,) logistic weights, aligned with `features`
    bias: float
    scale: float  # Platt calibration of the logit, fitted out of fold
    shift: float

    def probability(self, values: dict[str, float]) -> float:
        x = np.array([values[name] for name in self.features])  # (f,)
        logit = self.scale * (float(x @ self.weights) + self.bias) + self.shift
        return 1.0 / (1.0 + math.exp(-max(min(logit, 50.0), -50.0)))  # clipped: exp must not overflow


@dataclass(frozen=True, slots=True)
class ModeModel:
    """One retrieval mode: a combination per number of passages judged (1 to top_k; the features
    of two passages are not those of five), all calibrated to the same event, and one threshold."""

    by_count: dict[int, Combination]  # passages judged -> its combination
    threshold: float  # the calibrated default below which the service abstains

    @property
    def top_k(self) -> int:
        return max(self.by_count)

    @property
    def features(self) -> tuple[str, ...]:
        """The features of the full top_k combination."""
        return self.by_count[self.top_k].features


class SupportModel:
    """p(the passages answer the question) per retrieval mode, from `support.json`."""

    def __init__(self, modes: dict[RetrievalMode, ModeModel], meta: dict[str, object]) -> None:
        self.modes = modes
        self.meta = meta  # what the JSON records of the fit (date, command, counts)

    @classmethod
    def load(cls, path: Path | None = None) -> SupportModel:
        """The model in `path`; None: the bundled retriever/data/support.json."""
        raw = json.loads((path or SUPPORT_FILE).read_text(encoding="utf-8"))
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> SupportModel:
        modes_raw = raw["modes"]
        assert isinstance(modes_raw, dict), "support.json: 'modes' must map mode names to parameters"
        modes = {RetrievalMode(name): _mode(params) for name, params in modes_raw.items()}
        return cls(modes, {k: v for k, v in raw.items() if k != "modes"})

    def threshold(self, mode: RetrievalMode) -> float:
        """The calibrated default threshold of `mode` (the fit's choice on the training articles)."""
        return self.modes[mode].threshold

    def probability(self, question: str, passages: Sequence[Passage], mode: RetrievalMode) -> float:
        """Calibrated p(`question` is answered by what retrieval finds: its top_k passages in
        `mode` hold the answer), judged from the passages given, best first with `mode`'s scores
        (beyond top_k only the first top_k count); 0 for none."""
        if not passages:
            return 0.0
        model = self.modes[mode]
        judged = passages[: model.top_k]
        return model.by_count[len(judged)].probability(features(question, judged))


def _mode(params: object) -> ModeModel:
    assert isinstance(params, dict), "support.json: each mode's parameters are an object"
    by_count = {int(count): _combination(c) for count, c in params["by_passages"].items()}
    assert sorted(by_count) == list(range(1, len(by_count) + 1)), "support.json: one combination per count 1..k"
    return ModeModel(by_count, float(params["threshold"]))


def _combination(params: dict[str, object]) -> Combination:
    names = tuple(str(n) for n in params["features"])  # type: ignore[attr-defined]
    unknown = set(names) - set(FEATURES)
    assert not unknown, f"support.json names unknown features {sorted(unknown)}"
    calibration = params["calibration"]
    assert isinstance(calibration, dict), "support.json: calibration is an object"
    return Combination(
        features=names,
        weights=np.array(params["weights"], np.float64),
        bias=float(params["bias"]),  # type: ignore[arg-type]
        scale=float(calibration["scale"]),
        shift=float(calibration["shift"]),
    )
