"""Index versions, the serving pointer, hot swap and the admin API."""

import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from indexer.build import build_artifact
from ragserve.errors import InvalidInputError, UnknownVersionError
from ragserve.types import Document
from reader.generator import Generator
from retriever.encoder import Encoder
from retriever.hotswap import HotSwapRetriever
from retriever.registry import IndexRegistry
from retriever.version import VersionRetriever
from service.application.loading import load_services
from service.http.app import create_app
from service.http.auth import new_token
from service.settings import Settings
from tests.conftest import TINY_CORPUS, local_client, wait_job, wait_ready
from tests.defaults import BUILD, SEARCH

EXTRA = Document("lighthouse", "Marrow Point", "The Marrow Point lighthouse has been automated since 1994.")


def add_version(registry: IndexRegistry, encoder: Encoder, docs: list[Document]) -> str:
    return registry.add(lambda out: build_artifact(docs, out, encoder, BUILD, progress=False))


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("registry")
    registry = IndexRegistry(root, "default")
    versions = [
        add_version(registry, encoder, TINY_CORPUS[:2]),
        add_version(registry, encoder, TINY_CORPUS),
        add_version(registry, encoder, [*TINY_CORPUS, EXTRA]),
    ]
    registry.set_serving(versions[0])
    return root, versions


def test_versions_pointer_and_description(tmp_path: Path, encoder: Encoder) -> None:
    registry = IndexRegistry(tmp_path, "docs")
    assert registry.serving() is None and registry.describe() == []
    v1 = add_version(registry, encoder, TINY_CORPUS[:1])
    assert registry.import_artifact(registry.path_of(v1)) == v1  # importing a version it has copies nothing
    assert registry.version_ids() == [v1]
    registry.set_serving(v1)
    (info,) = [i for i in registry.describe() if i.version == v1]
    assert info.serving and info.documents == 1 and info.chunks == 1 and info.bytes > 0
    assert IndexRegistry(tmp_path, "docs").serving() == v1  # persisted
    assert [p.name for p in (tmp_path / "docs").iterdir() if p.name.startswith(".")] == []  # no temp files


@pytest.mark.parametrize("bad", ["../default", "..", "/etc/passwd", "x", "20260101T000000Z-ZZZZZZZZ", "a/b"])
def test_path_like_or_malformed_version_ids_touch_nothing(tmp_path: Path, bad: str) -> None:
    registry = IndexRegistry(tmp_path, "default")
    with pytest.raises(InvalidInputError, match="not a version id"):
        registry.set_serving(bad)
    with pytest.raises(UnknownVersionError):
        registry.set_serving("20260101T000000Z-0123abcd")
    assert registry.serving() is None


def test_interrupted_imports_are_cleaned_but_builds_in_progress_are_not(tmp_path: Path) -> None:
    versions = tmp_path / "default" / "versions"
    (versions / ".staging-incoming-dead").mkdir(parents=True)  # a crashed build: nobody holds its lock
    (versions / ".staging-incoming-dead" / ".lock").touch()
    (versions / ".staging-incoming-live").mkdir()
    with (versions / ".staging-incoming-live" / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a build running right now, in this or another process
        IndexRegistry(tmp_path, "default")
        assert [p.name for p in versions.iterdir()] == [".staging-incoming-live"]
    with pytest.raises(InvalidInputError):
        IndexRegistry(tmp_path, "../escape")


def test_prune_keeps_the_newest_and_never_the_serving_or_leased(tmp_path: Path, encoder: Encoder) -> None:
    registry = IndexRegistry(tmp_path, "default")
    versions = [add_version(registry, encoder, [Document(str(i), "", f"note {i}")]) for i in range(5)]
    registry.set_serving(versions[1])
    assert registry.prune(keep=3, in_use={versions[2]}) == [versions[0], versions[3]]  # oldest unprotected first
    assert sorted(registry.version_ids()) == sorted([versions[1], versions[2], versions[4]])
    assert sorted(p.name for p in registry.versions_dir.iterdir()) == sorted(registry.version_ids())  # no leftovers


def test_a_lease_finishes_on_the_version_it_started_with(three_versions, encoder: Encoder) -> None:  # type: ignore[no-untyped-def]
    root, (v1, v2, _) = three_versions
    registry = IndexRegistry(root, "default")
    swap = HotSwapRetriever(VersionRetriever(registry.path_of(v1), encoder, SEARCH))
    with swap.lease() as held:
        swap.swap(VersionRetriever(registry.path_of(v2), encoder, SEARCH))
        assert held.search("Quenmoor", 1).index_version == v1  # the old version still answers
        assert swap.in_use() == {v1, v2}
        assert swap.search("Quenmoor", 1).index_version == v2  # new requests see the new one
    assert swap.in_use() == {v2}


ADMIN_TOKEN, ADMIN_DIGEST = new_token()
READ_TOKEN, READ_DIGEST = new_token()


@pytest.fixture(scope="module")
def admin(three_versions, cache_home: Path, encoder: Encoder, generator: Generator) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    root, _ = three_versions
    settings = Settings(
        home=cache_home,
        registry_dir=root,
        admin_token_sha256=[ADMIN_DIGEST],
        read_token_sha256=[READ_DIGEST],
        keep_versions=10,
    )
    app = create_app(settings, loader=lambda s: load_services(s, encoder=encoder, generator=generator))
    with local_client(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        wait_ready(c)
        yield c


def test_admin_lists_switches_and_rolls_back(admin: TestClient, three_versions) -> None:  # type: ignore[no-untyped-def]
    _, (v1, _, v3) = three_versions
    listing = admin.get("/admin/indexes").json()["indexes"][0]
    assert listing["name"] == "default" and listing["serving"] == v1
    assert [v["version"] for v in listing["versions"]] == sorted(three_versions[1])
    assert admin.post("/v1/retrieve", json={"query": "lighthouse"}).json()["index_version"] == v1

    created = admin.post("/admin/indexes/default/refresh", json={"version": v3})
    assert created.status_code == 202, created.text
    job = wait_job(admin, created.json()["job_id"])
    assert job["kind"] == "refresh" and job["state"] == "done", job
    assert job["index"]["serving"] == v3 and job["index"]["previous"] == v1 and not job["index"]["built"]
    answer = admin.post("/v1/retrieve", json={"query": "When was the lighthouse automated?", "top_k": 1}).json()
    assert answer["index_version"] == v3 and answer["passages"][0]["doc_id"] == "lighthouse"

    back = admin.post("/admin/indexes/default/rollback", json={"version": v1})
    assert back.status_code == 200 and back.json()["serving"] == v1
    assert admin.get("/readyz").json()["index_version"] == v1


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/admin/indexes/default/refresh", {"version": "../../etc"}, 422),
        ("/admin/indexes/default/refresh", {"version": "20260101T000000Z-0123abcd"}, 404),
        ("/admin/indexes/default/rollback", {"version": ""}, 422),
        ("/admin/indexes/default/rollback", {}, 422),
        ("/admin/indexes/other/refresh", {"version": "20260101T000000Z-0123abcd"}, 404),
        ("/admin/indexes/..%2F..%2Fetc/refresh", {"version": "20260101T000000Z-0123abcd"}, 404),
    ],
)
def test_admin_bad_requests(admin: TestClient, path: str, body: dict[str, str], status: int) -> None:
    response = admin.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("nonsense", 401), (READ_TOKEN, 403), (ADMIN_TOKEN, 200)])
def test_admin_auth_matrix(admin: TestClient, token: str | None, status: int) -> None:
    headers = {"Authorization": f"Bearer {token}" if token else ""}
    assert admin.get("/admin/indexes", headers=headers).status_code == status


def test_swaps_under_concurrent_queries_fail_no_request(admin: TestClient, three_versions) -> None:  # type: ignore[no-untyped-def]
    _, versions = three_versions
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            r = admin.post("/v1/retrieve", json={"query": "bridge", "top_k": 2})
            if r.status_code != 200 or r.json()["index_version"] not in versions:
                failures.append(r.text)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(9):
        assert admin.post("/admin/indexes/default/rollback", json={"version": versions[i % 3]}).status_code == 200
    stop.set()
    for t in threads:
        t.join()
    assert failures == []


def test_switching_to_a_corrupt_version_is_refused_and_serving_is_unchanged(
    tmp_path: Path, cache_home: Path, encoder: Encoder, generator: Generator
) -> None:
    registry = IndexRegistry(tmp_path, "default")
    good = add_version(registry, encoder, TINY_CORPUS)
    bad = add_version(registry, encoder, [EXTRA])
    registry.set_serving(good)
    with (registry.path_of(bad) / "index.faiss").open("r+b") as fh:
        fh.seek(64)
        fh.write(b"\x00\x01\x02\x03")
    settings = Settings(home=cache_home, registry_dir=tmp_path)
    with local_client(
        create_app(settings, loader=lambda s: load_services(s, encoder=encoder, generator=generator))
    ) as c:
        wait_ready(c)
        response = c.post("/admin/indexes/default/rollback", json={"version": bad})
        assert response.status_code == 409 and "sha256" in response.json()["error"]["message"]
        job = wait_job(c, c.post("/admin/indexes/default/refresh", json={"version": bad}).json()["job_id"])
        assert job["state"] == "failed" and "sha256" in job["errors"]["*"]
        assert c.post("/v1/retrieve", json={"query": "bridge"}).json()["index_version"] == good
    assert registry.serving() == good
