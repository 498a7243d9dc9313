"""Micro-batching: concurrent callers get exactly what a lone call gives, in fewer passes."""

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from ragserve.compute import use_compute_thread
from ragserve.errors import InvalidInputError
from ragserve.types import RetrievalMode, SearchResult
from retriever.base import Retriever
from retriever.batching import BatchedRetriever, MicroBatcher
from retriever.encoder import Encoder
from retriever.version import VersionRetriever
from tests.defaults import SEARCH

QUERIES = [f"question number {i} about the Harrow bridge and Quenmoor" * (1 + i % 3) for i in range(24)]


def run_threads(target: Callable[[int], None], n: int) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_queries_share_passes_and_equal_lone_embeddings(encoder: Encoder) -> None:
    passes: list[int] = []

    def counted(queries: Sequence[str]) -> list[np.ndarray]:
        passes.append(len(queries))
        return list(encoder.encode_queries(queries))

    batcher = MicroBatcher(counted, max_batch=8, max_wait_ms=20)
    got: dict[int, np.ndarray] = {}

    def ask(i: int) -> None:
        (got[i],) = batcher.submit([QUERIES[i]])

    run_threads(ask, len(QUERIES))
    batcher.close()
    lone = encoder.encode_queries(QUERIES)  # (24, dim)
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


def test_a_batch_waits_for_as_many_items_as_the_last_one_held_and_a_lone_caller_never_waits() -> None:
    passes: list[list[str]] = []

    def run(items: Sequence[str]) -> list[str]:
        passes.append(list(items))
        return list(items)

    batcher = MicroBatcher(run, max_batch=16, max_wait_ms=10_000)
    started = time.monotonic()
    assert batcher.submit(["alone"]) == ["alone"]  # the previous batch held 1: nothing to wait for
    assert batcher.submit(["alone again"]) == ["alone again"]
    assert time.monotonic() - started < 5  # far below max_wait: it did not wait
    assert batcher.submit(["a", "b", "c"]) == ["a", "b", "c"]  # now three items are expected

    got: dict[int, list[str]] = {}

    def one(i: int) -> None:
        time.sleep(0.05 * i)  # staggered arrivals, each after the worker has taken the first
        got[i] = list(batcher.submit([f"q{i}"]))

    run_threads(one, 3)
    batcher.close()
    assert sorted(passes[-1]) == ["q0", "q1", "q2"]  # one pass for all three
    assert got == {0: ["q0"], 1: ["q1"], 2: ["q2"]}


class CountingRetriever(Retriever):
    """A real index version that records the batches it is asked to search."""

    def __init__(self, inner: VersionRetriever) -> None:
        self.inner = inner
        self.batches: list[tuple[int, int, RetrievalMode | None]] = []

    @property
    def index_version(self) -> str:
        return self.inner.index_version

    def search_batch(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[SearchResult]:
        self.batches.append((len(queries), top_k, mode))
        if top_k == 13:
            raise InvalidInputError("13 is refused by this test retriever")
        return self.inner.search_batch(queries, top_k, mode)


@pytest.fixture(scope="module")
def version(tiny_index: Path, encoder: Encoder) -> VersionRetriever:
    return VersionRetriever(tiny_index, encoder, SEARCH)


def chunk_ids(result: SearchResult) -> list[str]:
    return [p.chunk_id for p in result.passages]


@pytest.mark.parametrize("on", [None, "compute"], ids=["own worker", "on the compute thread"])
def test_batched_searches_equal_lone_ones_per_top_k_and_mode(version: VersionRetriever, on: str | None) -> None:
    counting = CountingRetriever(version)
    batched = BatchedRetriever(counting, max_batch=32, max_wait_ms=20, on=use_compute_thread() if on else None)
    modes = [RetrievalMode.DENSE, RetrievalMode.SPARSE, RetrievalMode.HYBRID, None]
    asks = [(QUERIES[i], 1 + i % 3, modes[i % 4]) for i in range(len(QUERIES))]
    got: dict[int, SearchResult] = {}

    def ask(i: int) -> None:
        got[i] = batched.search(*asks[i])

    run_threads(ask, len(asks))
    batched.close()
    for i, (query, top_k, mode) in enumerate(asks):
        lone = version.search(query, top_k, mode)
        assert chunk_ids(got[i]) == chunk_ids(lone)
        assert [p.score for p in got[i].passages] == pytest.approx([p.score for p in lone.passages], abs=1e-5)
    assert sum(n for n, _, _ in counting.batches) == len(asks)
    assert len(counting.batches) < len(asks)  # some searches shared a batch


@pytest.mark.parametrize("on", [None, "compute"], ids=["own worker", "on the compute thread"])
def test_awaited_searches_share_batches_and_equal_lone_ones(version: VersionRetriever, on: str | None) -> None:
    counting = CountingRetriever(version)
    batched = BatchedRetriever(counting, max_batch=32, on=use_compute_thread() if on else None)

    async def all_at_once() -> list[SearchResult]:
        return await asyncio.gather(*(batched.search_async(q, 2, RetrievalMode.HYBRID) for q in QUERIES))

    got = asyncio.run(all_at_once())
    batched.close()
    for query, result in zip(QUERIES, got, strict=True):
        assert chunk_ids(result) == chunk_ids(version.search(query, 2, RetrievalMode.HYBRID))
    assert len(counting.batches) < len(QUERIES)


@pytest.mark.parametrize("on", [None, "compute"], ids=["own worker", "on the compute thread"])
def test_a_failing_search_fails_only_the_callers_that_asked_for_it(version: VersionRetriever, on: str | None) -> None:
    batched = BatchedRetriever(
        CountingRetriever(version), max_batch=32, max_wait_ms=50, on=use_compute_thread() if on else None
    )
    outcomes: dict[int, SearchResult | Exception] = {}

    def ask(i: int) -> None:
        try:
            outcomes[i] = batched.search(QUERIES[i], 13 if i % 2 else 2)
        except InvalidInputError as exc:
            outcomes[i] = exc

    run_threads(ask, 8)
    batched.close()
    for i, outcome in outcomes.items():
        assert isinstance(outcome, InvalidInputError if i % 2 else SearchResult)
    assert len(outcomes) == 8
