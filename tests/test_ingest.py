"""Ingestion through the API: jobs, freshness via the delta index, idempotency, deletes, restarts."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ragserve.types import Document
from reader.generator import Generator
from retriever.encoder import Encoder
from retriever.registry import IndexRegistry
from service.application.jobqueue import DOCUMENTS_JOB, documents_payload
from service.application.loading import load_services
from service.application.store import open_store
from service.http.app import create_app
from service.http.auth import new_token
from service.settings import Settings
from tests.conftest import local_client, wait_job, wait_ready

LIGHTHOUSE = {"id": "lighthouse", "title": "Marrow Point", "text": "The Marrow Point lighthouse was automated in 1994."}


def ingest(client: TestClient, body: dict[str, object]) -> dict[str, Any]:
    response = client.post("/v1/documents", json=body)
    assert response.status_code == 202, response.text
    return wait_job(client, response.json()["job_id"])


def top_docs(client: TestClient, query: str, k: int = 5) -> list[str]:
    return [p["doc_id"] for p in client.post("/v1/retrieve", json={"query": query, "top_k": k}).json()["passages"]]


def make_app(settings: Settings, encoder: Encoder, generator: Generator) -> TestClient:
    return local_client(create_app(settings, loader=lambda s: load_services(s, encoder=encoder, generator=generator)))


@pytest.fixture()
def ingest_settings(tmp_path: Path, tiny_index: Path, cache_home: Path, store_url: str | None) -> Settings:
    """On both stores: SQLite in the registry, and PostgreSQL."""
    return Settings(home=cache_home, index_path=tiny_index, registry_dir=tmp_path / "registry", database_url=store_url)


@pytest.fixture()
def client(ingest_settings: Settings, encoder: Encoder, generator: Generator) -> Iterator[TestClient]:
    with make_app(ingest_settings, encoder, generator) as c:
        wait_ready(c)
        yield c


def test_an_acknowledged_document_is_searchable_and_answerable(client: TestClient) -> None:
    assert "lighthouse" not in top_docs(client, "When was the lighthouse automated?")
    job = ingest(client, {"upsert": [LIGHTHOUSE]})
    assert job["state"] == "done" and job["counts"]["upserted"] == 1 and job["errors"] == {}
    assert top_docs(client, "When was the lighthouse automated?")[0] == "lighthouse"
    answer = client.post("/v1/ask", json={"question": "When was the Marrow Point lighthouse automated?"}).json()
    assert answer["citations"][0]["doc_id"] == "lighthouse" and "1994" in answer["answer"]


def test_resending_the_same_batch_changes_nothing(client: TestClient) -> None:
    ingest(client, {"upsert": [LIGHTHOUSE]})
    again = ingest(client, {"upsert": [LIGHTHOUSE]})
    assert again["counts"] == {"upserted": 0, "unchanged": 1, "deleted": 0, "not_found": 0}
    assert top_docs(client, "lighthouse automated", 5).count("lighthouse") == 1


def test_an_upsert_replaces_every_chunk_of_the_old_document(client: TestClient) -> None:
    ingest(client, {"upsert": [LIGHTHOUSE]})
    ingest(client, {"upsert": [{**LIGHTHOUSE, "text": "The Marrow Point lighthouse is painted red and white."}]})
    passages = client.post("/v1/retrieve", json={"query": "Marrow Point lighthouse", "top_k": 10}).json()["passages"]
    texts = [p["text"] for p in passages if p["doc_id"] == "lighthouse"]
    assert texts == ["The Marrow Point lighthouse is painted red and white."]
    # a document of the serving version is replaced too: its old chunks disappear
    ingest(
        client, {"upsert": [{"id": "bridge", "title": "Harrow bridge", "text": "The Harrow bridge was demolished."}]}
    )
    bridge = [p for p in client.post("/v1/retrieve", json={"query": "Harrow bridge", "top_k": 10}).json()["passages"]]
    assert [p["text"] for p in bridge if p["doc_id"] == "bridge"] == ["The Harrow bridge was demolished."]


def test_deleted_documents_are_never_returned(client: TestClient) -> None:
    ingest(client, {"upsert": [LIGHTHOUSE]})
    job = ingest(client, {"delete": ["lighthouse", "bridge", "never-existed"]})
    assert job["counts"]["deleted"] == 3  # a tombstone hides ids of the serving version as well
    for query in ["lighthouse automated", "Who built the Harrow bridge?"]:
        docs = top_docs(client, query, 10)
        assert "lighthouse" not in docs and "bridge" not in docs
    assert ingest(client, {"delete": ["bridge"]})["counts"]["not_found"] == 1


def test_documents_jobs_and_deletes_survive_a_restart(
    ingest_settings: Settings, encoder: Encoder, generator: Generator
) -> None:
    with make_app(ingest_settings, encoder, generator) as c:
        wait_ready(c)
        ingest(c, {"upsert": [LIGHTHOUSE], "delete": ["bridge"]})
    # a job acknowledged (queued) while the service is down is processed after the restart
    store = open_store(ingest_settings, IndexRegistry(ingest_settings.registry_root, "default"), "cli")
    harbour = Document("harbour", "Ost Lenning", "The harbour of Ost Lenning freezes every January.")
    pending = store.jobs.enqueue(DOCUMENTS_JOB, documents_payload([harbour], []))
    store.close()
    with make_app(ingest_settings, encoder, generator) as c:
        wait_ready(c)
        assert wait_job(c, pending)["state"] == "done"
        assert top_docs(c, "When does the harbour freeze?")[0] == "harbour"
        assert top_docs(c, "lighthouse automated")[0] == "lighthouse"
        assert "bridge" not in top_docs(c, "Who built the Harrow bridge?", 10)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({}, 422, "empty"),
        ({"upsert": [], "delete": []}, 422, "empty"),
        ({"upsert": [LIGHTHOUSE, LIGHTHOUSE]}, 422, "more than once"),
        ({"upsert": [LIGHTHOUSE], "delete": ["lighthouse"]}, 422, "more than once"),
        ({"upsert": [{"id": "x"}]}, 422, "text"),
        ({"upsert": [{"id": "", "text": "t"}]}, 422, "id"),
        ({"upsert": [{"id": "x", "text": "t", "metadata": {"k": "v" * 5000}}]}, 422, "metadata"),
        ({"upsert": [{"id": "x", "text": "t" * 200_001}]}, 422, "text"),
        ({"delete": [str(i) for i in range(257)]}, 422, "delete"),
        ({"upsert": [{"id": "x", "text": "t", "extra": 1}]}, 422, "extra"),
        ({"upsert": "not a list"}, 422, "upsert"),
    ],
)
def test_bad_batches_are_refused_with_the_reason(client: TestClient, body: object, status: int, needle: str) -> None:
    response = client.post("/v1/documents", json=body)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]


def test_unknown_and_malformed_job_ids(client: TestClient) -> None:
    assert client.get("/v1/jobs/" + "0" * 32).status_code == 404
    assert client.get("/v1/jobs/../../etc").status_code in (404, 422)
    assert client.get("/v1/jobs/not-a-job").status_code == 422


def test_writing_needs_an_admin_token(ingest_settings: Settings, encoder: Encoder, generator: Generator) -> None:
    read_token, read_digest = new_token()
    admin_token, admin_digest = new_token()
    protected = ingest_settings.model_copy(
        update={"read_token_sha256": [read_digest], "admin_token_sha256": [admin_digest]}
    )
    with make_app(protected, encoder, generator) as c:
        wait_ready(c)
        body = {"upsert": [LIGHTHOUSE]}
        assert c.post("/v1/documents", json=body).status_code == 401
        assert c.post("/v1/documents", json=body, headers={"Authorization": f"Bearer {read_token}"}).status_code == 403
        created = c.post("/v1/documents", json=body, headers={"Authorization": f"Bearer {admin_token}"})
        assert created.status_code == 202
        job_url = f"/v1/jobs/{created.json()['job_id']}"
        assert c.get(job_url).status_code == 401
        assert c.get(job_url, headers={"Authorization": f"Bearer {read_token}"}).status_code == 200


def test_ragserve_ingest_sends_files_to_a_running_server(
    tmp_path: Path, tiny_index: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import urllib.request

    from bench.hotswap import start_server
    from bench.latency import free_port
    from service.cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [json.dumps({"id": f"note-{i}", "text": f"Locker {i} is in corridor {i % 3}."}) for i in range(5)]
    (corpus / "notes.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    (corpus / "lighthouse.md").write_text("# Marrow Point\nThe lighthouse was automated in 1994.", "utf-8")
    port = free_port()
    server = start_server(tiny_index, tmp_path / "registry", port)
    base = f"http://127.0.0.1:{port}"
    try:
        assert main(["ingest", str(corpus), "--url", base, "--batch", "2", "--no-progress"]) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report == {
            "jobs": 3,
            "counts": {"upserted": 6, "unchanged": 0, "deleted": 0, "not_found": 0},
            "failed_documents": 0,
        }
        request = urllib.request.Request(
            base + "/v1/retrieve",
            json.dumps({"query": "Where is locker 4?", "top_k": 1}).encode(),
            {"content-type": "application/json"},
        )
        with urllib.request.urlopen(request) as r:
            assert json.loads(r.read())["passages"][0]["doc_id"] == "note-4"
        assert main(["ingest", str(corpus), "--url", "http://127.0.0.1:9", "--no-progress"]) == 2  # no server
    finally:
        server.terminate()
        server.wait(timeout=30)
