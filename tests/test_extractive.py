"""Evidence-copying decoding: answers can only be spans of the passages, and say where they are."""

import threading
from collections.abc import Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ragserve.types import Passage
from reader.extractive import Source, SpanConstraint, constrained_argmax, flatten_with_map, source_of
from reader.generator import Generator
from reader.prompt import flatten
from reader.registry import ReaderContext, create_reader
from tests.defaults import readers

END = 999


def source(ids: Sequence[int]) -> Source:
    """A passage whose text is its token ids written out, one word per token."""
    words = [f"w{i}" for i in ids]
    spans, at = [], 0
    for word in words:
        spans.append((at, at + len(word)))
        at += len(word) + 1
    return Source(" ".join(words), list(ids), spans)


def is_span(tokens: Sequence[int], ids: Sequence[int]) -> bool:
    n = len(tokens)
    return any(list(ids[i : i + n]) == list(tokens) for i in range(len(ids) - n + 1))


@settings(max_examples=300, deadline=None)
@given(
    passages=st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=15), min_size=1, max_size=3),
    data=st.data(),
)
def test_whatever_the_model_prefers_the_answer_is_a_span_of_one_passage(
    passages: list[list[int]], data: st.DataObject
) -> None:
    constraint = SpanConstraint([source(p) for p in passages], {END})
    taken: list[int] = []
    while not constraint.ended and len(taken) < 20:
        allowed = constraint.allowed()
        assert allowed and (END in allowed) == bool(taken)
        token = data.draw(st.sampled_from(allowed))  # a model that prefers any allowed token
        constraint.advance(token)
        if token != END:
            taken.append(token)
    assert any(is_span(taken, p) for p in passages)
    evidence = constraint.evidence()
    assert evidence is not None
    assert evidence.text == " ".join(f"w{t}" for t in taken)
    assert constraint.sources[evidence.passage].text[evidence.start_char : evidence.end_char] == evidence.text


@given(text=st.text(alphabet=st.sampled_from("ab \n\t,."), max_size=30))
def test_flattening_keeps_a_map_back_to_the_original_characters(text: str) -> None:
    flat, where = flatten_with_map(text)
    assert flat == flatten(text) and len(where) == len(flat)
    for char, at in zip(flat, where, strict=True):
        assert text[at] == char or (char == " " and text[at].isspace())


def test_constrained_argmax_takes_the_best_allowed_token_and_leaves_free_rows_alone() -> None:
    logprobs = torch.log_softmax(torch.tensor([[0.0, 5.0, 1.0, 2.0], [0.0, 5.0, 1.0, 2.0]]), dim=-1)  # (2, 4)
    constraint = SpanConstraint([source([2, 3])], {END})
    assert constrained_argmax(logprobs, [constraint, None]).tolist() == [3, 1]


def test_token_spans_map_to_the_original_text(generator: Generator) -> None:
    text = "The Harrow  bridge\nwas built in 1871."
    src = source_of(generator.text.tokenizer, text)
    assert generator.text.decode(src.ids) == " " + flatten(text)
    assert "".join(text[a:b] for a, b in src.spans).split() == text.split()


PASSAGES = [
    Passage("q#0", "quenmoor", "Quenmoor", "Quenmoor is a small river town with 4,200 inhabitants.", 1.0),
    Passage("b#0", "bridge", "Harrow bridge", "The Harrow bridge was built\nin 1871 by Tomas Brell.", 0.5),
]
QUESTIONS = ["How many people live in Quenmoor?", "Who built the Harrow bridge?", "When was the bridge built?"]


@pytest.mark.parametrize("batch_max", [1, 4])
def test_the_stuff_reader_copies_its_answer_and_cites_the_span(generator: Generator, batch_max: int) -> None:
    reader = create_reader("stuff", ReaderContext(generator, readers(batch_max=batch_max)))
    for question in QUESTIONS:
        answer = reader.answer_extractive(question, PASSAGES)
        assert answer.evidence is not None and answer.text
        passage = PASSAGES[answer.evidence.passage]
        assert passage.text[answer.evidence.start_char : answer.evidence.end_char] == answer.text


def test_extractive_and_free_answers_decoded_together_equal_lone_ones(generator: Generator) -> None:
    lone_reader = create_reader("stuff", ReaderContext(generator, readers(batch_max=1)))
    lone = {
        (q, e): (lone_reader.answer_extractive if e else lone_reader.answer)(q, PASSAGES).text
        for q in QUESTIONS
        for e in (False, True)
    }
    batched = create_reader("stuff", ReaderContext(generator, readers(batch_max=8)))
    got: dict[tuple[str, bool], str] = {}

    def ask(question: str, extractive: bool) -> None:
        got[question, extractive] = (batched.answer_extractive if extractive else batched.answer)(
            question, PASSAGES
        ).text

    threads = [threading.Thread(target=ask, args=key) for key in lone]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == lone
