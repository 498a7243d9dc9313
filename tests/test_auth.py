"""Bearer tokens: digests in the settings, scopes, and the query-protection switch."""

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from reader.generator import Generator
from retriever.encoder import Encoder
from service.application.loading import load_services
from service.cli import main
from service.http.app import create_app
from service.http.auth import Granted, new_token, scope_of, token_digest
from service.settings import Settings
from tests.conftest import local_client, wait_ready

READ_TOKEN, READ_DIGEST = new_token()
ADMIN_TOKEN, ADMIN_DIGEST = new_token()


def test_scopes() -> None:
    assert scope_of(f"Bearer {ADMIN_TOKEN}", [ADMIN_DIGEST], [READ_DIGEST]) is Granted.ADMIN
    assert scope_of(f"bearer {READ_TOKEN}", [ADMIN_DIGEST], [READ_DIGEST]) is Granted.READ
    assert token_digest(READ_TOKEN) == READ_DIGEST and new_token()[0] != READ_TOKEN


def test_token_digests_are_validated_and_read_from_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGSERVE_READ_TOKEN_SHA256", f"{READ_DIGEST}, {ADMIN_DIGEST}")
    assert Settings().read_token_sha256 == [READ_DIGEST, ADMIN_DIGEST]
    monkeypatch.setenv("RAGSERVE_READ_TOKEN_SHA256", "not-a-digest")
    with pytest.raises(ValidationError, match="64 lowercase hex"):
        Settings()


def test_protecting_queries_without_any_token_is_refused() -> None:
    with pytest.raises(ValidationError, match="no read or admin token"):
        Settings(protect_queries=True)


def test_token_new_prints_a_token_and_its_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "new", "--scope", "admin"]) == 0
    out = capsys.readouterr().out
    token = out.split("token:")[1].split()[0]
    assert f"RAGSERVE_ADMIN_TOKEN_SHA256={token_digest(token)}" in out


@pytest.fixture(scope="module")
def protected(settings: Settings, encoder: Encoder, generator: Generator) -> TestClient:
    strict = settings.model_copy(
        update={"protect_queries": True, "read_token_sha256": [READ_DIGEST], "admin_token_sha256": [ADMIN_DIGEST]}
    )
    with local_client(create_app(strict, loader=lambda s: load_services(s, encoder=encoder, generator=generator))) as c:
        wait_ready(c)
        yield c


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("Bearer wrong-token", 401),
        (f"Basic {READ_TOKEN}", 401),
        ("Bearer ", 401),
        (f"Bearer {READ_TOKEN}", 200),
        (f"Bearer {ADMIN_TOKEN}", 200),
    ],
)
def test_protected_query_endpoints(protected: TestClient, header: str | None, status: int) -> None:
    headers = {"Authorization": header} if header else {}
    response = protected.post("/v1/retrieve", json={"query": "bridge"}, headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"
    assert protected.get("/healthz").status_code == 200  # probes stay open


def test_queries_are_open_by_default(client: TestClient) -> None:
    assert client.post("/v1/retrieve", json={"query": "bridge"}).status_code == 200
