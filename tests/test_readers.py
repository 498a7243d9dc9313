"""Property tests of the RAG, fusion and stuffing readers on the real default generator: they
would catch a wrong marginalization, a wrong cache layout or a padding bug."""

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ragserve.errors import ReaderUnavailableError
from ragserve.types import Passage, Precision
from reader.base import Reader
from reader.fusion import passage_segment, question_segment
from reader.generator import Generator
from reader.lm import Batch, CausalLM
from reader.marginal import marginal_next_token, passage_prior, posterior
from reader.prompt import PREFIX, qa_suffix
from reader.registry import ReaderContext, create_reader
from tests.defaults import SETTINGS, readers
from tests.tiny_t5 import tiny_t5  # noqa: F401  (fixture)

PASSAGES = [
    Passage("lighthouse#0", "lighthouse", "Marrow Point", "The Marrow Point lighthouse was automated in 1994.", 0.62),
    Passage("bridge#0", "bridge", "Harrow bridge", "The Harrow bridge was built in 1871 by Tomas Brell.", 0.41),
    Passage("cheese#0", "cheese", "Velt cheese", "Velt cheese is ripened for nine months in limestone caves.", 0.30),
]
QUESTION = "When was the Marrow Point lighthouse automated?"


def reader(generator: Generator, name: str, **config: object) -> Reader:
    return create_reader(name, ReaderContext(generator, readers(max_new_tokens=12, **config)))  # type: ignore[arg-type]


def plain(generator: Generator, passages: Sequence[Passage], question: str = QUESTION) -> list[int]:
    """Greedy answer tokens of the plain model on prefix + the stuffed prompt."""
    suffix = generator.text.encode(qa_suffix(question, passages))
    return generator.greedy(suffix, 12, prefix=generator.text.encode(PREFIX))


def test_padded_rows_equal_single_rows(generator: Generator) -> None:
    prefix = generator.text.encode(PREFIX)
    suffixes = [generator.text.encode(qa_suffix(QUESTION, [p])) for p in PASSAGES]
    batch = generator.lm.start(prefix, suffixes)  # left-padded to the longest
    for row, suffix in enumerate(suffixes):
        alone = generator.lm.start(prefix, [suffix])
        torch.testing.assert_close(batch.logprobs[row], alone.logprobs[0], atol=2e-4, rtol=0)


def test_continuation_logprob_is_the_sum_of_step_logprobs(generator: Generator) -> None:
    lm = generator.lm
    prefix, suffix = generator.text.encode(PREFIX), generator.text.encode(qa_suffix(QUESTION, PASSAGES[:1]))
    continuation = generator.text.encode(" 1994\n")
    teacher_forced = lm.continuation_logprob(lm.start(prefix, [suffix]), [continuation])
    batch, total = lm.start(prefix, [suffix]), 0.0
    for token in continuation:
        total += float(batch.logprobs[0, token])
        batch = lm.step(batch, torch.tensor([token]))
    assert float(teacher_forced[0]) == pytest.approx(total, abs=1e-3)


@pytest.mark.parametrize("name", ["rag-token", "rag-sequence", "fusion", "stuff"])
def test_with_one_passage_every_reader_equals_plain_generation(generator: Generator, name: str) -> None:
    one = PASSAGES[1:2]
    question = "Who built the Harrow bridge?"
    expected = generator.text.answer_text(plain(generator, one, question))
    if name == "fusion":  # its prompt puts the question in a segment of its own
        tokens = generator.text.encode(passage_segment(one[0].text)) + generator.text.encode(question_segment(question))
        expected = generator.text.answer_text(generator.greedy(tokens, 12, prefix=generator.text.encode(PREFIX)))
    answer = reader(generator, name).answer(question, one)
    assert answer.text == expected and expected
    if name.startswith("rag"):
        assert answer.weights == [pytest.approx(1.0)] and 0 < (answer.probability or 0) <= 1


def test_marginals_and_posteriors_are_distributions(generator: Generator) -> None:
    log_prior = passage_prior([p.score for p in PASSAGES], temperature=0.1)
    assert float(log_prior.exp().sum()) == pytest.approx(1.0, abs=1e-6)
    suffixes = [generator.text.encode(qa_suffix(QUESTION, [p])) for p in PASSAGES]
    batch = generator.lm.start(generator.text.encode(PREFIX), suffixes)
    marginal = marginal_next_token(log_prior, batch.logprobs)  # (V,)
    assert float(marginal.exp().sum()) == pytest.approx(1.0, abs=1e-4)
    assert float(posterior(log_prior, torch.tensor([-1.0, -3.0, -9.0])).sum()) == pytest.approx(1.0, abs=1e-6)
    for name in ("rag-token", "rag-sequence"):
        answer = reader(generator, name, temperature=0.1).answer(QUESTION, PASSAGES)
        assert sum(answer.weights or []) == pytest.approx(1.0, abs=1e-5)
        assert answer.passages[0].doc_id == "lighthouse" and "1994" in answer.text


def test_beam_search_finds_an_answer_at_least_as_likely_as_greedy(generator: Generator) -> None:
    question = "Who built the Harrow bridge and when?"
    greedy = reader(generator, "rag-token", temperature=1.0).answer(question, PASSAGES)
    beam = reader(generator, "rag-token", temperature=1.0, num_beams=4).answer(question, PASSAGES)
    assert (beam.probability or 0) >= (greedy.probability or 0) * (1 - 1e-4)


def test_fusion_is_invariant_to_passage_order(generator: Generator) -> None:
    fusion = reader(generator, "fusion")
    forward = fusion.answer(QUESTION, PASSAGES)
    backward = fusion.answer(QUESTION, PASSAGES[::-1])
    assert forward.text == backward.text and "1994" in forward.text
    lm, prefix = generator.lm, generator.text.encode(PREFIX)
    asked = torch.tensor([generator.text.encode(question_segment(QUESTION))])

    def next_token(passages: Sequence[Passage]) -> torch.Tensor:
        segments = [generator.text.encode(passage_segment(p.text)) for p in passages]
        fused = lm.fuse(lm.start(prefix, segments), len(prefix))  # type: ignore[attr-defined]
        return lm.extend(fused, asked)[0].logprobs[0]

    torch.testing.assert_close(next_token(PASSAGES), next_token(PASSAGES[::-1]), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def t5_generator(tiny_t5: Path) -> Generator:  # noqa: F811  (the fixture imported above)
    return Generator(str(tiny_t5), SETTINGS.cache_dir, Precision.FP32)


@pytest.mark.parametrize("name", ["rag-token", "rag-sequence", "stuff"])
def test_rag_readers_run_on_an_encoder_decoder_generator(t5_generator: Generator, name: str) -> None:
    one = PASSAGES[:1]
    suffix, prefix = t5_generator.text.encode(qa_suffix(QUESTION, one)), t5_generator.text.encode(PREFIX)
    expected = t5_generator.text.answer_text(t5_generator.greedy(suffix, 12, prefix=prefix))
    assert reader(t5_generator, name).answer(QUESTION, one).text == expected
    answer = reader(t5_generator, name, num_beams=2).answer(QUESTION, PASSAGES)
    assert len(answer.passages) == 3
    if name != "stuff":
        assert sum(answer.weights or []) == pytest.approx(1.0, abs=1e-5) and 0 < (answer.probability or 0) <= 1
    batch = t5_generator.lm.start(
        t5_generator.text.encode(PREFIX), [t5_generator.text.encode(qa_suffix(QUESTION, [p])) for p in PASSAGES]
    )
    marginal = marginal_next_token(passage_prior([p.score for p in PASSAGES], 0.1), batch.logprobs)
    assert float(marginal.exp().sum()) == pytest.approx(1.0, abs=1e-4)


def test_fusion_needs_a_decoder_only_generator(t5_generator: Generator) -> None:
    with pytest.raises(ReaderUnavailableError, match="decoder-only"):
        reader(t5_generator, "fusion")


def test_concurrent_stuff_answers_share_steps_and_equal_lone_answers(
    generator: Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = [QUESTION, "Who built the Harrow bridge?", "How long is Velt cheese ripened?", "Where is Velt made?"]
    lone = [
        generator.text.answer_text(plain(generator, PASSAGES[i % 3 : i % 3 + 1], q)) for i, q in enumerate(questions)
    ]
    rows: list[int] = []
    step = generator.lm.step

    def counted(batch: Batch, tokens: torch.Tensor) -> Batch:
        rows.append(batch.rows)
        return step(batch, tokens)

    monkeypatch.setattr(generator.lm, "step", counted)
    batched = reader(generator, "stuff", batch_max=3, batch_wait_ms=300)
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        got[i] = batched.answer(questions[i], PASSAGES[i % 3 : i % 3 + 1]).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(questions))] == lone
    assert max(rows) > 1 and max(rows) <= 3  # answers shared decoding steps, never more than batch_max rows


@settings(max_examples=6, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=2, max_size=4), join_after=st.integers(0, 3))
def test_merged_and_trimmed_batches_decode_like_lone_rows(
    generator: Generator, lengths: list[int], join_after: int
) -> None:
    """Rows that join a running batch or outlive others get the log-probs they would get alone."""
    lm = generator.lm
    assert isinstance(lm, CausalLM)
    prefix = generator.text.encode(PREFIX)
    base = generator.text.encode(qa_suffix(QUESTION, PASSAGES))
    prompts = [base[:n] for n in lengths]
    token = torch.tensor(generator.text.encode(" 1994")[:1])
    batch = lm.start(prefix, prompts[:1])
    for _ in range(join_after):  # the first row runs alone for a while
        batch = lm.step(batch, token.expand(batch.rows))
    batch = lm.merge(batch, lm.start(prefix, prompts[1:]))
    batch = lm.select(batch, torch.arange(1, len(prompts)))  # the first row leaves
    batch = lm.step(batch, token.expand(batch.rows))
    for row, prompt in enumerate(prompts[1:]):
        alone = lm.step(lm.start(prefix, [prompt]), token)
        torch.testing.assert_close(batch.logprobs[row], alone.logprobs[0], atol=3e-4, rtol=0)


def test_bf16_generator_gives_the_answer_fp32_gives(generator: Generator, bf16_generator: Generator) -> None:
    # every registered reader on a bf16 generator: tests/test_reader_precision.py
    bf16 = bf16_generator
    assert bf16.model.dtype == torch.bfloat16
    assert bf16.text.answer_text(plain(bf16, PASSAGES[:1])) == generator.text.answer_text(
        plain(generator, PASSAGES[:1])
    )
