"""Model resolution: bundled aliases, local folders, and clear errors for anything else."""

from pathlib import Path

import numpy as np
import pytest

from ragserve.errors import ModelNotFoundError
from ragserve.types import Precision
from reader.generator import Generator
from reader.models import resolve_generator
from retriever.encoder import Encoder, resolve_retriever


def test_a_local_sentence_transformers_folder_works_like_the_alias(encoder: Encoder) -> None:
    local = Encoder(str(resolve_retriever("all-MiniLM-L6-v2")), precision=Precision.FP32)
    assert local.weights_sha256 == encoder.weights_sha256
    texts = ["a local folder", "works too"]
    assert np.allclose(local.encode_queries(texts), encoder.encode_queries(texts), atol=1e-6)


def test_a_local_causal_lm_folder_works_like_the_alias(generator: Generator, cache_home: Path) -> None:
    assert resolve_generator(str(generator.path), cache_home) == generator.path
    local = Generator(str(generator.path), cache_home, Precision.FP32)
    prompt = local.text.encode("The capital of France is")
    assert local.greedy(prompt, 5) == generator.greedy(prompt, 5)


@pytest.mark.parametrize("name", ["no-such-model", "/nonexistent/folder", "org/unknown-model"])
def test_unknown_models_are_refused_without_any_download(name: str, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not a bundled alias"):
        resolve_retriever(name)
    with pytest.raises(ModelNotFoundError, match="not a bundled alias"):
        resolve_generator(name, tmp_path)
