"""BM25 top-k without a dense score matrix: the same ids, scores and tie order as ranking a dense
(queries x chunks) matrix, for a version and for a delta with dead rows."""

import random
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from ragserve.types import Passage, RetrievalMode
from retriever.delta import DeltaIndex, DeltaSnapshot
from retriever.docstore import StoredChunk
from retriever.postings import Postings, SparseHits
from retriever.search import search
from retriever.sparse import BM25Params, SparseIndex, indexed_text
from tests.defaults import SEARCH

WORDS = ["granite", "bridge", "river", "cheese", "cave", "lantern", "parade", "spring", "town", "mayor", "the", "of"]
PARAMS = BM25Params(0.9, 0.5)
# Every chunk a candidate: which of the chunks tied at a cut become candidates is no part of this test.
FUSION = replace(SEARCH.fusion, candidates=1000)  # the default weights, every candidate
QUERIES = [
    "granite bridge",
    "cheese cave cave",
    "the lantern parade of spring",
    "river",
    "zzz unknown words",  # no known term: no hit at all
    "",
    "mayor town bridge river granite cheese",
]


def texts(rng: random.Random, n: int) -> list[str]:
    """Short texts over a dozen words: many chunks tie exactly."""
    return [" ".join(rng.choices(WORDS, k=rng.randint(0, 6))) for _ in range(n)]


def dense_reference(
    postings: sp.csr_matrix, index: SparseIndex, queries: list[str], k: int
) -> list[list[tuple[int, float]]]:
    """What search returned before: every chunk's score in a dense (Q, N) matrix, the positive ones
    ranked by a stable sort (ties by row). `postings` are (terms, N) weights."""
    matrix, ceiling = index.query_matrix(queries)
    dense = (matrix @ postings).toarray() / ceiling[:, None]  # (Q, N)
    return [[(int(r), float(row[r])) for r in np.argsort(-row, kind="stable") if row[r] > 0][:k] for row in dense]


def found(scores: np.ndarray, rows: np.ndarray) -> list[list[tuple[int, float]]]:
    return [
        [(int(r), float(s)) for s, r in zip(qs, qr, strict=True) if r >= 0] for qs, qr in zip(scores, rows, strict=True)
    ]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("top_k", [1, 3, 10, 500])  # 500: more than there are chunks
def test_version_top_k_equals_the_dense_ranking(seed: int, top_k: int) -> None:
    index = SparseIndex.from_texts(texts(random.Random(seed), 80), PARAMS)
    reference = dense_reference(index.postings.weights, index, QUERIES, top_k)
    got = found(*index.search(QUERIES, top_k))
    assert got == reference  # ids, tie order and float32 bits
    assert got[QUERIES.index("zzz unknown words")] == [] and got[QUERIES.index("")] == []
    assert any(len(r) < top_k for r in reference) or top_k < 10  # some query has fewer matches than top_k


def test_no_known_term_gives_an_empty_zero_result() -> None:
    index = SparseIndex.from_texts(texts(random.Random(0), 20), PARAMS)
    scores, rows = index.search(["zzz", "qqq www"], 4)
    assert rows.tolist() == [[-1] * 4] * 2 and scores.tolist() == [[0.0] * 4] * 2
    hits = SparseHits.of([index.postings], *index.query_matrix(["zzz"]))
    assert hits.scores.nnz == 0 and hits.at(0, np.arange(5)).tolist() == [0.0] * 5


def test_scores_of_given_rows_equal_the_dense_column() -> None:
    index = SparseIndex.from_texts(texts(random.Random(1), 60), PARAMS)
    matrix, ceiling = index.query_matrix(QUERIES)
    dense = (matrix @ index.postings.weights).toarray() / ceiling[:, None]  # (Q, N)
    hits = SparseHits.of([index.postings], matrix, ceiling)
    rows = np.array([59, 3, 0, 17, 42, 8], np.int64)  # unsorted, some sharing no term
    for q in range(len(QUERIES)):
        assert hits.at(q, rows).tolist() == dense[q, rows].astype(np.float32).tolist()
    assert hits.at(0, np.empty(0, np.int64)).shape == (0,)


def test_blocks_of_rows_score_as_one_block() -> None:
    """A delta's postings come in blocks (some without a single known term); side by side they
    give the bits of one block over all rows."""
    rng = random.Random(2)
    index = SparseIndex.from_texts(texts(rng, 50), PARAMS)
    new = [*texts(rng, 30), "nothing known here", *texts(rng, 9)]
    blocks = [Postings.of(index.weigh(*index.tf_rows(new[a:b]))) for a, b in [(0, 7), (7, 30), (30, 31), (31, 40)]]
    merged = blocks[0].concat(blocks[1]).concat(blocks[2]).concat(blocks[3])
    whole = index.weigh(*index.tf_rows(new)).T.tocsr()  # (terms, 40)
    for parts in ([*blocks], [merged], [merged.take(np.arange(40))]):
        got = found(*SparseHits.of(parts, *index.query_matrix(QUERIES)).top(40))
        assert got == dense_reference(whole, index, QUERIES, 40)
    order = np.array([39, 0, 12, 30, 5])
    taken = found(*SparseHits.of([merged.take(order)], *index.query_matrix(QUERIES)).top(5))
    assert taken == dense_reference(whole[:, order], index, QUERIES, 5)  # rows renumbered in `order`


def document(doc_id: str, rng: random.Random, dim: int = 8) -> tuple[list[StoredChunk], np.ndarray]:
    chunks = [
        StoredChunk(i, f"{doc_id}#{i}", doc_id, rng.choice(["", "granite town"]), t, 0, len(t), {})
        for i, t in enumerate(texts(rng, 3))
    ]
    vectors = np.array([[rng.gauss(0, 1) for _ in range(dim)] for _ in chunks], np.float32).reshape(len(chunks), dim)
    return chunks, vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)


def grown_delta(index: SparseIndex, seed: int) -> tuple[DeltaIndex, dict[str, tuple[list[StoredChunk], np.ndarray]]]:
    """A delta fed batch by batch (upserts, replacements, deletes); and the documents it ends with."""
    rng = random.Random(seed)
    delta = DeltaIndex(8, index)
    held: dict[str, tuple[list[StoredChunk], np.ndarray]] = {}
    for batch in range(12):
        upserts = {
            doc: document(doc, rng) for doc in sorted({f"d{rng.randrange(15)}" for _ in range(rng.randint(0, 4))})
        }
        removed = sorted({f"d{rng.randrange(15)}" for _ in range(rng.randint(0, 2))} - upserts.keys())
        delta.put(upserts, removed, seq=batch + 1)
        held = {**held, **upserts}
        for doc in removed:
            held.pop(doc, None)
    return delta, held


def live_reference(snap: DeltaSnapshot, index: SparseIndex) -> tuple[np.ndarray, sp.csr_matrix]:
    """The snapshot's live rows (ascending) and their postings weighed afresh, (terms, live)."""
    live = np.flatnonzero(snap.died > snap.generation)
    chunks = [snap.chunks[r] for r in live]
    return live, index.weigh(*index.tf_rows([indexed_text(c.title, c.text) for c in chunks])).T.tocsr()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("top_k", [2, 5, 100])
def test_delta_sparse_top_k_equals_a_dense_ranking_of_its_live_rows(seed: int, top_k: int) -> None:
    index = SparseIndex.from_texts(texts(random.Random(100 + seed), 40), PARAMS)
    delta, _ = grown_delta(index, seed)
    snap = delta.snapshot()
    assert snap.rows > snap.live  # replaced and deleted chunks are still there, dead
    live, postings = live_reference(snap, index)
    want = [[(int(live[i]), s) for i, s in q] for q in dense_reference(postings, index, QUERIES, top_k)]
    assert found(*snap.sparse_hits(*index.query_matrix(QUERIES)).top(top_k)) == want


def same_passages(got: list[list[Passage]], want: list[list[Passage]], ids: bool) -> None:
    """Equal scores (cosines to float tolerance: a matrix product's bits depend on its shape) and,
    with `ids`, equal chunks. A delta rebuilt whole laid rows out in document order, one fed
    incrementally in arrival order, so of chunks tied at the top_k cut either may be kept."""
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose([p.score for p in g], [p.score for p in w], rtol=0, atol=1e-6)
        if ids:
            by_id = {p.chunk_id: p.score for p in w}
            assert by_id.keys() == {p.chunk_id for p in g}
            np.testing.assert_allclose([p.score for p in g], [by_id[p.chunk_id] for p in g], rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", list(RetrievalMode))
def test_an_incremental_delta_finds_what_one_built_whole_finds(seed: int, mode: RetrievalMode) -> None:
    index = SparseIndex.from_texts(texts(random.Random(200 + seed), 40), PARAMS)
    delta, held = grown_delta(index, seed)
    whole = DeltaIndex(8, index)  # the final documents in one batch: as the delta was always rebuilt
    whole.put(held, [], seq=1)
    vectors = np.random.default_rng(seed).standard_normal((len(QUERIES), 8)).astype(np.float32)
    for top_k in (1, 4, 1000):
        got = search(delta.snapshot(), index, QUERIES, vectors, top_k, mode, FUSION)
        want = search(whole.snapshot(), index, QUERIES, vectors, top_k, mode, FUSION)
        same_passages(got, want, ids=top_k == 1000)
    assert sorted(c.chunk_id for c in delta.contents().chunks) == sorted(c.chunk_id for c in whole.contents().chunks)
