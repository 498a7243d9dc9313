"""Every registered reader, asked through HTTP on a server whose generator runs in the default
number format (`generator_precision` auto: bf16 where the CPU multiplies it natively): an answer,
or a 422 that says why this configuration cannot run the reader, and never a server error."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from reader import builtin  # noqa: F401  (registers the built-in readers)
from reader.generator import Generator
from reader.registry import reader_names
from retriever.encoder import Encoder
from service.application.loading import load_services
from service.http.app import create_app
from service.settings import Settings
from tests.conftest import local_client, wait_ready


@pytest.fixture(scope="module")
def default_client(
    settings: Settings, encoder: Encoder, cache_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    own = settings.model_copy(update={"registry_dir": tmp_path_factory.mktemp("registry-default-precision")})
    assert own.generator_precision == Settings().generator_precision  # the default, whatever it resolves to
    generator = Generator(own.generator_model, cache_home, own.generator_precision)
    app = create_app(own, loader=lambda s: load_services(s, encoder=encoder, generator=generator))
    with local_client(app) as client:
        wait_ready(client)
        yield client


@pytest.mark.parametrize("reader", reader_names())
def test_every_registered_reader_answers_or_says_why_not(default_client: TestClient, reader: str) -> None:
    ready = default_client.get("/readyz").json()
    body = {"question": "When was the Harrow bridge built?", "top_k": 2, "reader": reader}
    response = default_client.post("/v1/ask", json=body)
    assert response.status_code < 500, response.text
    if reader in ready["readers"]:
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["reader"] == reader and answer["answer"] and len(answer["citations"]) == 2
    else:
        assert response.status_code == 422 and response.json()["error"]["code"] == "reader_unavailable"
