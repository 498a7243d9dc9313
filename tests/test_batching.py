"""Micro-batching: concurrent callers get exactly what a lone call gives, in fewer passes."""

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from retriever.batching import MicroBatcher
from retriever.encoder import Encoder

QUERIES = [f"question number {i} about the Harrow bridge and Quenmoor" * (1 + i % 3) for i in range(24)]


def test_concurrent_queries_share_passes_and_equal_lone_embeddings(encoder: Encoder) -> None:
    passes: list[int] = []

    def counted(queries: Sequence[str]) -> list[np.ndarray]:
        passes.append(len(queries))
        return list(encoder._encode_queries_now(queries))

    batcher = MicroBatcher(counted, max_batch=8, max_wait_ms=20)
    got: dict[int, np.ndarray] = {}

    def ask(i: int) -> None:
        (got[i],) = batcher.submit([QUERIES[i]])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(QUERIES))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    lone = encoder._encode_queries_now(QUERIES)  # (24, dim)
    for i in range(len(QUERIES)):
        np.testing.assert_allclose(got[i], lone[i], atol=1e-5)
    assert sum(passes) == len(QUERIES) and max(passes) <= 8
    assert len(passes) < len(QUERIES)  # some passes served several callers


def test_a_failing_pass_raises_in_every_caller_and_the_batcher_goes_on() -> None:
    def encode(queries: Sequence[str]) -> list[int]:
        if "bad" in queries:
            raise RuntimeError("boom")
        return [len(q) for q in queries]

    batcher = MicroBatcher(encode, max_batch=4)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(["bad"])
    assert batcher.submit(["good", "also good"]) == [4, 9]
    batcher.close()


def test_the_encoder_batches_only_when_asked(encoder: Encoder) -> None:
    lone = encoder.encode_queries(QUERIES[:3])
    encoder.batch_queries(max_batch=16, max_wait_ms=0)
    try:
        np.testing.assert_allclose(encoder.encode_queries(QUERIES[:3]), lone, atol=1e-6)
    finally:
        encoder.batch_queries(max_batch=1, max_wait_ms=0)  # off again for the other tests
    assert encoder._batcher is None
