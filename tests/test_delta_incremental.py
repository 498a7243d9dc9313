"""The delta index grows by its batches: a batch is analysed alone and appended, the previous
snapshot's arrays are extended rather than rebuilt, a published snapshot never changes, and dead
rows are dropped once they outnumber the live ones. Work is counted in rows, never timed."""

import math
import random
from collections.abc import Sequence

import numpy as np
import pytest
import scipy.sparse as sp

from ragserve.types import RetrievalMode
from retriever.delta import MERGE_RATIO, DeltaIndex
from retriever.search import search
from retriever.sparse import SparseIndex
from tests.test_sparse_topk import FUSION, PARAMS, QUERIES, document, texts


@pytest.fixture()
def index() -> SparseIndex:
    return SparseIndex.from_texts(texts(random.Random(0), 200), PARAMS)


class CountingIndex(SparseIndex):
    """The version's statistics, noting how many texts each call analyses."""

    calls: list[int]

    def tf_rows(self, texts: Sequence[str]) -> tuple[sp.csr_matrix, np.ndarray]:
        self.calls.append(len(texts))
        return super().tf_rows(texts)


def counting(index: SparseIndex) -> CountingIndex:
    counted = CountingIndex.__new__(CountingIndex)
    counted.__dict__.update(index.__dict__)
    counted.calls = []
    return counted


def test_a_batch_analyses_its_own_chunks_only_at_any_delta_size(index: SparseIndex) -> None:
    statistics = counting(index)
    delta = DeltaIndex(8, statistics)
    rng = random.Random(1)
    for batch in range(1, 1501):
        doc = f"d{rng.randrange(1000)}"  # new documents and replacements of earlier ones
        chunks, vectors = document(doc, rng)
        before = delta.analysed
        delta.put({doc: (chunks, vectors)}, [], seq=batch)
        assert delta.analysed - before == len(chunks)  # not the delta's size: it reaches ~3,000 rows
    assert statistics.calls == [n for n in statistics.calls if n <= 3]  # 3 chunks per document at most
    assert delta.chunks > 1500


def test_snapshots_extend_the_previous_arrays(index: SparseIndex) -> None:
    delta = DeltaIndex(8, index)
    rng = random.Random(2)
    reallocated = 0
    for batch in range(1, 2001):
        previous = delta.snapshot()
        delta.put({f"n{batch}": document(f"n{batch}", rng)}, [], seq=batch)
        snap = delta.snapshot()
        assert snap.chunks is previous.chunks  # one list, appended to
        if not np.shares_memory(snap.vectors, previous.vectors) and previous.rows:
            reallocated += 1  # a full buffer, replaced by one twice its size
        kept = [b for b in previous.postings if any(b is a for a in snap.postings)]
        assert snap.postings[: len(kept)] == tuple(kept)  # untouched older blocks are the very objects
    rows = delta.snapshot().rows
    assert reallocated <= math.log2(rows) + 1
    assert delta.copied < 2 * rows  # growth by doubling: fewer than two copies per row
    assert len(delta.snapshot().postings) <= math.log(rows, MERGE_RATIO) + 1  # each block > MERGE_RATIO x the next
    assert delta.merged <= 2 * rows * math.log2(rows)  # a row is merged O(log rows) times, not once per batch


def test_a_published_snapshot_never_changes(index: SparseIndex) -> None:
    delta = DeltaIndex(8, index)
    rng = random.Random(3)
    delta.put({f"d{i}": document(f"d{i}", rng) for i in range(30)}, [], seq=1)
    old = delta.snapshot()
    vectors = np.random.default_rng(0).standard_normal((len(QUERIES), 8)).astype(np.float32)
    before = {mode: search(old, index, QUERIES, vectors, 10, mode, FUSION) for mode in RetrievalMode}
    rewrites = 0
    for batch in range(2, 200):  # replace and delete its documents, grow the buffers, rewrite
        doc, rows = f"d{rng.randrange(40)}", delta.snapshot().rows
        if rng.random() < 0.3:
            delta.put({}, [doc], seq=batch)
        else:
            delta.put({doc: document(doc, rng)}, [], seq=batch)
        rewrites += delta.snapshot().rows < rows
    assert delta.snapshot().generation > old.generation
    for mode in RetrievalMode:
        assert search(old, index, QUERIES, vectors, 10, mode, FUSION) == before[mode]
    later = delta.contents().hidden - {f"d{i}" for i in range(30)}  # hidden after `old` was taken
    assert later and all(doc not in old.hidden and doc in delta.snapshot().hidden for doc in later)
    assert rewrites > 0 and not np.shares_memory(old.vectors, delta.snapshot().vectors)


def test_dead_rows_never_outnumber_live_ones(index: SparseIndex) -> None:
    delta = DeltaIndex(8, index)
    rng = random.Random(4)
    for batch in range(1, 501):  # the same ten documents over and over
        doc = f"d{batch % 10}"
        delta.put({doc: document(doc, rng)}, [], seq=batch)
        snap = delta.snapshot()
        assert snap.rows - snap.live <= snap.live
        assert snap.live == delta.chunks == len(delta.contents().chunks)
    assert delta.snapshot().rows <= 2 * delta.chunks  # bounded by what it holds, not by what came
    delta.put({}, [f"d{i}" for i in range(10)], seq=501)
    assert delta.snapshot().rows == delta.chunks == 0 and delta.contents().hidden == {f"d{i}" for i in range(10)}


def test_contents_list_documents_in_the_order_they_first_came(index: SparseIndex) -> None:
    delta = DeltaIndex(8, index)
    rng = random.Random(5)
    delta.put({"a": document("a", rng), "b": document("b", rng)}, [], seq=1)
    delta.put({"c": document("c", rng), "a": document("a", rng)}, ["b"], seq=2)  # a keeps its place
    delta.put({"b": document("b", rng)}, [], seq=3)  # b comes back last
    contents = delta.contents()
    docs = list(dict.fromkeys(c.doc_id for c in contents.chunks))
    assert docs == [d for d in ("a", "c", "b") if any(c.doc_id == d for c in contents.chunks)]
    assert contents.documents == 3 and contents.seq == 3 and contents.vectors.shape == (len(contents.chunks), 8)
    live = delta.snapshot()
    rows = [r for r in range(live.rows) if live.died[r] > live.generation]
    np.testing.assert_array_equal(
        contents.vectors[np.argsort([c.chunk_id for c in contents.chunks])],
        live.vectors[rows][np.argsort([live.chunks[r].chunk_id for r in rows])],
    )
