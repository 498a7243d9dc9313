"""Schemathesis against the app's own OpenAPI schema: every operation, a bounded number of cases,
no 5xx, and every 4xx a JSON error body.

The schema is the one the app builds for these settings (`create_app(...).openapi()`, what it
serves at /openapi.json, whose limits are the configured ones; the first test checks that the
running app serves exactly it). It is built at import, because `schema.parametrize()` needs the
operations at collection time (schemathesis' fixture-based loader does not run on pytest 9.2).

The calls go in-process, through schemathesis' own ASGI transport, to a dedicated app, as a
loopback client (127.0.0.1) naming `localhost`: so the token-less admin routes answer and are
really exercised. That app has a registry and an adapter directory of its own, so whatever the
admin calls change (new versions, rollbacks, adapters, the default adapter) touches no other
test; its models are the session's. Deterministic: a fixed seed, derandomized generation and no
example database.
"""

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error
from starlette.types import Receive, Scope, Send

from reader.generator import Generator
from retriever.encoder import Encoder
from service.application.adapters import bundled_adapters
from service.application.loading import load_services
from service.application.services import Services
from service.http.app import create_app
from service.settings import Settings
from tests.conftest import local_client, wait_ready

EXAMPLES = 100  # generated cases per operation (fuzzing phase); the coverage phase adds its own
ASK_EXAMPLES = 15  # POST /v1/ask: a valid body runs real generation
LIMITS: dict[str, Any] = {
    # small bounds keep the generated bodies, and the work a valid one causes, small
    "max_question_chars": 200,
    "max_document_chars": 2_000,
    "max_batch_documents": 8,
    "max_metadata_bytes": 256,
    "max_new_tokens": 4,
}

ADAPTERS = bundled_adapters()  # squad-lora, squad-ia3: real adapters of the generator


# Names the server knows, drawn now and then instead of a generated one, so that the success paths
# run too (refresh jobs, loading, replacing and unloading adapters, switching the default one).
DICTIONARIES = {
    "index": ["default"],
    "adapter": sorted(ADAPTERS),
    "default-adapter": [*sorted(ADAPTERS), "none", "auto"],
    "adapter-path": [str(path) for _, path in sorted(ADAPTERS.items())] + ["/etc", "/nonexistent"],
    "version": ["20260101T120000Z-0123abcd"],  # well-formed, unknown
    "reader": ["stuff", "rag-token", "rag-sequence", "fusion", "fid"],
    "model": ["ragserve", "stuff", "rag-token", "stuff+squad-lora", "stuff+none"],
}
BINDINGS = [  # (method, path, {parameter: (dictionary, probability)})
    ("POST", "/admin/indexes/{name}/refresh", {"path.name": ("index", 0.5), "body.version": ("version", 0.3)}),
    ("POST", "/admin/indexes/{name}/rollback", {"path.name": ("index", 0.5), "body.version": ("version", 0.3)}),
    ("POST", "/admin/adapters/{name}", {"path.name": ("adapter", 0.5), "body.path": ("adapter-path", 0.3)}),
    ("DELETE", "/admin/adapters/{name}", {"path.name": ("adapter", 0.5)}),
    ("PUT", "/admin/default-adapter", {"body.name": ("default-adapter", 0.5)}),
]
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261201,
        "base-url": "http://localhost",
        "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "suppress-health-check": ["too_slow", "filter_too_much"],  # timing must not decide a CI run
        "dictionaries": {name: {"values": values} for name, values in DICTIONARIES.items()},
        "operations": [
            {
                "include-name": "POST /v1/ask",
                "generation": {"max-examples": ASK_EXAMPLES},
                "parameters": {"body.reader": {"dictionary": "reader", "probability": 0.3}},
            },
            {
                "include-name": "POST /v1/chat/completions",
                "generation": {"max-examples": ASK_EXAMPLES},
                "parameters": {"body.model": {"dictionary": "model", "probability": 0.5}},
            },
            *(
                {
                    "include-name": f"{method} {path}",
                    "parameters": {
                        key: {"dictionary": name, "probability": probability}
                        for key, (name, probability) in bound.items()
                    },
                }
                for method, path, bound in BINDINGS
            ),
        ],
    }
)


class Loopback:
    """The ASGI app schemathesis calls: the dedicated app, seen from 127.0.0.1. The app's lifespan
    (which loads the models once) belongs to the test client; this one only answers the protocol."""

    def __init__(self) -> None:
        self.app: FastAPI | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.app is not None, "the fuzz_app fixture sets the app"
        await self.app({**scope, "client": ("127.0.0.1", 50000)}, receive, send)


def _never(_: Settings) -> Services:
    raise AssertionError("the schema app serves no requests")


LOOPBACK = Loopback()
SPEC = create_app(Settings(**LIMITS), loader=_never).openapi()
schema = schemathesis.openapi.from_dict(SPEC, config=CONFIG)
schema.app = LOOPBACK


@pytest.fixture(scope="module")
def fuzz_app(
    settings: Settings, encoder: Encoder, generator: Generator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    own = settings.model_copy(
        update={
            "registry_dir": tmp_path_factory.mktemp("fuzz-registry"),
            "adapters_dir": tmp_path_factory.mktemp("fuzz-adapters"),
            **LIMITS,
        }
    )
    app = create_app(own, loader=lambda s: load_services(s, encoder=encoder, generator=generator))
    with local_client(app) as client:
        wait_ready(client)
        LOOPBACK.app = app
        yield client
        LOOPBACK.app = None


def json_error_body(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every 4xx is JSON: {"error": {"code": str, "message": str}, ...}."""
    if not 400 <= response.status_code < 500:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"{response.status_code} with content-type {content_type!r}"
    body = json.loads(response.content)
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"{response.status_code} without an error object: {body!r}"
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str) and error["message"], body


def test_the_fuzzed_schema_is_the_one_the_app_serves(fuzz_app: TestClient) -> None:
    assert fuzz_app.get("/openapi.json").json() == SPEC
    paths = {(method.upper(), path) for path, item in SPEC["paths"].items() for method in item}
    assert len(paths) == 21 and ("DELETE", "/v1/edits/{edit_id}") in paths  # every route is fuzzed


@schema.parametrize()
def test_no_server_error_and_json_4xx(case: schemathesis.Case, fuzz_app: TestClient) -> None:
    response = case.call()
    assert response.request.url.startswith("http://localhost/")  # Host: localhost
    case.validate_response(response, checks=[not_a_server_error, json_error_body])
