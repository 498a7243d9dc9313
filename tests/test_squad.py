import pytest

from service.application.evaluation import Question, spread_sample
from service.application.squad import exact_match, f1_score, normalize_answer


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  a  cat, an owl and THE dog. ", "cat owl and dog"),
        ("Denver Broncos", "denver broncos"),
        ("1,200", "1200"),
        ("", ""),
    ],
)
def test_official_normalization(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


def test_exact_match_takes_the_best_gold_answer() -> None:
    assert exact_match("the Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert exact_match("Broncos win", ["Denver Broncos", "Broncos"]) == 0.0


def test_f1_is_token_overlap() -> None:
    assert f1_score("Denver Broncos", ["Denver Broncos"]) == 1.0
    assert f1_score("the Broncos team", ["Denver Broncos"]) == pytest.approx(0.5)  # p=1/2, r=1/2
    assert f1_score("nothing shared", ["Denver Broncos"]) == 0.0
    assert f1_score("", ["Denver"]) == 0.0


def test_spread_sample_is_even_and_deterministic() -> None:
    questions = [Question(str(i), "q", ["a"], "d", "t") for i in range(100)]
    picked = spread_sample(questions, 10)
    assert [q.id for q in picked] == [str(i) for i in range(0, 100, 10)]
    assert spread_sample(questions, None) == questions
    assert spread_sample(questions, 1000) == questions
