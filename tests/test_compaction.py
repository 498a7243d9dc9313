"""Refresh = compaction: the serving version + its delta − deletions become a new version whose
content equals a fresh build of the same documents; the delta restarts after it; rollback keeps
every acknowledged change; a size threshold queues a compaction by itself."""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from indexer.build import build_artifact
from indexer.compact import compact_artifact
from indexer.delta import DeltaFeed
from ragserve.types import Document
from reader.generator import Generator
from retriever.artifact import DOCSTORE_FILE, INDEX_FILE, read_manifest
from retriever.delta import DeltaIndex
from retriever.docstore import Docstore
from retriever.encoder import Encoder
from retriever.sparse import SPARSE_FILE, VOCAB_FILE, SparseIndex
from service.application.loading import load_services
from service.http.app import create_app
from service.settings import Settings
from tests.conftest import TINY_CORPUS, local_client, wait_job, wait_ready
from tests.defaults import BUILD, SEARCH, build

LIGHTHOUSE = Document("lighthouse", "Marrow Point", "The Marrow Point lighthouse was automated in 1994.")
NEW_FESTIVAL = Document("festival", "Zorblat festival", "The Zorblat festival moved to the autumn in 2024.")


def contents(artifact: Path) -> dict[str, tuple[str, np.ndarray]]:
    """chunk id -> (text, vector) of a Flat artifact."""
    index = faiss.read_index(str(artifact / INDEX_FILE))
    vectors = index.reconstruct_n(0, index.ntotal)
    chunks = [c for rows in Docstore(artifact / DOCSTORE_FILE).scan(batch=2) for c in rows]
    return {c.chunk_id: (c.text, vectors[c.row]) for c in chunks}


@pytest.mark.parametrize("base_factory", ["Flat", "SQ8"])  # vectors read back / re-embedded
def test_a_compacted_version_equals_a_fresh_build_of_the_same_documents(
    tmp_path: Path, encoder: Encoder, base_factory: str
) -> None:
    base = tmp_path / "base"
    build_artifact(TINY_CORPUS, base, encoder, build(index_factory=base_factory), progress=False)
    delta = DeltaIndex(encoder.dimension, SparseIndex.load(base, SEARCH.bm25))
    DeltaFeed(delta, encoder, BUILD.chunking).apply([LIGHTHOUSE, NEW_FESTIVAL], ["bridge"], seq=7)
    out = tmp_path / "compacted"
    manifest = compact_artifact(base, delta.contents(), out, encoder, build(index_factory="Flat"))
    assert manifest.documents_seq == 7
    assert manifest.counts["documents"] == 4 and manifest.counts["dropped_chunks"] == 2  # bridge, old festival

    current = [d for d in TINY_CORPUS if d.id not in ("bridge", "festival")] + [LIGHTHOUSE, NEW_FESTIVAL]
    fresh = tmp_path / "fresh"
    build_artifact(current, fresh, encoder, build(index_factory="Flat"), progress=False)
    got, want = contents(out), contents(fresh)
    assert got.keys() == want.keys()
    for chunk_id, (text, vector) in want.items():
        assert got[chunk_id][0] == text
        np.testing.assert_allclose(got[chunk_id][1], vector, atol=1e-5)
    assert term_counts(out) == term_counts(fresh)  # the BM25 index is rebuilt with the version


def term_counts(artifact: Path) -> dict[str, dict[str, int]]:
    """{chunk id: {term: count}} of an artifact's BM25 index."""
    words = json.loads((artifact / VOCAB_FILE).read_text())
    with np.load(artifact / SPARSE_FILE) as f:
        tf = sp.csr_matrix((f["counts"], f["indices"], f["indptr"]), shape=(len(f["lengths"]), len(words)))
    chunks = [c for rows in Docstore(artifact / DOCSTORE_FILE).scan() for c in rows]
    return {
        c.chunk_id: {words[int(col)]: int(n) for col, n in zip(tf[c.row].indices, tf[c.row].data, strict=True)}
        for c in chunks
    }


@pytest.fixture()
def settings(tmp_path: Path, tiny_index: Path, cache_home: Path) -> Settings:
    return Settings(home=cache_home, index_path=tiny_index, registry_dir=tmp_path / "registry", keep_versions=10)


def open_client(settings: Settings, encoder: Encoder, generator: Generator) -> TestClient:
    return local_client(create_app(settings, loader=lambda s: load_services(s, encoder=encoder, generator=generator)))


@pytest.fixture()
def client(settings: Settings, encoder: Encoder, generator: Generator) -> Iterator[TestClient]:
    with open_client(settings, encoder, generator) as c:
        wait_ready(c)
        yield c


def run(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    created = client.post(path, json=body)
    assert created.status_code == 202, created.text
    job = wait_job(client, created.json()["job_id"])
    assert job["state"] == "done", job
    return job


def retrieve(client: TestClient, query: str, k: int = 10) -> tuple[str, list[str]]:
    body = client.post("/v1/retrieve", json={"query": query, "top_k": k}).json()
    return body["index_version"], [p["doc_id"] for p in body["passages"]]


def serving_delta_chunks(client: TestClient) -> int:
    services = client.app.state.ragserve.services  # type: ignore[attr-defined]
    chunks: int = services.indexes.delta_chunks
    return chunks


def test_refresh_folds_documents_into_a_new_version_and_rollback_keeps_them(
    client: TestClient, settings: Settings, encoder: Encoder, generator: Generator
) -> None:
    original, _ = retrieve(client, "bridge")
    unchanged = run(client, "/admin/indexes/default/refresh", {})
    assert unchanged["index"]["built"] is False and unchanged["index"]["serving"] == original

    upsert = [{"id": d.id, "title": d.title, "text": d.text} for d in (LIGHTHOUSE, NEW_FESTIVAL)]
    run(client, "/v1/documents", {"upsert": upsert, "delete": ["bridge"]})
    assert serving_delta_chunks(client) == 2
    refreshed = run(client, "/admin/indexes/default/refresh", {})["index"]
    assert refreshed["built"] is True and refreshed["previous"] == original
    new = refreshed["serving"]
    assert serving_delta_chunks(client) == 0  # everything is in the new version now

    version, docs = retrieve(client, "When was the lighthouse automated?")
    assert version == new and docs[0] == "lighthouse" and docs.count("lighthouse") == 1
    assert "bridge" not in docs and docs.count("festival") == 1
    listing = client.get("/admin/indexes").json()["indexes"][0]
    assert listing["serving"] == new
    assert {v["version"]: v["documents"] for v in listing["versions"]}[new] == 4

    # Rolling back changes the version, not the documents: later changes overlay it again.
    assert client.post("/admin/indexes/default/rollback", json={"version": original}).status_code == 200
    version, docs = retrieve(client, "When was the lighthouse automated?")
    assert version == original and docs[0] == "lighthouse" and "bridge" not in docs
    festival = client.post("/v1/retrieve", json={"query": "Zorblat festival", "top_k": 10}).json()["passages"]
    assert [p["text"] for p in festival if p["doc_id"] == "festival"] == [NEW_FESTIVAL.text]
    assert client.post("/admin/indexes/default/rollback", json={"version": new}).status_code == 200

    client.__exit__(None, None, None)  # restart: the compacted version serves, with an empty delta
    with open_client(settings.model_copy(update={"index_path": None}), encoder, generator) as again:
        wait_ready(again)
        assert serving_delta_chunks(again) == 0
        version, docs = retrieve(again, "When was the lighthouse automated?")
        assert version == new and docs[0] == "lighthouse" and "bridge" not in docs


def test_a_big_delta_queues_a_compaction_by_itself(settings: Settings, encoder: Encoder, generator: Generator) -> None:
    with open_client(settings.model_copy(update={"compact_after_chunks": 3}), encoder, generator) as c:
        wait_ready(c)
        original, _ = retrieve(c, "bridge")
        notes = [{"id": f"note-{i}", "text": f"Locker {i} is in corridor {i % 3}."} for i in range(3)]
        run(c, "/v1/documents", {"upsert": notes})
        for _ in range(600):
            version, docs = retrieve(c, "Where is locker 2?", 3)
            if version != original:
                break
            time.sleep(0.05)
        assert version != original and docs[0] == "note-2"
        assert read_manifest(settings.registry_root / "default" / "versions" / version).counts["documents"] == 7
