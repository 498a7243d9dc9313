import json
import shutil
from pathlib import Path

import pytest

from indexer.build import build_artifact
from ragserve.errors import ArtifactError, IntegrityError, InvalidInputError, ModelMismatchError
from ragserve.types import Document
from retriever.artifact import DOCSTORE_FILE, INDEX_FILE, MANIFEST, verify_artifact
from retriever.encoder import Encoder
from retriever.sparse import SPARSE_FILE, VOCAB_FILE
from retriever.version import VersionRetriever
from tests.defaults import BUILD, SEARCH, build


def test_manifest_describes_the_build(tiny_index: Path, encoder: Encoder) -> None:
    manifest = verify_artifact(tiny_index)
    assert sorted(p.name for p in tiny_index.iterdir()) == sorted(
        [INDEX_FILE, DOCSTORE_FILE, SPARSE_FILE, VOCAB_FILE, MANIFEST]
    )
    assert manifest.retriever_weights_sha256 == encoder.weights_sha256
    assert manifest.embedding_precision == encoder.precision == "fp32"
    assert manifest.dimension == 384 and manifest.metric == "inner_product"
    assert manifest.index_factory == "Flat"
    assert manifest.counts["documents"] == 5 and manifest.counts["empty_documents"] == 1
    assert manifest.counts["chunks"] == 4
    assert set(manifest.files) == {INDEX_FILE, DOCSTORE_FILE, SPARSE_FILE, VOCAB_FILE}
    assert all(len(f["sha256"]) == 64 for f in manifest.files.values())


def test_round_trip_search_finds_each_document(tiny_index: Path, encoder: Encoder) -> None:
    retriever = VersionRetriever(tiny_index, encoder, SEARCH)
    result = retriever.search("Who built the Harrow bridge?", top_k=3)
    assert result.passages[0].doc_id == "bridge"
    assert result.passages[0].chunk_id == "bridge#0"
    assert "Tomas Brell" in result.passages[0].text
    scores = [p.score for p in result.passages]
    assert scores == sorted(scores, reverse=True)
    assert result.index_version == verify_artifact(tiny_index).version


def test_top_k_larger_than_the_index_returns_what_there_is(tiny_index: Path, encoder: Encoder) -> None:
    assert len(VersionRetriever(tiny_index, encoder, SEARCH).search("cheese", top_k=50).passages) == 4


@pytest.mark.parametrize("victim", [INDEX_FILE, DOCSTORE_FILE])
def test_a_tampered_file_is_refused(tmp_path: Path, tiny_index: Path, encoder: Encoder, victim: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_index, copy)
    with (copy / victim).open("r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IntegrityError, match=victim):
        VersionRetriever(copy, encoder, SEARCH)


def test_missing_file_and_missing_manifest_are_refused(tmp_path: Path, tiny_index: Path, encoder: Encoder) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_index, copy)
    (copy / INDEX_FILE).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        VersionRetriever(copy, encoder, SEARCH)
    (copy / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="not an index artifact"):
        VersionRetriever(copy, encoder, SEARCH)


def test_an_index_of_another_retriever_model_is_refused(tmp_path: Path, tiny_index: Path, encoder: Encoder) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_index, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["retriever_model"] = "some-other-model"
    manifest["retriever_weights_sha256"] = "0" * 64
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelMismatchError, match="some-other-model"):
        VersionRetriever(copy, encoder, SEARCH)


def test_artifacts_are_immutable_and_failed_builds_leave_nothing(
    tmp_path: Path, tiny_index: Path, encoder: Encoder
) -> None:
    with pytest.raises(ArtifactError, match="already exists"):
        build_artifact([Document("a", "", "text")], tiny_index, encoder, BUILD, progress=False)
    out = tmp_path / "empty"
    with pytest.raises(InvalidInputError, match="no text"):
        build_artifact([Document("a", "", "  ")], out, encoder, BUILD, progress=False)
    assert list(tmp_path.iterdir()) == []  # no half-written artifact, no staging directory


def test_large_corpora_get_an_approximate_index(tmp_path: Path, encoder: Encoder) -> None:

    docs = [Document(str(i), "", f"note number {i} about topic {i % 7}") for i in range(40)]
    manifest = build_artifact(docs, tmp_path / "hnsw", encoder, build(exact_below=10), progress=False)
    assert manifest.index_factory == "HNSW32"
    hit = VersionRetriever(tmp_path / "hnsw", encoder, SEARCH).search("note number 17 about topic 3", 1).passages[0]
    assert hit.doc_id == "17"


def test_a_crashed_build_leaves_only_a_staging_dir_that_the_next_build_removes(
    tmp_path: Path, encoder: Encoder
) -> None:
    def crashing_corpus():
        yield Document("a", "", "some text")
        raise KeyboardInterrupt  # like a kill in the middle of reading

    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_artifact(crashing_corpus(), out, encoder, BUILD, progress=False)
    assert list(tmp_path.iterdir()) == []
    leftover = tmp_path / ".staging-idx-deadbeef"  # what a SIGKILL would leave
    leftover.mkdir()
    other = tmp_path / ".staging-other-deadbeef"  # another artifact's build in progress
    other.mkdir()
    build_artifact([Document("a", "", "some text")], out, encoder, BUILD, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging-other-deadbeef", "idx"]
