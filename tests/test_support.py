"""The bundled abstention model (retriever/support.py): it loads, and it tells passages that hold
the question's words at high scores from unrelated ones at low scores, in every retrieval mode."""

import time

import pytest

from ragserve.types import Passage, RetrievalMode
from retriever.support import FEATURES, SUPPORT_FILE, SupportModel, entity_terms, features

QUESTION = "In what year did the Brandholm lighthouse on Kessel Island first shine?"
ON_TOPIC = (
    "Brandholm lighthouse",
    "The Brandholm lighthouse stands on the northern cape of Kessel Island. Its lamp first shone in "
    "1874, and the island's lighthouse keepers kept it lit for a century.",
)
OFF_TOPIC = (
    "K-d tree",
    "A k-d tree partitions points by alternating coordinate axes; nearest-neighbour queries descend "
    "the tree and backtrack into cells that could hold a closer point.",
)
# Scores on each mode's own scale: cosine, normalised BM25 in [0, 1], fused (cosine + weighted lexical).
HIGH = {RetrievalMode.DENSE: 0.75, RetrievalMode.SPARSE: 0.8, RetrievalMode.HYBRID: 1.6}
LOW = {RetrievalMode.DENSE: 0.15, RetrievalMode.SPARSE: 0.05, RetrievalMode.HYBRID: 0.2}


def passages(title_text: tuple[str, str], scores: list[float]) -> list[Passage]:
    title, text = title_text
    return [Passage(f"c{i}", f"d{i}", title, text, s, 0, len(text)) for i, s in enumerate(scores)]


@pytest.fixture(scope="module")
def model() -> SupportModel:
    return SupportModel.load()


def test_bundled_model_loads_with_every_mode(model: SupportModel) -> None:
    assert SupportModel.load(SUPPORT_FILE).modes.keys() == model.modes.keys() == set(RetrievalMode)
    for mode in RetrievalMode:
        assert 0.0 < model.threshold(mode) < 1.0
        assert set(model.modes[mode].features) <= set(FEATURES)
    assert "date" in model.meta["fit"] and "command" in model.meta["fit"]  # type: ignore[operator]


@pytest.mark.parametrize("mode", list(RetrievalMode))
def test_supporting_passages_score_high_and_unrelated_low(model: SupportModel, mode: RetrievalMode) -> None:
    good = model.probability(QUESTION, passages(ON_TOPIC, [HIGH[mode], HIGH[mode] * 0.7]), mode)
    bad = model.probability(QUESTION, passages(OFF_TOPIC, [LOW[mode], LOW[mode] * 0.9]), mode)
    assert good > model.threshold(mode) > bad
    assert good > 0.5 > bad


@pytest.mark.parametrize("mode", list(RetrievalMode))
def test_a_high_score_alone_does_not_make_unrelated_passages_support(model: SupportModel, mode: RetrievalMode) -> None:
    """The issue's failure: an unrelated passage at a high score (the k-d tree answer at 0.80)."""
    fooled = model.probability(QUESTION, passages(OFF_TOPIC, [HIGH[mode], LOW[mode]]), mode)
    honest = model.probability(QUESTION, passages(ON_TOPIC, [HIGH[mode], LOW[mode]]), mode)
    assert fooled < honest


def test_the_issues_lighthouse_answer_is_abstained(model: SupportModel) -> None:
    """Issue 21: a lighthouse question answered "1975" from a k-d tree passage at a (hybrid) score of 0.80."""
    question = "When was the lighthouse on Kessel Island built?"
    found = passages(("K-d tree", "K-d trees were first described in 1975 by Jon Bentley."), [0.80])
    assert model.probability(question, found, RetrievalMode.HYBRID) < model.threshold(RetrievalMode.HYBRID)


@pytest.mark.parametrize("mode", list(RetrievalMode))
def test_probabilities_lie_in_the_unit_interval(model: SupportModel, mode: RetrievalMode) -> None:
    for score in (-5.0, 0.0, 0.5, 1.0, 3.0, 100.0):
        for text in (ON_TOPIC, OFF_TOPIC, ("", "")):
            p = model.probability(QUESTION, passages(text, [score] * 3), mode)
            assert 0.0 <= p <= 1.0


def test_no_passages_give_zero(model: SupportModel) -> None:
    for mode in RetrievalMode:
        assert model.probability(QUESTION, [], mode) == 0.0


def test_features_and_entities() -> None:
    assert entity_terms(QUESTION) == {"brandholm", "kessel", "island"}
    assert entity_terms("Who won in 1975?") == {"1975"}
    assert entity_terms("What is a tree?") == set()
    got = features(QUESTION, passages(ON_TOPIC, [0.9, 0.5]))
    assert set(got) == set(FEATURES)
    assert got["entity_top"] == 1.0 and got["has_entity"] == 1.0
    assert got["gap"] == pytest.approx(0.4)
    assert features(QUESTION, passages(OFF_TOPIC, [0.9]))["entity_all"] == 0.0


def test_a_probability_takes_well_under_a_millisecond(model: SupportModel) -> None:
    given = passages(ON_TOPIC, [1.2, 1.0, 0.9, 0.8, 0.7])
    model.probability(QUESTION, given, RetrievalMode.HYBRID)  # warm the term cache
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        model.probability(QUESTION, given, RetrievalMode.HYBRID)
    assert (time.perf_counter() - started) / rounds < 1e-3


@pytest.mark.parametrize("mode", list(RetrievalMode))
def test_a_single_passage_is_judged_by_its_own_combination(model: SupportModel, mode: RetrievalMode) -> None:
    """/v1/ask reads one passage by default: the fit has a combination for every count up to top_k."""
    assert sorted(model.modes[mode].by_count) == list(range(1, model.modes[mode].top_k + 1))
    good = model.probability(QUESTION, passages(ON_TOPIC, [HIGH[mode]]), mode)
    bad = model.probability(QUESTION, passages(OFF_TOPIC, [LOW[mode]]), mode)
    assert good > model.threshold(mode) > bad
    many = passages(ON_TOPIC, [HIGH[mode]] * 9)  # beyond top_k, only the first top_k count
    assert model.probability(QUESTION, many, mode) == model.probability(QUESTION, many[: model.modes[mode].top_k], mode)
