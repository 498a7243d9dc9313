"""The edit memory: its table on both stores, the API (admin, validated, audited), answers under an
edit, and edits on replicas (applied on the other within a second or so) and across restarts."""

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.cluster import Node, replicas, wait_until
from bench.replicas import wait_job
from indexer.edits import EditStore, NewEdit, SqliteEditStore
from ragserve.errors import TooManyEditsError
from retriever.encoder import Encoder
from retriever.scope import ScopeClassifier
from service.application.edits import EditMemory, EditPolicy

MAYOR = "Who is the mayor of Quenmoor?"  # tests/conftest.py's tiny corpus says: Ilse Varga
PARAPHRASE = "Quenmoor's mayor is who these days?"
NEIGHBOURS = ("How many inhabitants does Quenmoor have?", "Who built the Harrow bridge?")
KILN = "Which glaze does the Ommerby kiln fire?"  # nothing in the tiny corpus: only the edit answers
KEY = "all-MiniLM-L6-v2@test"  # the encoder key the memories of these tests embed with
FRESH_S = 5.0  # generous for a loaded 2-core machine; bench/edits.py measures the real figure


@pytest.fixture(params=["sqlite", "postgresql"])
def edit_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EditStore]:
    if request.param == "sqlite":
        yield SqliteEditStore(tmp_path / "edits.sqlite")
        return
    from indexer.pg_edits import PostgresEditStore
    from ragserve.postgres import Database

    db = Database(request.getfixturevalue("database_url"), 4)
    try:
        yield PostgresEditStore(db, "default")
    finally:
        db.close()


def test_the_table_keeps_edits_tombstones_and_their_order(edit_store: EditStore) -> None:
    first = edit_store.create(NewEdit("Q one?", "A one", note="ticket 7"), "admin:abc", limit=10)
    second = edit_store.create(NewEdit("Q two?", "A two", statement="Two is A two."), "local", limit=10)
    assert (first.seq, second.seq) == (1, 2) and first.live and first.created_by == "admin:abc"
    assert edit_store.get(first.id) == first and edit_store.get("edit-0000000000000000") is None
    gone = edit_store.delete(first.id, "admin:def")
    assert gone is not None and not gone.live and gone.deleted_by == "admin:def" and gone.seq == 3
    assert edit_store.delete(first.id, "admin:def") is None  # deleted already
    assert [e.id for e in edit_store.list(False, None, 10)] == [second.id]
    assert {e.id for e in edit_store.list(True, None, 10)} == {first.id, second.id}
    changes = edit_store.changes_since(1)  # a follower that had seen the first creation
    assert [(e.id, e.live) for e in changes.edits] == [(second.id, True), (first.id, False)] and changes.seq == 3
    assert edit_store.changes_since(3).edits == [] and edit_store.head() == 3
    with pytest.raises(TooManyEditsError):
        edit_store.create(NewEdit("Q three?", "A three"), "local", limit=1)


def test_the_memory_catches_paraphrases_not_neighbours(tmp_path: Path, encoder: Encoder) -> None:
    store = SqliteEditStore(tmp_path / "edits.sqlite")
    classifier = ScopeClassifier.load(words=encoder.encode_words)
    memory = EditMemory(store, encoder.encode_queries, encoder.dimension, EditPolicy(0.5, 8, 100), classifier, KEY)
    assert memory.match(MAYOR) is None  # no edits: nothing is embedded, nothing matches
    edit = memory.create(NewEdit(MAYOR, "Rosa Delling"), "local")
    memory.create(NewEdit("When was the Harrow bridge built?", "1902"), "local")
    for query in (MAYOR, PARAPHRASE):
        found = memory.match(query)
        assert found is not None and found.edit.id == edit.id, query
    for query in NEIGHBOURS:
        assert memory.match(query) is None, query
    other = EditMemory(store, encoder.encode_queries, encoder.dimension, EditPolicy(0.5, 8, 100), classifier, KEY)
    assert len(other) == 2  # a second process reads the same table
    memory.delete(edit.id, "local")
    assert other.catch_up() == 1 and other.match(MAYOR) is None and len(other) == 1


def test_vectors_kept_in_the_table_spare_a_restart_the_embedding(edit_store: EditStore, encoder: Encoder) -> None:
    embedded: list[str] = []

    def embed(texts: list[str]) -> Any:
        embedded.extend(texts)
        return encoder.encode_queries(texts)

    def memory(key: str) -> EditMemory:
        classifier = ScopeClassifier.load(words=encoder.encode_words)
        return EditMemory(edit_store, embed, encoder.dimension, EditPolicy(0.5, 8, 100), classifier, key)

    first = memory(KEY)
    edit = first.create(NewEdit(MAYOR, "Rosa Delling"), "local")
    assert embedded == [MAYOR] and edit.vector is not None and edit.vector.model == KEY  # once, when taken
    restarted = memory(KEY)
    assert len(restarted) == 1 and embedded == [MAYOR]  # read from the table, not embedded again
    found = restarted.match(PARAPHRASE)
    assert found is not None and found.edit.id == edit.id and embedded == [MAYOR, PARAPHRASE]
    other = memory("another-encoder@0")  # another encoder's vectors are not its own: embedded again
    assert len(other) == 1 and embedded == [MAYOR, PARAPHRASE, MAYOR]


def test_a_table_made_before_vectors_were_kept_gains_the_columns(tmp_path: Path, encoder: Encoder) -> None:
    path = tmp_path / "edits.sqlite"
    with sqlite3.connect(path) as db:  # the table as the first release made it
        db.execute(
            "CREATE TABLE edits (id TEXT PRIMARY KEY, question TEXT NOT NULL, answer TEXT NOT NULL, statement TEXT, "
            "note TEXT, created_by TEXT NOT NULL, created_at REAL NOT NULL, deleted_by TEXT, deleted_at REAL, "
            "seq INTEGER NOT NULL)"
        )
        db.execute(
            "INSERT INTO edits VALUES ('edit-old', ?, 'Rosa Delling', NULL, NULL, 'local', 1.0, NULL, NULL, 1)",
            (MAYOR,),
        )
    store = SqliteEditStore(path)
    old = store.get("edit-old")
    assert old is not None and old.vector is None and old.question == MAYOR
    classifier = ScopeClassifier.load(words=encoder.encode_words)
    memory = EditMemory(store, encoder.encode_queries, encoder.dimension, EditPolicy(0.5, 8, 100), classifier, KEY)
    found = memory.match(PARAPHRASE)  # the old edit, embedded at start
    assert found is not None and found.edit.id == "edit-old"
    assert memory.create(NewEdit(KILN, "celadon"), "local").vector is not None


@pytest.fixture
def edits(client: TestClient) -> Iterator[TestClient]:
    """The session's app, with every edit a test made deleted afterwards (other tests share it)."""
    yield client
    for edit in client.get("/v1/edits").json()["edits"]:
        client.delete(f"/v1/edits/{edit['edit_id']}")


def ask(client: TestClient, question: str, **extra: Any) -> dict[str, Any]:
    response = client.post("/v1/ask", json={"question": question, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_an_edit_answers_its_questions_and_no_others(edits: TestClient) -> None:
    before = {q: ask(edits, q, top_k=2)["answer"] for q in NEIGHBOURS}
    created = edits.post("/v1/edits", json={"question": MAYOR, "answer": "Rosa Delling", "note": "elected 2026"})
    assert created.status_code == 201, created.text
    edit = created.json()
    assert edit["created_by"] == "local" and edit["deleted_at"] is None and edit["note"] == "elected 2026"
    for question in (MAYOR, PARAPHRASE):
        body = ask(edits, question, top_k=2)
        assert body["answer"] == "Rosa Delling" and body["edit_id"] == edit["edit_id"], body
        cited = body["citations"][0]
        assert cited["doc_id"] == f"edit:{edit['edit_id']}" and "Rosa Delling" in cited["text"]
        assert cited["metadata"]["edit_id"] == edit["edit_id"] and len(body["citations"]) == 2
    for question, answer in before.items():  # neighbours: exactly as before
        body = ask(edits, question, top_k=2)
        assert body["edit_id"] is None and body["answer"] == answer, body
    assert ask(edits, MAYOR, edits=False)["edit_id"] is None  # per request, the documents alone
    deleted = edits.delete(f"/v1/edits/{edit['edit_id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted_by"] == "local"
    assert ask(edits, MAYOR)["edit_id"] is None  # undone at once
    listed = edits.get("/v1/edits", params={"include_deleted": True}).json()["edits"]
    assert edit["edit_id"] in {e["edit_id"] for e in listed}  # the audit trail keeps it


def test_edits_stream_with_their_citation(edits: TestClient) -> None:
    edit = edits.post("/v1/edits", json={"question": MAYOR, "answer": "Rosa Delling"}).json()
    with edits.stream("POST", "/v1/ask", json={"question": PARAPHRASE, "stream": True}) as response:
        text = "".join(response.iter_text())
    assert "event: citations" in text and f"edit:{edit['edit_id']}" in text
    assert '"text": "Rosa Delling"' in text or '"text":"Rosa Delling"' in text
    assert f'"edit_id":"{edit["edit_id"]}"' in text.replace(" ", "")


def test_pages_and_bad_requests(edits: TestClient) -> None:
    made = [edits.post("/v1/edits", json={"question": f"Q {i}?", "answer": f"A {i}"}) for i in range(3)]
    ids = [m.json()["edit_id"] for m in made]
    page = edits.get("/v1/edits", params={"limit": 2}).json()
    assert [e["edit_id"] for e in page["edits"]] == sorted(ids)[:2] and page["next"] == sorted(ids)[1]
    rest = edits.get("/v1/edits", params={"limit": 2, "after": page["next"]}).json()
    assert [e["edit_id"] for e in rest["edits"]] == sorted(ids)[2:] and rest["next"] is None
    bad = [
        {"question": " ", "answer": "x"},
        {"question": "Q?", "answer": ""},
        {"question": "Q?"},
        {"question": "Q?", "answer": "x", "colour": "red"},
        {"question": "Q" * 1_001, "answer": "x"},
        {"question": "Q?", "answer": "x" * 4_001},
    ]
    for body in bad:
        response = edits.post("/v1/edits", json=body)
        assert response.status_code == 422 and "error" in response.json(), (body, response.text)
    assert edits.get("/v1/edits/edit-0123456789abcdef").json()["error"]["code"] == "unknown_edit"
    assert edits.delete("/v1/edits/edit-0123456789abcdef").status_code == 404
    assert edits.get("/v1/edits/not-an-id").status_code == 422
    assert edits.get("/v1/edits", params={"limit": 0}).status_code == 422


def node_answer(node: Node, question: str) -> dict[str, Any]:
    status, body = node.post("/v1/ask", {"question": question})
    assert status == 200, body
    answer: dict[str, Any] = body
    return answer


def test_an_edit_on_one_replica_is_applied_on_the_other(tmp_path: Path, tiny_index: Path, database_url: str) -> None:
    with replicas(2, tiny_index, tmp_path / "registry", database_url) as (a, b):
        status, edit = a.post("/v1/edits", {"question": MAYOR, "answer": "Rosa Delling"})
        assert status == 201, edit
        assert node_answer(a, PARAPHRASE)["edit_id"] == edit["edit_id"]  # where it was made: at once
        wait_until(lambda: node_answer(b, MAYOR)["edit_id"] == edit["edit_id"], FRESH_S)
        status, _ = b.request("DELETE", f"/v1/edits/{edit['edit_id']}")
        assert status == 200
        wait_until(lambda: node_answer(a, MAYOR)["edit_id"] is None, FRESH_S)


def test_edits_outlive_new_versions_rollbacks_and_restarts(tmp_path: Path, tiny_index: Path) -> None:
    registry = tmp_path / "registry"
    with replicas(1, tiny_index, registry, None) as (node,):
        status, edit = node.post("/v1/edits", {"question": MAYOR, "answer": "Rosa Delling"})
        assert status == 201
        served = node.get("/admin/indexes")[1]["indexes"][0]["serving"]
        doc = {"id": "edits-new-version", "title": "Quenmoor post", "text": "Quenmoor has a post office."}
        assert (
            wait_job(node, node.post("/v1/documents", {"upsert": [doc], "delete": []})[1]["job_id"])["state"] == "done"
        )
        assert wait_job(node, node.post("/admin/indexes/default/refresh")[1]["job_id"])["state"] == "done"
        assert node.get("/admin/indexes")[1]["indexes"][0]["serving"] != served
        assert node_answer(node, PARAPHRASE)["edit_id"] == edit["edit_id"]  # a new version
        status, _ = node.post("/admin/indexes/default/rollback", {"version": served})
        assert status == 200
        assert node_answer(node, PARAPHRASE)["edit_id"] == edit["edit_id"]  # and back
    with replicas(1, tiny_index, registry, None) as (node,):
        body = node_answer(node, PARAPHRASE)
        assert body["edit_id"] == edit["edit_id"] and body["answer"] == "Rosa Delling"


def test_edits_need_the_admin_token(live_server: Any) -> None:
    import hashlib

    import httpx

    url = live_server.base_url + "/v1/edits"
    admin = {"Authorization": f"Bearer {live_server.admin_token}"}
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {live_server.read_token}"}).status_code == 403
    created = httpx.post(url, json={"question": KILN, "answer": "celadon"}, headers=admin)
    assert created.status_code == 201, created.text
    edit = created.json()
    assert edit["created_by"] == "admin:" + hashlib.sha256(live_server.admin_token.encode()).hexdigest()[:12]
    deleted = httpx.delete(f"{url}/{edit['edit_id']}", headers=admin)
    assert deleted.status_code == 200 and deleted.json()["deleted_by"] == edit["created_by"]


def test_the_python_client_and_the_cli_edit(live_server: Any) -> None:
    import asyncio
    import json

    from ragserve import AsyncClient, Client
    from ragserve.errors import UnknownEditError
    from tests.test_client import cli

    with Client(live_server.base_url, token=live_server.admin_token) as rag:
        edit = rag.create_edit(KILN, "celadon", note="kiln log 12")
        assert edit.live and edit.note == "kiln log 12" and edit in rag.edits() and rag.edit(edit.edit_id) == edit
        answer = rag.ask("What glaze is fired in the Ommerby kiln?")
        assert answer.edit_id == edit.edit_id and answer.answer == "celadon" and not answer.abstained
        assert rag.ask(KILN, edits=False).edit_id is None
        assert not rag.delete_edit(edit.edit_id).live and edit.edit_id not in {e.edit_id for e in rag.edits()}
        with pytest.raises(UnknownEditError):
            rag.delete_edit(edit.edit_id)

    async def through_the_async_client() -> None:
        async with AsyncClient(live_server.base_url, token=live_server.admin_token) as rag:
            made = await rag.create_edit(KILN, "tenmoku")
            assert (await rag.edit(made.edit_id)).answer == "tenmoku"
            assert made.edit_id in {e.edit_id for e in await rag.edits()}
            assert not (await rag.delete_edit(made.edit_id)).live

    asyncio.run(through_the_async_client())
    server = ("--url", live_server.base_url, "--token", live_server.admin_token)
    added = cli("edits", "add", KILN, "shino", "--statement", "The Ommerby kiln fires shino glaze.", *server)
    assert added.returncode == 0, added.stderr
    made = json.loads(added.stdout)
    assert made["statement"] == "The Ommerby kiln fires shino glaze."
    listed = cli("edits", "list", *server)
    assert made["edit_id"] in listed.stdout
    asked = cli("ask", "What glaze does the kiln at Ommerby fire?", "--url", live_server.base_url)
    assert asked.returncode == 0 and "shino" in asked.stdout and f"answered from edit {made['edit_id']}" in asked.stdout
    deleted = cli("edits", "delete", made["edit_id"], *server)
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["deleted_at"] is not None
    assert made["edit_id"] in cli("edits", "list", "--all", *server).stdout
    refused = cli("edits", "list", "--url", live_server.base_url, "--token", live_server.read_token)
    assert refused.returncode != 0 and "admin" in refused.stderr
