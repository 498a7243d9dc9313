"""Indexes bigger than one machine, on real (small) FAISS indexes: factory validation, PQ with exact
re-ranking, a coarse quantizer shared by shards whose lists are merged on disk, exact vectors."""

import itertools
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from ragserve.errors import ArtifactError, InvalidInputError
from retriever import faiss_index
from retriever.exact import EXACT_FILE, ExactVectors

DIM = 32
PQ = "IVF16,PQ8x4"  # 4-bit codes train in well under a second, and leave room for re-ranking to help


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    """(4000, DIM) clustered unit vectors and (50, DIM) queries near some of them."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, DIM))
    x = unit(centres[rng.integers(0, 40, 4000)] + 0.5 * rng.standard_normal((4000, DIM)))
    q = unit(x[rng.integers(0, 4000, 50)] + 0.2 * rng.standard_normal((50, DIM)))
    return x, q


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]  # (Q, k)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(a.tolist()) & set(b.tolist())) / truth.shape[1] for a, b in zip(found, truth, strict=True)])
    )


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("garbage", "could not parse"),
        ("IVF64,PQ33", "PQ m must divide the dimension 384"),
        ("OPQ33,IVF64,PQ33", "PQ m must divide"),
        ("IDMap,Flat", "ragserve assigns the ids"),
    ],
)
def test_a_factory_faiss_cannot_make_is_an_input_error(factory: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        faiss_index.validate_factory(factory, 384)
    with pytest.raises(InvalidInputError, match=message):  # and at build time
        faiss_index.build(np.zeros((10, 384), np.float32), factory)


def test_more_ivf_lists_than_the_corpus_can_fill_is_an_input_error(corpus: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = corpus
    with pytest.raises(InvalidInputError, match=r"needs at least 1024 vectors.*has 500.*IVF12"):
        faiss_index.build(x[:500], "IVF1024,Flat")
    with pytest.raises(InvalidInputError, match="needs at least 256 vectors"):  # 8-bit PQ: 256 code words
        faiss_index.train(x[:100], "IVF4,PQ8")


def test_supported_factories_build_with_inner_product(corpus: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = corpus
    for factory in ("Flat", "HNSW32", PQ, "OPQ8,IVF16,PQ8x4", "IVF16,PQ16x4fs"):
        index = faiss_index.build(x, factory)
        assert index.ntotal == x.shape[0] and index.metric_type == faiss.METRIC_INNER_PRODUCT
        assert faiss_index.is_compressed(index) == (factory not in ("Flat", "HNSW32"))
        scores, _ = index.search(q, 5)
        assert scores[0, 0] > 0.5  # the queries are near corpus points


def test_exact_reranking_beats_pq_scores(corpus: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    x, q = corpus
    truth = exact_top(x, q, 10)
    index = faiss_index.build(x, PQ)
    faiss.extract_index_ivf(index).nprobe = 16
    _, approx = index.search(q, 10)
    _, candidates = index.search(q, 200)  # (Q, 200): 20x k, as 4-bit codes are coarse
    x.tofile(tmp_path / EXACT_FILE)
    _, reranked = ExactVectors.open(tmp_path / EXACT_FILE, DIM).rerank(q, candidates, 10)
    assert recall(reranked, truth) > recall(approx, truth) + 0.2
    assert recall(reranked, truth) >= 0.9


def test_exact_vectors_rerank_and_score_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((300, DIM)))
    q = unit(rng.standard_normal((3, DIM)))
    x.tofile(tmp_path / EXACT_FILE)
    exact = ExactVectors.open(tmp_path / EXACT_FILE, DIM)
    candidates = np.array([[5, 17, 250, -1], [0, 1, 2, 3], [-1, -1, -1, -1]], np.int64)  # (3, 4); -1: none
    scores, rows = exact.rerank(q, candidates, 6)
    assert scores.shape == rows.shape == (3, 6) and scores.dtype == np.float32 and rows.dtype == np.int64
    for i in range(2):
        truth = sorted(((float(q[i] @ x[r]), r) for r in candidates[i] if r >= 0), reverse=True)
        assert rows[i, : len(truth)].tolist() == [r for _, r in truth]
        np.testing.assert_allclose(scores[i, : len(truth)], [s for s, _ in truth], rtol=1e-5)
    assert rows[0, 3:].tolist() == [-1] * 3 and rows[2].tolist() == [-1] * 6  # padded where fewer
    assert np.isneginf(scores[2]).all() and np.isneginf(scores[0, 3:]).all()
    np.testing.assert_allclose(exact.scores(q[0], np.array([9, 3])), x[[9, 3]] @ q[0], rtol=1e-6)
    np.testing.assert_array_equal(exact.block(10, 5), x[10:15])
    (tmp_path / "torn.f32").write_bytes(x.tobytes()[:-4])
    with pytest.raises(ArtifactError, match="not a whole number"):
        ExactVectors.open(tmp_path / "torn.f32", DIM)


def test_shards_over_one_quantizer_merge_on_disk_into_the_union(
    corpus: tuple[np.ndarray, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, q = corpus
    trained = faiss_index.train(faiss_index.training_sample(x, 2_000), PQ)
    assert trained is not None and trained.ntotal == 0
    built = tmp_path / "built"
    built.mkdir()
    bounds = [0, 1_000, 2_600, 4_000]
    shard_files = []
    for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
        shard = faiss_index.build(x[start:stop], PQ, trained=trained, id_base=start)
        shard_files.append(built / f"shard-{i}.faiss")
        faiss_index.write(shard, shard_files[-1])
    faiss_index.merge_ondisk(trained, shard_files, built / "index.faiss", built / "index.ivfdata")
    union = faiss_index.build(x, PQ, trained=trained)  # every vector, in memory, ids 0..n-1

    moved = tmp_path / "elsewhere" / "artifact"
    moved.parent.mkdir()
    shutil.move(built, moved)  # the lists' recorded path no longer exists
    monkeypatch.chdir(tmp_path / "elsewhere")
    merged = faiss_index.load(Path("artifact") / "index.faiss", ef_search=16, nprobe=4)
    assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(merged).invlists), faiss.OnDiskInvertedLists)
    faiss.extract_index_ivf(union).nprobe = 4
    got_scores, got_ids = merged.search(q, 10)
    want_scores, want_ids = union.search(q, 10)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)
    assert faiss_index.reconstruct(merged, np.array([3_999])) is not None


def test_a_shard_with_an_id_base_reconstructs_by_its_ids(corpus: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    x, _ = corpus
    trained = faiss_index.train(x, "IVF16,Flat")
    faiss_index.write(faiss_index.build(x[:500], "IVF16,Flat", trained=trained, id_base=7_000), tmp_path / "s.faiss")
    shard = faiss_index.load(tmp_path / "s.faiss", ef_search=16, nprobe=4)
    got = faiss_index.reconstruct(shard, np.array([7_000, 7_499]))
    assert got is not None
    np.testing.assert_array_equal(got, x[[0, 499]])
    with pytest.raises(AssertionError, match="only IVF"):
        faiss_index.build(x[:10], "Flat", id_base=10)


def test_merging_shards_of_another_quantizer_is_refused(corpus: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    x, _ = corpus
    ours = faiss_index.train(x[:2_000], "IVF16,Flat")
    theirs = faiss_index.train(x[2_000:], "IVF16,Flat")
    assert ours is not None and theirs is not None
    faiss_index.write(faiss_index.build(x[:100], "IVF16,Flat", trained=theirs), tmp_path / "s.faiss")
    with pytest.raises(ArtifactError, match="not filled from this trained index"):
        faiss_index.merge_ondisk(ours, [tmp_path / "s.faiss"], tmp_path / "m.faiss", tmp_path / "m.ivfdata")
