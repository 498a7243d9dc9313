"""The `fid` reader on a tiny random-weight T5 (no real T5 weights can be installed here): shapes of
the fused encoder states, padding and batching, and equality with the plain model on one passage."""

from pathlib import Path

import pytest
import torch

from ragserve.errors import ModelNotFoundError, ReaderUnavailableError
from ragserve.types import Passage, Precision
from reader.fid import FidReader, fid_input
from reader.generator import Generator
from reader.registry import ReaderContext, create_reader
from tests.defaults import SETTINGS, readers
from tests.tiny_t5 import tiny_t5  # noqa: F401  (the session fixture)

PASSAGES = [
    Passage("bridge#0", "bridge", "Harrow bridge", "The Harrow bridge was built in 1871 by Tomas Brell.", 0.6),
    Passage("festival#0", "festival", "Zorblat festival", "The Zorblat festival is held every spring.", 0.5),
    Passage("mayor#0", "quenmoor", "Quenmoor", "The mayor of Quenmoor is Ilse Varga, elected in 2019.", 0.4),
]
QUESTION = "Who built the Harrow bridge?"
MAX_NEW = 8


def fid_reader(generator: Generator, folder: Path, **config: object) -> FidReader:
    context = ReaderContext(generator, readers(max_new_tokens=MAX_NEW, fid_model=str(folder), **config))  # type: ignore[arg-type]
    reader = create_reader("fid", context)
    assert isinstance(reader, FidReader)
    return reader


@pytest.fixture(scope="module")
def fid(generator: Generator, tiny_t5: Path) -> FidReader:  # noqa: F811
    return fid_reader(generator, tiny_t5)


def first_logits(reader: FidReader, passages: list[Passage], question: str = QUESTION) -> torch.Tensor:
    encoded, mask = reader.encode([question], [passages])
    _, logits = reader.greedy(encoded, mask, 1)
    return logits  # (1, V)


def test_input_format_keeps_the_field_markers(fid: FidReader) -> None:
    text = fid_input(QUESTION, PASSAGES[0])
    assert text == (
        "question: Who built the Harrow bridge? title: Harrow bridge "
        "context: The Harrow bridge was built in 1871 by Tomas Brell."
    )
    tokens = fid.tokenizer.convert_ids_to_tokens(fid.tokenizer(text)["input_ids"])
    assert tokens[0] == "question:" and "title:" in tokens and "context:" in tokens and tokens[-1] == "</s>"
    assert fid_input("  Who\nbuilt it? ", None) == "question: Who built it?"


def test_k_passages_are_encoded_separately_and_laid_end_to_end(fid: FidReader) -> None:
    encoded, mask = fid.encode([QUESTION], [PASSAGES])
    lengths = [len(fid.tokenizer(fid_input(QUESTION, p))["input_ids"]) for p in PASSAGES]
    k, width, dim = len(PASSAGES), max(lengths), fid.model.config.d_model
    assert encoded.shape == (1, k * width, dim) and mask.shape == (1, k * width)
    blocks, block_masks = encoded[0].reshape(k, width, dim), mask[0].reshape(k, width)  # (k, T, D), (k, T)
    for i, (passage, n) in enumerate(zip(PASSAGES, lengths, strict=True)):
        assert block_masks[i].tolist() == [1] * n + [0] * (width - n)  # each input right-padded to T
        alone, alone_mask = fid.encode([QUESTION], [[passage]])  # (1, n, D): no padding at all
        assert alone.shape == (1, n, dim) and bool(alone_mask.all())
        # padding must not leak into the real tokens: they equal the input encoded on its own
        torch.testing.assert_close(blocks[i, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_with_one_passage_fid_equals_the_plain_model(fid: FidReader) -> None:
    ids = fid.tokenizer(fid_input(QUESTION, PASSAGES[0]), return_tensors="pt")["input_ids"]  # (1, T)
    with torch.inference_mode():
        plain = fid.model.generate(input_ids=ids, max_new_tokens=MAX_NEW, do_sample=False, num_beams=1)[0].tolist()
        step = fid.model(input_ids=ids, decoder_input_ids=torch.tensor([[fid.start]])).logits[:, -1]  # (1, V)
    assert plain[0] == fid.start
    expected = [t for t in plain[1:] if t not in fid.stops]
    encoded, mask = fid.encode([QUESTION], [PASSAGES[:1]])
    tokens, logprobs = fid.greedy(encoded, mask, MAX_NEW)
    assert tokens == [expected] and len(expected) == MAX_NEW  # random weights: no early </s> here
    torch.testing.assert_close(logprobs, step.log_softmax(dim=-1), atol=1e-5, rtol=1e-5)
    answer = fid.answer(QUESTION, PASSAGES[:1])
    assert answer.text == fid.answer_text(expected) and answer.text
    assert answer.passages == PASSAGES[:1] and answer.timings_ms["generate"] > 0


def test_passage_order_permutes_the_blocks_and_not_the_answer(fid: FidReader) -> None:
    encoded, mask = fid.encode([QUESTION], [PASSAGES])
    swapped, swapped_mask = fid.encode([QUESTION], [PASSAGES[::-1]])
    k = len(PASSAGES)
    blocks = encoded[0].reshape(k, -1, encoded.shape[-1])  # (k, T, D)
    torch.testing.assert_close(swapped[0].reshape(k, -1, encoded.shape[-1]), blocks.flip(0), atol=1e-5, rtol=1e-5)
    assert torch.equal(swapped_mask[0].reshape(k, -1), mask[0].reshape(k, -1).flip(0))
    # cross-attention has no position bias: permuting the keys leaves the decoder's output alone
    torch.testing.assert_close(first_logits(fid, PASSAGES[::-1]), first_logits(fid, PASSAGES), atol=1e-4, rtol=1e-4)
    assert fid.answer(QUESTION, PASSAGES[::-1]).text == fid.answer(QUESTION, PASSAGES).text


@pytest.mark.parametrize("k", [2, 5])
def test_a_passage_repeated_k_times_answers_like_it_alone(fid: FidReader, k: int) -> None:
    # k identical blocks of keys and values: every attention weight is split k ways, the output is the same
    encoded, _ = fid.encode([QUESTION], [PASSAGES[:1] * k])
    assert encoded.shape[1] == k * fid.encode([QUESTION], [PASSAGES[:1]])[0].shape[1]
    torch.testing.assert_close(
        first_logits(fid, PASSAGES[:1] * k), first_logits(fid, PASSAGES[:1]), atol=1e-4, rtol=1e-4
    )
    assert fid.answer(QUESTION, PASSAGES[:1] * k).text == fid.answer(QUESTION, PASSAGES[:1]).text


def test_a_batch_of_questions_answers_like_one_question_at_a_time(fid: FidReader) -> None:
    questions = [QUESTION, "Who is the mayor of Quenmoor?", "When is the Zorblat festival held?"]
    passages = [PASSAGES[:1], PASSAGES, PASSAGES[1:]]
    encoded, mask = fid.encode(questions, passages)
    width = max(
        len(fid.tokenizer(fid_input(q, p))["input_ids"]) for q, ps in zip(questions, passages, strict=True) for p in ps
    )
    assert encoded.shape == (3, 3 * width, fid.model.config.d_model) and mask.shape == (3, 3 * width)
    assert not bool(mask[0, width:].any()) and not bool(encoded[0, width:].any())  # fewer passages: masked zeros
    batched = fid.answer_batch(questions, passages)
    one_by_one = [fid.answer(q, ps) for q, ps in zip(questions, passages, strict=True)]
    assert [a.text for a in batched] == [a.text for a in one_by_one]
    assert [a.passages for a in batched] == passages


def test_decoding_stops_at_a_stop_token_and_at_the_limit(fid: FidReader) -> None:
    encoded, mask = fid.encode([QUESTION], [PASSAGES])
    (full,), _ = fid.greedy(encoded, mask, MAX_NEW)
    assert len(full) == MAX_NEW
    (cut,), _ = fid.greedy(encoded, mask, MAX_NEW, {full[2]})
    assert cut == full[: full.index(full[2])]  # the stop token itself is not kept
    (short,), _ = fid.greedy(encoded, mask, 3)
    assert short == full[:3]


def test_long_passages_are_cut_and_no_passage_is_fine(generator: Generator, tiny_t5: Path) -> None:  # noqa: F811
    reader = fid_reader(generator, tiny_t5, max_passage_tokens=4)
    long = Passage("long#0", "long", "Harrow bridge", "the river bridge was built of grey granite in 1871", 0.1)
    (text,) = reader.inputs(QUESTION, [long])
    assert text == fid_input(QUESTION, Passage("long#0", "long", "Harrow bridge", "the river bridge was", 0.1))
    assert reader.encode([QUESTION], [[]])[0].shape[:2] == (
        1,
        len(reader.tokenizer(fid_input(QUESTION, None))["input_ids"]),
    )
    assert reader.answer(QUESTION, []).passages == []


def test_fid_is_unavailable_without_an_encoder_decoder_model(generator: Generator) -> None:
    assert not generator.lm.fuses_encodings
    with pytest.raises(ReaderUnavailableError, match="RAGSERVE_FID_MODEL"):
        create_reader("fid", ReaderContext(generator, readers()))


def test_a_missing_fid_model_folder_is_an_error(generator: Generator, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        create_reader("fid", ReaderContext(generator, readers(fid_model=str(tmp_path / "nowhere"))))


def test_an_encoder_decoder_generator_is_used_directly(tiny_t5: Path, fid: FidReader) -> None:  # noqa: F811
    t5_generator = Generator(str(tiny_t5), SETTINGS.cache_dir, Precision.FP32)
    reader = create_reader("fid", ReaderContext(t5_generator, readers(max_new_tokens=MAX_NEW)))
    assert isinstance(reader, FidReader)
    assert reader.model is t5_generator.model and reader.lock is t5_generator.lock
    assert reader.answer(QUESTION, PASSAGES).text == fid.answer(QUESTION, PASSAGES).text
