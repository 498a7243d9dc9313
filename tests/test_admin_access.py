"""Admin access that cannot be reached by accident: token-less admin answers only a loopback client
naming a loopback host; with any token configured it needs an admin token; authentication comes
before the body; adapter folders are copied without links; artifact version ids are checked."""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ragserve.errors import ArtifactError
from reader.generator import Generator
from retriever.encoder import Encoder
from retriever.registry import IndexRegistry
from service.application.adapters import BUNDLED_DIR
from service.application.loading import load_services
from service.http.app import create_app
from service.http.auth import host_name, token_digest
from service.settings import Settings
from tests.conftest import local_client, wait_ready

ADMIN, READ = "admin-secret", "read-secret"


def client_as(app: FastAPI, address: str, host: str) -> TestClient:
    return TestClient(app, base_url=f"http://{host}", client=(address, 40000))


@pytest.mark.parametrize(
    ("address", "host", "status"),
    [
        ("127.0.0.1", "localhost", 200),
        ("127.0.0.1", "localhost:8000", 200),
        ("127.0.0.1", "127.0.0.1:8000", 200),
        ("::1", "[::1]:8000", 200),
        ("127.0.0.1", "evil.example", 403),  # DNS rebinding: a page's own name, pointed at 127.0.0.1
        ("127.0.0.1", "evil.example:8000", 403),
        ("10.1.2.3", "localhost", 403),  # a remote client that claims a loopback Host
        ("192.168.0.7", "127.0.0.1", 403),
        ("testclient", "localhost", 403),  # not an address at all
    ],
)
def test_token_less_admin_answers_only_loopback_clients_naming_a_loopback_host(
    app: FastAPI, client: TestClient, address: str, host: str, status: int
) -> None:
    c = client_as(app, address, host)
    for method, path, body in (
        ("GET", "/admin/indexes", None),
        ("PUT", "/admin/default-adapter", {"name": "none"}),
        ("POST", "/v1/documents", {"delete": ["no-such-doc"]}),
    ):
        response = c.request(method, path, json=body)
        expected = 202 if status == 200 and path == "/v1/documents" else status
        assert response.status_code == expected, (method, path, response.text)
        if status == 403:
            assert "allowed_hosts" in response.json()["error"]["message"]
    assert c.post("/v1/retrieve", json={"query": "bridge"}).status_code == 200  # queries stay open


def test_host_names_are_parsed_without_their_port() -> None:
    assert host_name("LocalHost:8000") == "localhost"
    assert host_name("[::1]:8000") == "::1"
    assert host_name("::1") == "::1"
    assert host_name("") == ""


@pytest.fixture(scope="module")
def read_only(settings: Settings, encoder: Encoder, generator: Generator) -> Iterator[FastAPI]:
    """Read tokens configured, no admin token: admin routes are closed to everyone."""
    strict = settings.model_copy(update={"read_token_sha256": [token_digest(READ)]})
    app = create_app(strict, loader=lambda s: load_services(s, encoder=encoder, generator=generator))
    with local_client(app) as c:
        wait_ready(c)
        yield app


def test_with_read_tokens_but_no_admin_token_admin_is_closed_even_locally(read_only: FastAPI) -> None:
    c = local_client(read_only)
    assert c.get("/admin/indexes").status_code == 401
    response = c.get("/admin/indexes", headers={"Authorization": f"Bearer {READ}"})
    assert response.status_code == 403 and "admin_token_sha256" in response.json()["error"]["message"]
    read = {"Authorization": f"Bearer {READ}"}
    assert c.post("/v1/documents", json={"delete": ["x"]}, headers=read).status_code == 403
    job = "0" * 32
    assert c.get(f"/v1/jobs/{job}").status_code == 401
    assert c.get(f"/v1/jobs/{job}", headers={"Authorization": f"Bearer {READ}"}).status_code == 404


def test_a_proxy_name_in_allowed_hosts_opens_token_less_admin_to_loopback_clients(
    settings: Settings, encoder: Encoder, generator: Generator
) -> None:
    proxied = settings.model_copy(update={"allowed_hosts": ["localhost", "api.internal"]})
    app = create_app(proxied, loader=lambda s: load_services(s, encoder=encoder, generator=generator))
    with local_client(app) as c:
        wait_ready(c)
        assert client_as(app, "127.0.0.1", "api.internal").get("/admin/indexes").status_code == 200
        assert client_as(app, "10.0.0.9", "api.internal").get("/admin/indexes").status_code == 403
        assert client_as(app, "127.0.0.1", "127.0.0.1").get("/admin/indexes").status_code == 403  # not listed


def test_authentication_comes_before_the_body_is_read(settings: Settings) -> None:
    guarded = settings.model_copy(update={"admin_token_sha256": [token_digest(ADMIN)]})
    app = create_app(guarded, loader=lambda _: (_ for _ in ()).throw(RuntimeError("not needed")))
    c = local_client(app)
    # A body that is not even JSON: without a token the answer is 401, not a parse error.
    response = c.post("/v1/documents", content=b"\xff" * 10_000, headers={"content-type": "application/json"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    # A body over the size limit: 401 too (the declared length is never looked at before the token).
    big = {"content-type": "application/json", "content-length": str(10**9)}
    assert c.post("/v1/documents", content=b"{}", headers=big).status_code == 401


def _adapter_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "my-adapter"
    shutil.copytree(BUNDLED_DIR / "squad-lora", folder)
    return folder


def test_adapter_folders_with_links_or_relative_paths_are_refused(client: TestClient, tmp_path: Path) -> None:
    linked = _adapter_copy(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for you")
    (linked / "notes.txt").symlink_to(secret)
    response = client.post("/admin/adapters/linked", json={"path": str(linked)})
    assert response.status_code == 422 and "symbolic link" in response.json()["error"]["message"], response.text
    response = client.post("/admin/adapters/relative", json={"path": "my-adapter"})
    assert response.status_code == 422 and "absolute" in response.json()["error"]["message"]
    for name in ("..", "../etc", "a/b", "%2e%2e"):
        assert client.post(f"/admin/adapters/{name}", json={}).status_code in (404, 422), name
    names = [a["name"] for a in client.get("/admin/adapters").json()["adapters"]]
    assert "linked" not in names and "relative" not in names


def test_an_adapter_name_is_never_tried_as_a_path(client: TestClient, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _adapter_copy(tmp_path)  # ./my-adapter exists in the working directory
    response = client.post("/admin/adapters/my-adapter", json={})
    assert response.status_code == 422 and response.json()["error"]["code"] == "unknown_adapter", response.text


def test_an_artifact_whose_manifest_names_a_path_is_refused(tiny_index: Path, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile"
    shutil.copytree(tiny_index, hostile)
    manifest = json.loads((hostile / "manifest.json").read_text())
    manifest["version"] = "../../escaped"
    (hostile / "manifest.json").write_text(json.dumps(manifest))
    registry = IndexRegistry(tmp_path / "registry", "default")
    with pytest.raises(ArtifactError, match="not a version id"):
        registry.import_artifact(hostile)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "registry" / "escaped").exists()
    assert registry.version_ids() == []
