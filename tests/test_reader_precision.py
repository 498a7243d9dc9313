"""Every registered reader answers on a bf16 generator as it does on an fp32 one.

Issue 16: `{"reader": "retro"}` on a server at the default precision (`auto`: bf16 where the CPU
multiplies bf16 natively) answered HTTP 500. The retrofit's new layers were fp32 while the
generator's hidden states were bf16, and the first matmul of chunked cross-attention failed
("expected m1 and m2 to have the same dtype"). The reader now casts every retrofit it runs to the
generator's format, and the retrofit converts at its hooks whatever format it is in; these tests
hold both, for every reader the registry has (a reader registered later is covered unasked)."""

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from ragserve.types import Passage
from reader import builtin  # noqa: F401  (registers the built-in readers)
from reader.generator import Generator
from reader.registry import ReaderContext, create_reader, reader_names
from reader.retro import RetroReader, save_retrofit
from reader.retro_model import RetroConfig, Retrofit, RetroState
from tests.defaults import readers
from tests.tiny_t5 import tiny_t5  # noqa: F401  (the session fixture: `fid` reads with it)

PASSAGES = [
    Passage("lighthouse#0", "lighthouse", "Marrow Point", "The Marrow Point lighthouse was automated in 1994.", 0.62),
    Passage("bridge#0", "bridge", "Harrow bridge", "The Harrow bridge was built in 1871 by Tomas Brell.", 0.41),
]
QUESTION = "When was the Marrow Point lighthouse automated?"
GENERATORS = {"fp32": "generator", "bf16": "bf16_generator"}  # precision -> session fixture
# Every registered reader with a trained retrofit configured, and `retro` without one (its
# untrained retrofit: the path that answered 500).
CASES = [(name, "trained") for name in reader_names()] + [("retro", "untrained")]
# Readers whose weights are random here (a random tiny T5, a random retrofit with open gates):
# they must answer, but what they answer means nothing.
RANDOM = {("fid", "trained"), ("retro", "trained")}


@pytest.fixture(scope="module")
def retro_weights(generator: Generator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A retrofit file as `ragserve train retro` writes one: the default shapes, fp32 tensors,
    non-zero gates (random weights, so cross-attention really changes the output)."""
    torch.manual_seed(0)
    retrofit = Retrofit(generator.model, RetroConfig())
    with torch.no_grad():
        retrofit.gates.fill_(0.5)
    path = tmp_path_factory.mktemp("retro") / "retrofit.safetensors"
    save_retrofit(retrofit, path)
    return path


def search(queries: Sequence[str], top_k: int) -> list[list[Passage]]:
    """RETRO's retrieval at chunk boundaries: the same passages for every chunk."""
    return [PASSAGES[:top_k] for _ in queries]


@pytest.mark.parametrize("precision", sorted(GENERATORS))
@pytest.mark.parametrize(("name", "retrofit"), CASES)
def test_every_registered_reader_answers_in_either_precision(
    request: pytest.FixtureRequest,
    precision: str,
    name: str,
    retrofit: str,
    retro_weights: Path,
    tiny_t5: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    generator: Generator = request.getfixturevalue(GENERATORS[precision])
    weights = retro_weights if retrofit == "trained" else None  # None and an empty cache: untrained
    config = readers(max_new_tokens=12, fid_model=str(tiny_t5), retro_weights=weights, cache_dir=tmp_path)
    reader = create_reader(name, ReaderContext(generator, config, search))
    answer = reader.answer(QUESTION, PASSAGES)
    assert isinstance(answer.text, str) and answer.passages == PASSAGES
    if (name, retrofit) not in RANDOM:
        assert "1994" in answer.text, answer.text
    if answer.weights is not None:  # rag-*: a posterior over the passages
        assert sum(answer.weights) == pytest.approx(1.0, abs=1e-4)
    if isinstance(reader, RetroReader):
        assert next(reader.retrofit.parameters()).dtype == generator.model.dtype  # cast to the generator's format


@torch.inference_mode()
def test_an_uncast_fp32_retrofit_runs_on_a_bf16_generator(bf16_generator: Generator) -> None:
    """The layer-level guard: fp32 layers on bf16 hidden states convert at the hooks."""
    config = RetroConfig(chunk=8, neighbours=2, neighbour_tokens=12, layers=(3, 29), encoder_dim=64, encoder_heads=2)
    torch.manual_seed(1)
    retrofit = Retrofit(bf16_generator.model, config)  # fp32, never cast
    retrofit.gates.fill_(1.0)
    ids = torch.randint(0, 49_152, (1, 24))  # (B, T): 3 chunks
    neighbours = torch.randint(0, 49_152, (1, 3, 2, 12))  # (B, L, k, r)
    state = RetroState(neighbours, torch.ones(neighbours.shape, dtype=torch.bool))
    out = retrofit(ids, state).logits  # (B, T, V)
    base = bf16_generator.model(input_ids=ids).logits
    assert retrofit.dtype == torch.float32 and out.dtype == base.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, : config.chunk - 1], base[:, : config.chunk - 1])  # no complete chunk yet
    assert (out[:, config.chunk - 1 :] - base[:, config.chunk - 1 :]).abs().max() > 1e-2  # CCA had an effect
