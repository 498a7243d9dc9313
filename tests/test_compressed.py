"""Compressed (PQ) indexes end to end, on small real FAISS artifacts of clustered unit vectors: the
exact vectors kept beside them and checksummed, dense search re-ranked exactly, hybrid scores
taken from them, compaction and resharding carrying them, and `index merge` of IVF shards into
one on-disk index that searches like the shards and verifies."""

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from indexer.compact import compact_artifact
from indexer.merge import IVFDATA_FILE, merge_artifact
from indexer.reshard import reshard_artifact
from ragserve.atomic import staged_directory
from ragserve.errors import ArtifactError, IntegrityError, InvalidInputError
from ragserve.types import Passage, RetrievalMode
from retriever import faiss_index
from retriever.artifact import Manifest, read_manifest, verify_artifact
from retriever.delta import DeltaContents
from retriever.docstore import Docstore, StoredChunk
from retriever.exact import EXACT_FILE, ExactVectors
from retriever.version import VersionRetriever
from retriever.writer import EMBEDDINGS_FILE, ArtifactWriter, Layout, ModelInfo, ShardedArtifactWriter
from service.cli import main
from tests.defaults import BUILD, SEARCH, build
from tests.test_faiss_scale import unit

DIM, N, NLIST = 32, 2_000, 8
PQ = f"IVF{NLIST},PQ8x4"  # 4-bit codes: coarse scores that re-ranking visibly corrects
IVF = f"IVF{NLIST},Flat"
CHUNKING = BUILD.chunking.manifest()


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """(N, DIM) clustered unit vectors and (40, DIM) queries near some of them."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, DIM))
    x = unit(centres[rng.integers(0, 20, N)] + 0.5 * rng.standard_normal((N, DIM)))
    q = unit(x[rng.integers(0, N, 40)] + 0.2 * rng.standard_normal((40, DIM)))
    return x, q


@dataclass
class FakeEncoder:
    """What builds and compactions ask of the retriever; re-embedding a chunk gives back its
    vector (its text names its row), and is counted, so a test sees when it happened."""

    vectors: np.ndarray
    name: str = "fake"
    weights_sha256: str = "f" * 64
    precision: str = "fp32"
    embedded: int = 0

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def tokenize(self, texts: Sequence[str]) -> list[Any]:
        return [type("Tokens", (), {"ids": [int(t.split("#")[1])]})() for t in texts]

    def encode_ids(self, ids: Sequence[list[int]], batch: int | None = None) -> np.ndarray:
        self.embedded += len(ids)
        return self.vectors[[i[0] for i in ids]]


def chunk(i: int) -> StoredChunk:
    return StoredChunk(i, f"c-{i}", f"doc-{i}", f"Topic {i % 20}", f"topic word{i % 7} #{i}", 0, 10, {})


def write(path: Path, x: np.ndarray, factory: str, shards: int = 1, keep: bool = True) -> Manifest:
    """An artifact of one chunk per document, chunk i having vector x[i]."""
    model = ModelInfo("fake", "f" * 64, DIM, "fp32")
    layout = Layout(factory, 1, keep)
    with staged_directory(path) as staging:
        writer = (
            ArtifactWriter(staging, model, CHUNKING, layout)
            if shards == 1
            else ShardedArtifactWriter(staging, model, CHUNKING, layout, shards)
        )
        writer.add([chunk(i) for i in range(x.shape[0])], x)
        return writer.seal({"documents": x.shape[0]}, time.perf_counter())


def searcher(path: Path, x: np.ndarray, **config: Any) -> VersionRetriever:
    return VersionRetriever(path, FakeEncoder(x), replace(SEARCH, **{"nprobe": NLIST, **config}))  # type: ignore[arg-type]


def dense(
    retriever: VersionRetriever, q: np.ndarray, k: int = 10, mode: RetrievalMode = RetrievalMode.DENSE
) -> list[list[Passage]]:
    texts = [f"topic word{i % 7}" for i in range(q.shape[0])]
    return [r.passages for r in retriever.search_embedded(texts, q, k, mode, 0.0)]


def ids(found: list[list[Passage]]) -> np.ndarray:
    return np.array([[int(p.chunk_id[2:]) for p in passages] for passages in found])  # (Q, k) chunk numbers


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found.tolist(), truth.tolist(), strict=True)])
    )


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, data: tuple[np.ndarray, np.ndarray]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compressed")
    x, _ = data
    made = {
        "pq": (PQ, 1, True),
        "pq-approx": (PQ, 1, False),
        "pq-3": (PQ, 3, True),
        "ivf-3": (IVF, 3, True),
        "flat": ("Flat", 1, True),
        "flat-3": ("Flat", 3, True),
    }
    for name, (factory, shards, keep) in made.items():
        write(root / name, x, factory, shards, keep)
    return {name: root / name for name in made}


def test_a_pq_artifact_keeps_its_exact_vectors_checksummed(
    artifacts: dict[str, Path], data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, _ = data
    manifest = verify_artifact(artifacts["pq"])
    assert EXACT_FILE in manifest.files and not list(artifacts["pq"].rglob(EMBEDDINGS_FILE))
    assert (artifacts["pq"] / EXACT_FILE).read_bytes() == x.tobytes()  # the spool, renamed: row i = FAISS id i
    sharded = read_manifest(artifacts["pq-3"])
    for shard in sharded.shards:
        folder = artifacts["pq-3"] / shard["name"]
        rows = [int(c.chunk_id[2:]) for b in Docstore(folder / "docstore.sqlite").scan() for c in b]
        assert f"{shard['name']}/{EXACT_FILE}" in sharded.files
        np.testing.assert_array_equal(ExactVectors.open(folder / EXACT_FILE, DIM).vectors, x[rows])
    copy = tmp_path / "copy"
    shutil.copytree(artifacts["pq"], copy)
    with (copy / EXACT_FILE).open("r+b") as fh:
        fh.write(b"\0\0\0\0")
    with pytest.raises(IntegrityError, match=EXACT_FILE):
        verify_artifact(copy)


def test_an_exact_index_or_unkept_vectors_write_no_vectors_file(artifacts: dict[str, Path]) -> None:
    for name in ("flat", "flat-3", "ivf-3", "pq-approx"):  # not compressed, or keep_vectors off
        assert not [f for f in read_manifest(artifacts[name]).files if f.endswith(EXACT_FILE)], name
        assert not list(artifacts[name].rglob(EXACT_FILE)) and not list(artifacts[name].rglob(EMBEDDINGS_FILE))


def test_reranked_dense_search_beats_pq_scores_and_is_exact_when_every_row_is_a_candidate(
    artifacts: dict[str, Path], data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, q = data
    truth = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]  # (Q, 10)
    approx = ids(dense(searcher(artifacts["pq-approx"], x), q))
    kept = searcher(artifacts["pq"], x, rerank_candidates=100)
    assert faiss_index.reconstruct(kept.index, np.array([0])) is None  # loaded without a direct map
    assert recall(ids(dense(kept, q)), truth) > recall(approx, truth) + 0.1
    for path in (artifacts["pq"], artifacts["pq-3"]):
        everything = dense(searcher(path, x, rerank_candidates=N), q)
        np.testing.assert_array_equal(ids(everything), truth)
        want = np.take_along_axis(q @ x.T, truth, axis=1)  # (Q, 10) exact scores
        np.testing.assert_allclose([[p.score for p in row] for row in everything], want, rtol=0, atol=1e-5)


def test_hybrid_scores_candidates_with_the_exact_vectors(
    artifacts: dict[str, Path], data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, q = data
    rows = np.arange(0, N, 37)
    for path in (artifacts["pq"], artifacts["pq-3"]):
        space = searcher(path, x)
        records = space.records(rows.tolist())
        order = [int(records[int(r)].chunk_id[2:]) for r in rows]  # the chunk each row of the space holds
        np.testing.assert_allclose(space.dense_scores(q[0], rows), x[order] @ q[0], rtol=0, atol=1e-6)
        assert all(found for found in dense(space, q, 5, RetrievalMode.HYBRID))
    approx = searcher(artifacts["pq-approx"], x)  # the PQ reconstruction: scores off by the code error
    assert np.abs(approx.dense_scores(q[0], rows) - x[rows] @ q[0]).max() > 1e-3


def delta_of(x: np.ndarray, hidden: set[str], seq: int = 3) -> DeltaContents:
    new = StoredChunk(0, "c-new", "doc-new", "New", "brand new #0", 0, 9, {})
    return DeltaContents([new], unit(x[:1] + 1.0), frozenset(hidden), 1, seq)


def test_compaction_of_a_pq_artifact_carries_its_exact_vectors(
    artifacts: dict[str, Path], data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, _ = data
    encoder = FakeEncoder(x)
    delta = delta_of(x, {"doc-5"})
    config = build(index_factory=PQ, keep_vectors=True)
    manifest = compact_artifact(artifacts["pq"], delta, tmp_path / "one", encoder, config)  # type: ignore[arg-type]
    assert encoder.embedded == 0 and manifest.documents_seq == 3 and EXACT_FILE in manifest.files
    want = np.concatenate([np.delete(x, 5, axis=0), delta.vectors])
    np.testing.assert_array_equal(ExactVectors.open(tmp_path / "one" / EXACT_FILE, DIM).vectors, want)
    sharded = compact_artifact(artifacts["pq-3"], delta, tmp_path / "three", encoder, config)  # type: ignore[arg-type]
    assert encoder.embedded == 0 and all(f"{s['name']}/{EXACT_FILE}" in sharded.files for s in sharded.shards)
    verify_artifact(tmp_path / "three")


def test_compaction_without_exact_vectors_embeds_again_never_reconstructs_pq_codes(
    artifacts: dict[str, Path], data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, _ = data
    encoder = FakeEncoder(x)
    compact_artifact(artifacts["pq-approx"], delta_of(x, set()), tmp_path / "c", encoder, build(index_factory="Flat"))  # type: ignore[arg-type]
    assert encoder.embedded == N  # the carried rows were embedded again: exact, as built
    got = faiss_index.read_cpu(tmp_path / "c" / "index.faiss").reconstruct_n(0, N)
    np.testing.assert_array_equal(got, x)


def test_resharding_a_pq_artifact_keeps_exact_vectors(
    artifacts: dict[str, Path], data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, q = data
    encoder = FakeEncoder(x)
    two = reshard_artifact(artifacts["pq"], tmp_path / "two", 2, encoder)  # type: ignore[arg-type]
    assert encoder.embedded == 0 and all(f"{s['name']}/{EXACT_FILE}" in two.files for s in two.shards)
    every = dense(searcher(tmp_path / "two", x, rerank_candidates=N), q)
    np.testing.assert_array_equal(ids(every), np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10])


def same_results(got: list[list[Passage]], want: list[list[Passage]]) -> None:
    assert [[p.chunk_id for p in row] for row in got] == [[p.chunk_id for p in row] for row in want]
    np.testing.assert_allclose([[p.score for p in r] for r in got], [[p.score for p in r] for r in want], atol=1e-5)


@pytest.mark.parametrize("nprobe", [2, NLIST])
def test_merging_three_ivf_shards_searches_like_them_and_verifies(
    artifacts: dict[str, Path],
    data: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    nprobe: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    x, q = data
    out = tmp_path / "merged"
    assert main(["index", "merge", str(artifacts["ivf-3"]), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["chunks"] == N  # FAISS's progress lines kept off the report
    assert main(["index", "verify", str(out)]) == 0
    manifest = read_manifest(out)
    assert not manifest.shards and {IVFDATA_FILE, "index.faiss", "docstore.sqlite"} <= set(manifest.files)
    merged = searcher(out, x, nprobe=nprobe)
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(merged.index).invlists)
    assert isinstance(invlists, faiss.OnDiskInvertedLists)
    sharded = searcher(artifacts["ivf-3"], x, nprobe=nprobe)
    for mode in (RetrievalMode.DENSE, RetrievalMode.HYBRID, RetrievalMode.SPARSE):
        same_results(dense(merged, q, 10, mode), dense(sharded, q, 10, mode))


def test_merging_pq_shards_after_a_compaction_keeps_ids_and_exact_vectors_in_line(
    artifacts: dict[str, Path], data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, q = data
    compacted = tmp_path / "compacted"
    config = build(index_factory=PQ, keep_vectors=True)
    compact_artifact(artifacts["pq-3"], delta_of(x, {"doc-5"}), compacted, FakeEncoder(x), config)  # type: ignore[arg-type]
    bases = [s["id_base"] for s in read_manifest(compacted).shards]
    assert bases != sorted(bases)  # the changed shard's ids now come after the others: merging rebases them
    merged = merge_artifact(compacted, tmp_path / "merged")
    assert EXACT_FILE in merged.files and merged.documents_seq == 3
    verify_artifact(tmp_path / "merged")
    got = searcher(tmp_path / "merged", x, rerank_candidates=N)
    want = searcher(compacted, x, rerank_candidates=N)
    same_results(dense(got, q), dense(want, q))
    chunks = got.records(list(range(got.size)))
    exact = ExactVectors.open(tmp_path / "merged" / EXACT_FILE, DIM)
    rows = [r for r in range(got.size) if chunks[r].chunk_id != "c-new"]
    np.testing.assert_array_equal(exact.vectors[rows], x[[int(chunks[r].chunk_id[2:]) for r in rows]])


def test_merge_refuses_what_it_cannot_merge(artifacts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="is not sharded"):
        merge_artifact(artifacts["pq"], tmp_path / "a")
    with pytest.raises(InvalidInputError, match="'Flat', not IVF lists over one shared quantizer"):
        merge_artifact(artifacts["flat-3"], tmp_path / "b")
    (tmp_path / "c").mkdir()
    with pytest.raises(ArtifactError, match="already exists"):
        merge_artifact(artifacts["ivf-3"], tmp_path / "c")
    assert main(["index", "merge", str(artifacts["flat-3"]), "--out", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "d").exists()
