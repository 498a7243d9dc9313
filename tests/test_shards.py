"""Sharded artifacts: documents partitioned by a stable hash of their id, searched as one space
(dense, BM25 and hybrid equal to the unsharded index for exact index types), compacted shard by
shard, verified like any artifact."""

import random
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.build import build_artifact
from indexer.compact import compact_artifact
from indexer.delta import DeltaFeed
from indexer.reshard import reshard_artifact
from ragserve.errors import ArtifactError, IntegrityError, PartialReplicaError
from ragserve.types import Document, Passage, RetrievalMode
from reader.generator import Generator
from retriever.artifact import read_manifest, verify_artifact
from retriever.delta import DeltaIndex
from retriever.encoder import Encoder
from retriever.shards import shard_of
from retriever.version import VersionRetriever
from service.application.loading import load_services
from service.http.app import create_app
from service.settings import Settings
from tests.conftest import local_client, wait_ready
from tests.defaults import BUILD, SEARCH, build
from tests.test_compaction import run

TOPICS = ["harbour", "glacier", "violin", "orchard", "comet", "bakery", "railway", "falcon", "copper", "lantern"]
WORDS = [
    "ancient",
    "modern",
    "river",
    "stone",
    "market",
    "winter",
    "summer",
    "music",
    "painting",
    "engine",
    "garden",
    "tower",
    "bridge",
    "school",
]


def corpus(n: int, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        sentences = [
            f"The {topic} of {rng.choice(WORDS)} {rng.choice(WORDS)} was known in {1800 + rng.randrange(200)}."
            for _ in range(rng.randrange(2, 9))
        ]
        docs.append(Document(f"doc-{i}", f"{topic.title()} {i}", " ".join(sentences)))
    return docs


QUERIES = [f"when was the {t} of {w} known" for t in TOPICS for w in WORDS[:3]] + ["copper lantern", "violin 1850"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("shards")
    docs = corpus(60)
    built = {}
    for shards in (1, 2, 4):
        built[shards] = root / f"s{shards}"
        build_artifact(docs, built[shards], encoder, build(index_factory="Flat", shards=shards), progress=False)
    return built


def ranked(passages: list[Passage]) -> list[tuple[str, float]]:
    return [(p.chunk_id, p.score) for p in passages]


def assert_same(got: list[Passage], want: list[Passage]) -> None:
    """The same scores in the same order, and the same chunks at each score (chunks that tie may
    come in another order: ties go by row, and rows are numbered shard by shard); at the last score
    the cut between tied chunks may fall elsewhere."""
    np.testing.assert_allclose([p.score for p in got], [p.score for p in want], rtol=0, atol=1e-5)
    last = want[-1].score if want else 0.0
    for score in {round(p.score, 4) for p in want if p.score > last + 1e-5}:
        assert {p.chunk_id for p in got if round(p.score, 4) == score} == {
            p.chunk_id for p in want if round(p.score, 4) == score
        }


@pytest.mark.parametrize("shards", [2, 4])
@pytest.mark.parametrize("mode", list(RetrievalMode))
def test_all_shards_search_like_the_unsharded_index(
    artifacts: dict[int, Path], encoder: Encoder, shards: int, mode: RetrievalMode
) -> None:
    whole = VersionRetriever(artifacts[1], encoder, SEARCH)
    sharded = VersionRetriever(artifacts[shards], encoder, SEARCH)
    assert sharded.size == whole.size and len(sharded.shards) == shards
    for got, want in zip(sharded.search_batch(QUERIES, 8, mode), whole.search_batch(QUERIES, 8, mode), strict=True):
        assert_same(got.passages, want.passages)


def test_one_shard_at_a_time_in_one_thread_searches_the_same(artifacts: dict[int, Path], encoder: Encoder) -> None:
    threaded = VersionRetriever(artifacts[4], encoder, SEARCH)
    serial = VersionRetriever(artifacts[4], encoder, replace(SEARCH, shard_threads=1))
    for mode in RetrievalMode:
        for got, want in zip(
            serial.search_batch(QUERIES, 5, mode), threaded.search_batch(QUERIES, 5, mode), strict=True
        ):
            assert ranked(got.passages) == ranked(want.passages)


def test_a_subset_of_shards_finds_their_documents_alone_with_the_corpus_wide_scores(
    artifacts: dict[int, Path], encoder: Encoder
) -> None:
    everything = VersionRetriever(artifacts[4], encoder, SEARCH)
    subset = VersionRetriever(artifacts[4], encoder, SEARCH, shards=[1, 3])
    assert subset.shard_numbers == (1, 3)
    for mode in (RetrievalMode.DENSE, RetrievalMode.SPARSE):
        for got, full in zip(
            subset.search_batch(QUERIES, 5, mode), everything.search_batch(QUERIES, 60, mode), strict=True
        ):
            assert got.passages and all(shard_of(p.doc_id, 4) in (1, 3) for p in got.passages)
            expected = [p for p in full.passages if shard_of(p.doc_id, 4) in (1, 3)][:5]
            assert_same(got.passages, expected)
    with pytest.raises(ArtifactError, match="4 shard"):
        VersionRetriever(artifacts[4], encoder, SEARCH, shards=[4])


def test_a_document_id_always_hashes_to_the_same_shard() -> None:
    # Pinned: artifacts on disk depend on it, so the hash must never change between releases.
    assert [shard_of(f"doc-{i}", 4) for i in range(8)] == [shard_of(f"doc-{i}", 4) for i in range(8)]
    assert shard_of("doc-0", 4) == int.from_bytes(__import__("hashlib").sha256(b"doc-0").digest()[:8], "big") % 4
    counts = np.bincount([shard_of(f"doc-{i}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 900  # spread evenly


def test_the_manifest_lists_and_checks_every_shard_file(artifacts: dict[int, Path], tmp_path: Path) -> None:
    manifest = read_manifest(artifacts[2])
    assert manifest.format_version == 2 and [s["name"] for s in manifest.shards] == ["shard-000", "shard-001"]
    assert {"shard-000/index.faiss", "shard-001/docstore.sqlite", "corpus_df.npy", "corpus_vocab.json"} <= set(
        manifest.files
    )
    assert manifest.bm25_statistics["chunks"] == manifest.counts["chunks"] == sum(s["chunks"] for s in manifest.shards)
    copy = tmp_path / "copy"
    shutil.copytree(artifacts[2], copy)
    with (copy / "shard-001" / "sparse.npz").open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(IntegrityError, match=r"shard-001/sparse\.npz"):
        verify_artifact(copy)


CHANGED = Document("doc-7", "Falcon 7", "The falcon of copper glass was known in 1911 and painted gold.")
NEW = Document("doc-new", "Comet new", "A brand new comet of winter ice was found in 2020.")


def test_compaction_rewrites_only_the_changed_shards_and_equals_a_fresh_build(
    artifacts: dict[int, Path], encoder: Encoder, tmp_path: Path
) -> None:
    base = artifacts[4]
    delta = DeltaIndex(encoder.dimension, VersionRetriever(base, encoder, SEARCH).sparse)
    DeltaFeed(delta, encoder, BUILD.chunking).apply([CHANGED, NEW], ["doc-3"], seq=5)
    out = tmp_path / "compacted"
    manifest = compact_artifact(base, delta.contents(), out, encoder, BUILD)
    assert manifest.documents_seq == 5 and manifest.shard_count == 4
    before = read_manifest(base).files
    touched = {shard_of(d, 4) for d in ("doc-7", "doc-new", "doc-3")}
    for shard in range(4):
        name = f"shard-{shard:03d}/index.faiss"
        assert (manifest.files[name] == before[name]) == (shard not in touched)

    docs = [d for d in corpus(60) if d.id not in ("doc-3", "doc-7")] + [CHANGED, NEW]
    fresh = tmp_path / "fresh"
    build_artifact(docs, fresh, encoder, build(index_factory="Flat"), progress=False)
    got_r, want_r = VersionRetriever(out, encoder, SEARCH), VersionRetriever(fresh, encoder, SEARCH)
    for mode in RetrievalMode:
        for got, want in zip(got_r.search_batch(QUERIES, 6, mode), want_r.search_batch(QUERIES, 6, mode), strict=True):
            assert_same(got.passages, want.passages)


def test_ivf_shards_share_one_quantizer_and_search_like_the_unsharded_index(encoder: Encoder, tmp_path: Path) -> None:
    docs = corpus(60, seed=3)
    build_artifact(docs, tmp_path / "one", encoder, build(index_factory="IVF4,Flat"), progress=False)
    build_artifact(docs, tmp_path / "three", encoder, build(index_factory="IVF4,Flat", shards=3), progress=False)
    manifest = read_manifest(tmp_path / "three")
    assert "quantizer.faiss" in manifest.files
    assert [s["id_base"] for s in manifest.shards] == [
        0,
        manifest.shards[0]["chunks"],
        manifest.shards[0]["chunks"] + manifest.shards[1]["chunks"],
    ]
    every_list = replace(SEARCH, nprobe=4)  # all lists probed: exact
    whole = VersionRetriever(tmp_path / "one", encoder, every_list)
    sharded = VersionRetriever(tmp_path / "three", encoder, every_list)
    for mode in RetrievalMode:
        for got, want in zip(sharded.search_batch(QUERIES, 5, mode), whole.search_batch(QUERIES, 5, mode), strict=True):
            assert_same(got.passages, want.passages)


# --- a sharded version served: ingestion, refresh shard by shard, a replica serving some shards ----


def open_client(settings: Settings, encoder: Encoder, generator: Generator) -> TestClient:
    return local_client(create_app(settings, loader=lambda s: load_services(s, encoder=encoder, generator=generator)))


def retrieve(client: TestClient, query: str, k: int = 5) -> tuple[str, list[str]]:
    body = client.post("/v1/retrieve", json={"query": query, "top_k": k, "retrieval": "dense"}).json()
    return body["index_version"], [p["doc_id"] for p in body["passages"]]


def base_of(client: TestClient) -> VersionRetriever:
    services = client.app.state.ragserve.services  # type: ignore[attr-defined]
    base: VersionRetriever = services.indexes.retriever._current.base
    return base


def test_a_sharded_version_serves_takes_changes_and_refreshes_shard_by_shard(
    artifacts: dict[int, Path], encoder: Encoder, generator: Generator, cache_home: Path, tmp_path: Path
) -> None:
    settings = Settings(home=cache_home, index_path=artifacts[4], registry_dir=tmp_path / "registry", keep_versions=10)
    with open_client(settings, encoder, generator) as client:
        wait_ready(client)
        original, _ = retrieve(client, "falcon")
        before = base_of(client)
        run(client, "/v1/documents", {"upsert": [{"id": NEW.id, "title": NEW.title, "text": NEW.text}]})
        _, docs = retrieve(client, "brand new comet of winter ice")
        assert docs[0] == NEW.id  # from the delta
        refreshed = run(client, "/admin/indexes/default/refresh", {})["index"]
        assert refreshed["built"] is True
        version, docs = retrieve(client, "brand new comet of winter ice")
        assert version == refreshed["serving"] != original and docs[0] == NEW.id
        after = base_of(client)
        changed = shard_of(NEW.id, 4)
        for old, new in zip(before.shards, after.shards, strict=True):  # unchanged shards were not read again
            assert (old.index is new.index) == (new.number != changed)


def test_a_replica_serving_some_shards_holds_their_changes_alone_and_takes_no_refresh(
    artifacts: dict[int, Path], encoder: Encoder, generator: Generator, cache_home: Path, tmp_path: Path
) -> None:
    mine = [shard_of(NEW.id, 4)]
    other = next(f"other-{i}" for i in range(100) if shard_of(f"other-{i}", 4) not in mine)
    settings = Settings(home=cache_home, index_path=artifacts[4], registry_dir=tmp_path / "registry", serve_shards=mine)
    with open_client(settings, encoder, generator) as client:
        wait_ready(client)
        _, docs = retrieve(client, "falcon", 10)
        assert docs and all(shard_of(d, 4) in mine for d in docs)
        upsert = [{"id": NEW.id, "title": NEW.title, "text": NEW.text}, {"id": other, "text": NEW.text}]
        run(client, "/v1/documents", {"upsert": upsert})
        _, docs = retrieve(client, "brand new comet of winter ice", 10)
        assert NEW.id in docs and other not in docs
        refused = client.post("/admin/indexes/default/refresh", json={})
        assert refused.status_code == 202  # queued for a replica that serves every shard
        assert set(client.get("/readyz").json()["workers"]) == {"documents"}
        listing = client.get("/admin/indexes").json()["indexes"][0]
        assert listing["served_shards"] == mine and listing["versions"][0]["shards"] == 4
        with pytest.raises(PartialReplicaError, match="serves shards"):
            client.app.state.ragserve.services.indexes.refresh("default")  # type: ignore[attr-defined]


def test_resharding_carries_vectors_over_and_searches_like_a_sharded_build(
    artifacts: dict[int, Path], encoder: Encoder, tmp_path: Path
) -> None:
    four = reshard_artifact(artifacts[1], tmp_path / "four", 4, encoder)
    one = reshard_artifact(tmp_path / "four", tmp_path / "one", 1, encoder)
    assert four.shard_count == 4 and not one.shards
    assert [s["chunks"] for s in four.shards] == [s["chunks"] for s in read_manifest(artifacts[4]).shards]
    built = VersionRetriever(artifacts[4], encoder, SEARCH)
    for path in (tmp_path / "four", tmp_path / "one"):
        again = VersionRetriever(path, encoder, SEARCH)
        for mode in RetrievalMode:
            for got, want in zip(
                again.search_batch(QUERIES, 6, mode), built.search_batch(QUERIES, 6, mode), strict=True
            ):
                assert_same(got.passages, want.passages)
