"""What only the PostgreSQL store does: migrations that replicas starting at once apply exactly
once, a database of a newer ragserve refused, and a server that goes away counted as the storage
failing (retried, answered 503), not as a bad request."""

import threading
from typing import Any

import pytest

from ragserve.postgres import Database, SchemaTooNewError, redacted
from ragserve.storage import is_storage_error
from service.application.jobqueue import DOCUMENTS_JOB, documents_payload
from service.application.store import postgres_store
from service.settings import Settings


def test_replicas_starting_at_once_migrate_each_step_exactly_once(database_url: str) -> None:
    settings = Settings(database_url=database_url)
    stores: list[Any] = []
    errors: list[BaseException] = []

    def start(owner: str) -> None:
        try:
            stores.append(postgres_store(settings, "default", owner))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(f"r{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == [] and len(stores) == 4
        with stores[0].database.transaction() as conn:
            rows = conn.execute("SELECT component, version FROM ragserve_migrations ORDER BY 1, 2").fetchall()
        assert rows == [("documents", 1), ("edits", 1), ("edits", 2), ("jobs", 1), ("replicas", 1)]
    finally:
        for store in stores:
            store.close()


def test_a_database_migrated_by_a_newer_ragserve_is_refused(database_url: str) -> None:
    db = Database(database_url, 2)
    try:
        db.migrate("documents", ["CREATE TABLE a (x int)", "CREATE TABLE b (x int)"])
        assert db.migrate("documents", ["CREATE TABLE a (x int)", "CREATE TABLE b (x int)"]) == []  # idempotent
        with pytest.raises(SchemaTooNewError, match="schema version 2, newer than this ragserve knows"):
            db.migrate("documents", ["CREATE TABLE a (x int)"])
    finally:
        db.close()


def test_the_password_never_shows_in_what_is_logged() -> None:
    assert "s3cret" not in redacted("postgresql://user:s3cret@db:5432/ragserve")
    assert "s3cret" not in repr(Settings(database_url="postgresql://user:s3cret@db:5432/ragserve"))


def test_settings_refuse_a_url_that_is_not_postgresql() -> None:
    with pytest.raises(ValueError, match="database_url"):
        Settings(database_url="mysql://db/ragserve")
    with pytest.raises(ValueError, match="at least 3 heartbeats"):
        Settings(heartbeat_s=2, replica_timeout_s=3)


def test_a_server_that_goes_away_is_a_storage_error() -> None:
    from bench.pgserver import postgres_server

    with postgres_server() as server:
        store = postgres_store(Settings(database_url=server.url), "default", "r1")
        store.jobs.enqueue(DOCUMENTS_JOB, documents_payload([], ["x"]))
        server.stop()
        with pytest.raises(Exception) as caught:
            store.jobs.enqueue(DOCUMENTS_JOB, documents_payload([], ["y"]))
        assert is_storage_error(caught.value), repr(caught.value)
        server.start_again()
        assert store.jobs.enqueue(DOCUMENTS_JOB, documents_payload([], ["z"]))  # the pool reconnects
        store.close()


def test_while_the_database_is_down_queries_go_on_and_writes_answer_503(
    tmp_path: Any, tiny_index: Any, cache_home: Any, encoder: Any, generator: Any
) -> None:
    from bench.pgserver import postgres_server
    from service.application.loading import load_services
    from service.http.app import create_app
    from tests.conftest import local_client, wait_job, wait_ready

    with postgres_server() as server:
        settings = Settings(
            home=cache_home, index_path=tiny_index, registry_dir=tmp_path / "registry", database_url=server.url
        )
        app = create_app(settings, loader=lambda s: load_services(s, encoder=encoder, generator=generator))
        with local_client(app) as client:
            wait_ready(client)
            body = {"upsert": [{"id": "mill", "text": "The Saltmere mill grinds barley on Tuesdays."}]}
            assert wait_job(client, client.post("/v1/documents", json=body).json()["job_id"])["state"] == "done"
            server.stop()
            found = client.post("/v1/retrieve", json={"query": "When does the Saltmere mill grind?", "top_k": 1})
            assert found.status_code == 200 and found.json()["passages"][0]["doc_id"] == "mill"  # from memory
            for response in (client.get("/admin/indexes"), client.post("/v1/documents", json=body)):
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "storage_unavailable"
                assert response.headers["retry-after"]
            server.start_again()
            assert client.get("/admin/indexes").status_code == 200  # the pool replaces dropped connections
            body = {"upsert": [{"id": "weir", "text": "The Saltmere weir was rebuilt in 1902."}]}
            assert wait_job(client, client.post("/v1/documents", json=body).json()["job_id"])["state"] == "done"


def test_a_sql_ascii_database_hands_back_text_not_bytes(postgres: Any) -> None:
    """initdb without a locale makes SQL_ASCII databases; psycopg would return their text as bytes."""
    store = postgres_store(Settings(database_url=postgres.new_database("SQL_ASCII")), "default", "r0")
    try:
        store.pointer.set("20260101T120000Z-0123abcd")
        assert store.pointer.get() == "20260101T120000Z-0123abcd"
        with store.database.transaction() as conn:
            assert conn.execute("SELECT 'Zoë'::text").fetchone() == ("Zoë",)
    finally:
        store.close()
