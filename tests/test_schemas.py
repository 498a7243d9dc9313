"""Request models are built from the settings: the limits they enforce are the configured ones."""

import pytest
from pydantic import ValidationError

from service.http.schemas import request_models
from service.settings import Settings


@pytest.fixture(scope="module")
def models():  # type: ignore[no-untyped-def]
    return request_models(Settings(max_question_chars=20, max_ask_top_k=3, ask_top_k=2, max_retrieve_top_k=7))


def test_defaults_come_from_settings(models) -> None:  # type: ignore[no-untyped-def]
    ask = models.ask.model_validate({"question": "  Who?  "})
    assert (ask.question, ask.top_k, ask.reader) == ("Who?", 2, None)
    assert models.retrieve.model_validate({"query": "q"}).top_k == 5


@pytest.mark.parametrize(
    "body",
    [
        {"question": "x" * 21},
        {"question": ""},
        {"question": "\x1f"},  # a separator Python's strip removes, pydantic's does not
        {"question": " \x1c\x1d "},
        {"question": "ok", "top_k": 4},
        {"question": "ok", "top_k": True},
        {"question": "ok", "reader": "Bad Name"},
        {"question": "ok", "reader": "x" * 65},
        {"question": "ok", "unexpected": 1},
        {"question": None},
    ],
)
def test_ask_rejects(models, body: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError):
        models.ask.model_validate(body)


@pytest.mark.parametrize("top_k", [0, 8, -3])
def test_retrieve_top_k_bounds(models, top_k: int) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError):
        models.retrieve.model_validate({"query": "q", "top_k": top_k})
    assert models.retrieve.model_validate({"query": "q", "top_k": 7}).top_k == 7
