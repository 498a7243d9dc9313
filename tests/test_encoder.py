"""The encoder's fast paths against the plain one: `SentenceTransformer.encode` of the same texts."""

import numpy as np
import pytest

from ragserve.precision import native_bf16, resolve_precision
from ragserve.types import Precision
from retriever.encoder import Encoder

TEXTS = [
    "Short.",
    "Super Bowl 50 was an American football game to determine the champion of the NFL.",
    " ".join(["The Normans gave their name to Normandy, a region in France."] * 12),
    "Which NFL team represented the AFC at Super Bowl 50?",
    " ".join(["word"] * 300),  # longer than the window: truncated by both paths alike
]


@pytest.fixture(scope="module")
def bf16_encoder() -> Encoder:
    return Encoder("all-MiniLM-L6-v2", precision=Precision.BF16)


def test_fp32_token_id_batches_equal_sentence_transformers(encoder: Encoder) -> None:
    assert encoder.precision is Precision.FP32
    plain = encoder.model.encode(TEXTS, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    ids = [t.ids[: encoder.max_tokens] for t in encoder.tokenize(TEXTS)]
    for batch_size in (1, 2, 8):
        assert np.allclose(encoder.encode_ids(ids, batch_size=batch_size), plain, atol=1e-5)


def test_bf16_vectors_point_where_fp32_ones_do(encoder: Encoder, bf16_encoder: Encoder) -> None:
    ids = [t.ids[: encoder.max_tokens] for t in encoder.tokenize(TEXTS)]
    fp32, bf16 = encoder.encode_ids(ids), bf16_encoder.encode_ids(ids)
    assert bf16.dtype == np.float32
    assert np.allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert (fp32 * bf16).sum(axis=1).min() > 0.999
    # Same nearest text for every query under both formats.
    queries = ["What game decided the NFL champion?", "Where is Normandy?"]
    assert (
        (encoder.encode_queries(queries) @ fp32.T).argmax(1)
        == (bf16_encoder.encode_queries(queries) @ bf16.T).argmax(1)
    ).all()


def test_auto_precision_is_bf16_only_where_it_is_native() -> None:
    assert resolve_precision("auto", "cpu") is (Precision.BF16 if native_bf16("cpu") else Precision.FP32)
    assert resolve_precision("fp32", "cpu") is Precision.FP32
    with pytest.raises(ValueError):
        resolve_precision("fp8", "cpu")
