"""Hand-written bad input, one table: sizes, types, encodings, traversal attempts, wrong tokens,
wrong scopes, wrong Host and client addresses. Every answer is below 500, and every 4xx is JSON
with `error.code` and `error.message` (the code checked where it is stable).

Two dedicated apps with small limits (so oversized bodies stay small), each with a registry and
an adapter directory of its own: `open` has no token configured (admin routes answer loopback
clients naming a loopback host only), `token` has an admin and a read token and protects the
query routes. `remote` is the open app seen from a non-loopback address.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from reader.generator import Generator
from retriever.encoder import Encoder
from service.application.loading import load_services
from service.application.services import Services
from service.http.app import create_app
from service.http.auth import token_digest
from service.settings import Settings
from tests.conftest import local_client, wait_ready

ADMIN_TOKEN = "rgs_admin-token-for-tests"
READ_TOKEN = "rgs_read-token-for-tests"
LIMITS = {
    "max_question_chars": 50,
    "max_ask_top_k": 3,
    "max_retrieve_top_k": 5,
    "max_body_bytes": 32 * 1024,
    "max_ingest_body_bytes": 64 * 1024,
    "max_batch_documents": 3,
    "max_document_chars": 100,
    "max_metadata_bytes": 64,
    "max_new_tokens": 4,
}
JSON = {"content-type": "application/json"}
HEX = "0123456789abcdef0123456789abcdef"  # a well-formed job id no job has
VERSION = "20260101T120000Z-0123abcd"  # a well-formed version id no index has
TMP = "@TMP@"  # replaced by the folder of the test's adapter fixtures


def j(value: object) -> bytes:
    return json.dumps(value).encode()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Bad:
    name: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str | bytes] = field(default_factory=lambda: dict(JSON))
    status: int | frozenset[int] = 422
    code: str | None = None
    needle: str | None = None  # a part of error.message
    client: str = "open"  # open | remote | token
    chunked: bool = False  # send the body without a Content-Length


NEST = 10_000
CASES = [
    # --- sizes (limits in LIMITS) -------------------------------------------------------------
    Bad("ask-question-over-limit", "POST", "/v1/ask", j({"question": "x" * 51}), code="invalid_request"),
    Bad("retrieve-query-over-limit", "POST", "/v1/retrieve", j({"query": "x" * 51}), code="invalid_request"),
    Bad("ask-top-k-over-limit", "POST", "/v1/ask", j({"question": "q", "top_k": 4}), code="invalid_request"),
    Bad("retrieve-top-k-over-limit", "POST", "/v1/retrieve", j({"query": "q", "top_k": 6}), code="invalid_request"),
    Bad("retrieve-top-k-zero", "POST", "/v1/retrieve", j({"query": "q", "top_k": 0}), code="invalid_request"),
    Bad(
        "ask-body-over-limit",
        "POST",
        "/v1/ask",
        j({"question": "q" * (33 * 1024)}),
        status=413,
        code="payload_too_large",
    ),
    Bad(
        "retrieve-chunked-body-over-limit",
        "POST",
        "/v1/retrieve",
        b"x" * (33 * 1024),
        status=413,
        code="payload_too_large",
        chunked=True,
    ),
    Bad(
        "documents-body-over-limit",
        "POST",
        "/v1/documents",
        j({"upsert": [{"id": "a", "text": "t" * (65 * 1024)}]}),
        status=413,
        code="payload_too_large",
    ),
    Bad(
        "documents-bad-content-length",
        "POST",
        "/v1/documents",
        j({"delete": ["a"]}),
        headers={**JSON, "content-length": "-1"},
        status=413,
        code="payload_too_large",
    ),
    Bad(
        "documents-batch-over-limit",
        "POST",
        "/v1/documents",
        j({"upsert": [{"id": str(i), "text": "t"} for i in range(4)]}),
        code="invalid_request",
    ),
    Bad(
        "documents-upsert-and-delete-over-limit",
        "POST",
        "/v1/documents",
        j({"upsert": [{"id": "a", "text": "t"}, {"id": "b", "text": "t"}], "delete": ["c", "d"]}),
        code="invalid_request",
        needle="limit is 3",
    ),
    Bad(
        "document-text-over-limit",
        "POST",
        "/v1/documents",
        j({"upsert": [{"id": "a", "text": "t" * 101}]}),
        code="invalid_request",
    ),
    Bad(
        "document-metadata-over-limit",
        "POST",
        "/v1/documents",
        j({"upsert": [{"id": "a", "text": "t", "metadata": {"k": "v" * 64}}]}),
        code="invalid_request",
        needle="metadata",
    ),
    Bad(
        "document-id-over-limit",
        "POST",
        "/v1/documents",
        j({"delete": ["i" * 257]}),
        code="invalid_request",
    ),
    Bad(
        "document-title-over-limit",
        "POST",
        "/v1/documents",
        j({"upsert": [{"id": "a", "title": "t" * 1001, "text": "t"}]}),
        code="invalid_request",
    ),
    Bad(
        "document-id-duplicated",
        "POST",
        "/v1/documents",
        j({"upsert": [{"id": "a", "text": "t"}], "delete": ["a"]}),
        code="invalid_request",
        needle="more than once",
    ),
    Bad("documents-empty-batch", "POST", "/v1/documents", j({}), code="invalid_request", needle="empty"),
    Bad(
        "refresh-version-over-limit",
        "POST",
        "/admin/indexes/default/refresh",
        j({"version": "v" * 65}),
        code="invalid_request",
    ),
    Bad(
        "adapter-path-over-limit",
        "POST",
        "/admin/adapters/x",
        j({"path": "/" + "p" * 4096}),
        code="invalid_request",
    ),
    # --- wrong JSON types ---------------------------------------------------------------------
    Bad("ask-top-k-string", "POST", "/v1/ask", j({"question": "q", "top_k": "2"}), code="invalid_request"),
    Bad("ask-top-k-float", "POST", "/v1/ask", j({"question": "q", "top_k": 2.0}), code="invalid_request"),
    Bad("ask-top-k-boolean", "POST", "/v1/ask", j({"question": "q", "top_k": True}), code="invalid_request"),
    Bad("ask-question-null", "POST", "/v1/ask", j({"question": None}), code="invalid_request"),
    Bad("ask-question-array", "POST", "/v1/ask", j({"question": ["q"]}), code="invalid_request"),
    Bad("ask-question-object", "POST", "/v1/ask", j({"question": {"text": "q"}}), code="invalid_request"),
    Bad("ask-extractive-string", "POST", "/v1/ask", j({"question": "q", "extractive": "true"}), code="invalid_request"),
    Bad("ask-reader-number", "POST", "/v1/ask", j({"question": "q", "reader": 1}), code="invalid_request"),
    Bad("retrieve-body-array", "POST", "/v1/retrieve", j([{"query": "q"}]), code="invalid_request"),
    Bad("retrieve-body-string", "POST", "/v1/retrieve", j("q"), code="invalid_request"),
    Bad("retrieve-body-null", "POST", "/v1/retrieve", b"null", code="invalid_request"),
    Bad("documents-body-array", "POST", "/v1/documents", j([{"id": "a", "text": "t"}]), code="invalid_request"),
    Bad(
        "documents-upsert-object",
        "POST",
        "/v1/documents",
        j({"upsert": {"id": "a", "text": "t"}}),
        code="invalid_request",
    ),
    Bad("documents-upsert-strings", "POST", "/v1/documents", j({"upsert": ["a"]}), code="invalid_request"),
    Bad("documents-delete-numbers", "POST", "/v1/documents", j({"delete": [1, 2]}), code="invalid_request"),
    Bad(
        "document-metadata-array",
        "POST",
        "/v1/documents",
        j({"upsert": [{"id": "a", "text": "t", "metadata": ["k"]}]}),
        code="invalid_request",
    ),
    Bad(
        "document-text-nested-object",
        "POST",
        "/v1/documents",
        j({"upsert": [{"id": "a", "text": {"nested": {"deeper": "t"}}}]}),
        code="invalid_request",
    ),
    Bad(
        "rollback-version-number", "POST", "/admin/indexes/default/rollback", j({"version": 1}), code="invalid_request"
    ),
    Bad(
        "refresh-version-boolean",
        "POST",
        "/admin/indexes/default/refresh",
        j({"version": True}),
        code="invalid_request",
    ),
    Bad("default-adapter-null", "PUT", "/admin/default-adapter", j({"name": None}), code="invalid_request"),
    Bad("adapter-path-array", "POST", "/admin/adapters/x", j({"path": ["/tmp"]}), code="invalid_request"),
    # --- encodings and content types -----------------------------------------------------------
    Bad("ask-invalid-utf8", "POST", "/v1/ask", b'{"question": "\xff\xfe"}', status=frozenset({400, 422})),
    Bad(
        "retrieve-utf16-bom",
        "POST",
        "/v1/retrieve",
        '{"query": "q", "top_k": 99}'.encode("utf-16"),
        status=frozenset({400, 422}),
    ),
    Bad(
        "documents-invalid-utf8",
        "POST",
        "/v1/documents",
        b'{"upsert": [{"id": "a", "text": "\xc3\x28"}]}',
        status=frozenset({400, 422}),
    ),
    Bad("documents-utf16", "POST", "/v1/documents", '{"delete": ["a"]}'.encode("utf-16-le"), code="invalid_request"),
    Bad(
        "retrieve-raw-nul-byte",
        "POST",
        "/v1/retrieve",
        b'{"query": "q\x00"}',
        code="invalid_request",
    ),
    Bad("retrieve-escaped-nul", "POST", "/v1/retrieve", b'{"query": "\\u0000"}', status=frozenset({200, 422})),
    Bad("retrieve-lone-surrogate", "POST", "/v1/retrieve", b'{"query": "\\ud800"}', status=frozenset({200, 422})),
    Bad("ask-lone-surrogate", "POST", "/v1/ask", b'{"question": "\\udfff x"}', status=frozenset({200, 422})),
    Bad(
        "document-lone-surrogate",
        "POST",
        "/v1/documents",
        b'{"upsert": [{"id": "\\ud800", "text": "\\udc00"}]}',
        status=frozenset({202, 422}),
    ),
    Bad(
        "retrieve-text-plain",
        "POST",
        "/v1/retrieve",
        j({"query": "q"}),
        headers={"content-type": "text/plain"},
        code="invalid_request",
    ),
    Bad(
        "ask-form-encoded",
        "POST",
        "/v1/ask",
        b"question=q",
        headers={"content-type": "application/x-www-form-urlencoded"},
        code="invalid_request",
    ),
    Bad(
        "documents-form-encoded",
        "POST",
        "/v1/documents",
        b"delete=a",
        headers={"content-type": "application/x-www-form-urlencoded"},
        code="invalid_input",
    ),
    Bad(
        "rollback-multipart",
        "POST",
        "/admin/indexes/default/rollback",
        b"--b\r\ncontent-disposition: form-data; name=version\r\n\r\nx\r\n--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
        code="invalid_request",
    ),
    Bad("ask-empty-body", "POST", "/v1/ask", b"", code="invalid_request"),
    Bad("documents-empty-body", "POST", "/v1/documents", b"", code="invalid_request"),
    Bad("rollback-empty-body", "POST", "/admin/indexes/default/rollback", b"", code="invalid_request"),
    Bad("ask-malformed-json", "POST", "/v1/ask", b'{"question": "q",}', code="invalid_request"),
    Bad("documents-malformed-json", "POST", "/v1/documents", b'{"delete": ["a"]', code="invalid_request"),
    Bad(
        "retrieve-duplicated-key-last-bad",
        "POST",
        "/v1/retrieve",
        b'{"query": "q", "top_k": 1, "top_k": 99}',
        code="invalid_request",
    ),
    Bad(
        "documents-duplicated-key-last-bad",
        "POST",
        "/v1/documents",
        b'{"delete": ["a"], "delete": "a"}',
        code="invalid_request",
    ),
    # --- deep nesting and huge numbers ----------------------------------------------------------
    Bad("retrieve-deep-arrays", "POST", "/v1/retrieve", b"[" * NEST + b"]" * NEST, status=frozenset({400, 422})),
    Bad(
        "ask-deep-arrays-in-a-field",
        "POST",
        "/v1/ask",
        b'{"question": "q", "top_k": ' + b"[" * NEST + b"]" * NEST + b"}",
        status=frozenset({400, 422}),
    ),
    Bad("documents-deep-arrays", "POST", "/v1/documents", b"[" * NEST + b"]" * NEST, code="invalid_request"),
    Bad(
        "document-metadata-deep-objects",
        "POST",
        "/v1/documents",
        b'{"upsert": [{"id": "a", "text": "t", "metadata": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}]}",
        code="invalid_request",
    ),
    Bad(
        "rollback-deep-objects",
        "POST",
        "/admin/indexes/default/rollback",
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        status=frozenset({400, 422}),
    ),
    Bad("ask-top-k-1e400", "POST", "/v1/ask", b'{"question": "q", "top_k": 1e400}', code="invalid_request"),
    Bad(
        "retrieve-top-k-10-to-400",
        "POST",
        "/v1/retrieve",
        b'{"query": "q", "top_k": 1' + b"0" * 400 + b"}",
        code="invalid_request",
    ),
    Bad(
        "retrieve-top-k-10-to-5000",
        "POST",
        "/v1/retrieve",
        b'{"query": "q", "top_k": 1' + b"0" * 5000 + b"}",
        status=frozenset({400, 422}),
    ),
    Bad("retrieve-top-k-nan", "POST", "/v1/retrieve", b'{"query": "q", "top_k": NaN}', status=frozenset({400, 422})),
    Bad(
        "ask-top-k-negative-infinity",
        "POST",
        "/v1/ask",
        b'{"question": "q", "top_k": -Infinity}',
        status=frozenset({400, 422}),
    ),
    Bad(
        "document-metadata-1e400",
        "POST",
        "/v1/documents",
        b'{"upsert": [{"id": "a", "text": "t", "metadata": {"n": 1e400}}]}',
        code="invalid_request",  # an infinite number is not plain JSON: refused, not stored
    ),
    Bad(
        "documents-10-to-5000-in-unknown-field",
        "POST",
        "/v1/documents",
        b'{"delete": ["a"], "n": 1' + b"0" * 5000 + b"}",
        code="invalid_request",
    ),
    # --- traversal attempts -------------------------------------------------------------------
    Bad("adapter-name-dot-dot", "POST", "/admin/adapters/%2e%2e", code="invalid_request"),
    Bad("adapter-name-dot", "DELETE", "/admin/adapters/%2e", code="invalid_request"),
    Bad("adapter-name-etc-passwd", "POST", "/admin/adapters/..%2f..%2fetc%2fpasswd", status=404, code="http_404"),
    Bad("adapter-name-encoded-slash", "DELETE", "/admin/adapters/%2e%2e%2fsquad-lora", status=404, code="http_404"),
    Bad("adapter-name-backslash", "POST", "/admin/adapters/..%5c..%5cetc", code="invalid_request"),
    Bad("adapter-name-hidden", "DELETE", "/admin/adapters/.hidden", code="invalid_request"),
    Bad("adapter-path-relative", "POST", "/admin/adapters/x", j({"path": "adapters/x"}), code="invalid_input"),
    Bad("adapter-path-dot-dot", "POST", "/admin/adapters/x", j({"path": "../../etc"}), code="invalid_input"),
    Bad("adapter-path-etc", "POST", "/admin/adapters/x", j({"path": "/etc"}), code="adapter_invalid"),
    Bad(
        "adapter-path-with-symlink",
        "POST",
        "/admin/adapters/x",
        j({"path": f"{TMP}/linked"}),
        code="adapter_invalid",
        needle="symbolic link",
    ),
    Bad(
        "adapter-path-escaping-by-dot-dot",
        "POST",
        "/admin/adapters/x",
        j({"path": f"{TMP}/linked/../../../../etc"}),
        code="adapter_invalid",
    ),
    Bad(
        "ask-adapter-traversal",
        "POST",
        "/v1/ask",
        j({"question": "q", "adapter": "../squad-lora"}),
        code="invalid_request",
    ),
    Bad("default-adapter-traversal", "PUT", "/admin/default-adapter", j({"name": "../x"}), code="invalid_request"),
    Bad(
        "rollback-version-traversal",
        "POST",
        "/admin/indexes/default/rollback",
        j({"version": "../x"}),
        code="invalid_input",
    ),
    Bad(
        "rollback-version-absolute",
        "POST",
        "/admin/indexes/default/rollback",
        j({"version": "/etc/passwd"}),
        code="invalid_input",
    ),
    Bad(
        "refresh-version-traversal",
        "POST",
        "/admin/indexes/default/refresh",
        j({"version": f"../{VERSION}"}),
        code="invalid_input",
    ),
    Bad(
        "rollback-unknown-version",
        "POST",
        "/admin/indexes/default/rollback",
        j({"version": VERSION}),
        status=404,
        code="unknown_version",
    ),
    Bad(
        "index-name-with-slash",
        "POST",
        "/admin/indexes/default%2f..%2fx/rollback",
        j({"version": VERSION}),
        status=404,
        code="http_404",
    ),
    Bad(
        "index-name-dot-dot",
        "POST",
        "/admin/indexes/%2e%2e/rollback",
        j({"version": VERSION}),
        status=404,
        code="unknown_index",
    ),
    Bad(
        "index-name-unknown",
        "POST",
        "/admin/indexes/other/rollback",
        j({"version": VERSION}),
        status=404,
        code="unknown_index",
    ),
    Bad("job-id-not-hex", "GET", "/v1/jobs/not-a-job", code="invalid_request"),
    Bad("job-id-uppercase-hex", "GET", f"/v1/jobs/{HEX.upper()}", code="invalid_request"),
    Bad("job-id-traversal", "GET", "/v1/jobs/..%2f..%2fadmin%2findexes", status=404, code="http_404"),
    Bad("job-id-unknown", "GET", f"/v1/jobs/{HEX}", status=404, code="unknown_job"),
    Bad(
        "document-id-traversal-is-only-an-id", "POST", "/v1/documents", j({"delete": ["../../etc/passwd"]}), status=202
    ),
    Bad(
        "admin-path-dot-dot-to-query",
        "POST",
        "/admin/%2e%2e/v1/retrieve",
        j({"query": "q"}),
        status=404,
        code="http_404",
    ),
    Bad("wrong-method", "GET", "/v1/ask", status=405, code="http_405"),
    # --- wrong Host, non-loopback client (open app: no token configured) --------------------------
    Bad("admin-host-evil", "GET", "/admin/indexes", headers={"host": "evil.example"}, status=403, code="forbidden"),
    Bad(
        "admin-host-evil-with-port",
        "POST",
        "/admin/indexes/default/refresh",
        headers={"host": "evil.example:8000"},
        status=403,
        code="forbidden",
    ),
    Bad(
        "admin-host-localhost-subdomain",
        "PUT",
        "/admin/default-adapter",
        j({"name": "none"}),
        headers={**JSON, "host": "localhost.evil.example"},
        status=403,
        code="forbidden",
    ),
    Bad(
        "documents-host-evil",
        "POST",
        "/v1/documents",
        j({"delete": ["a"]}),
        headers={**JSON, "host": "evil.example"},
        status=403,
        code="forbidden",
    ),
    Bad("admin-host-empty", "GET", "/admin/adapters", headers={"host": ""}, status=403, code="forbidden"),
    Bad("admin-host-ipv6-loopback", "GET", "/admin/indexes", headers={"host": "[::1]:8000"}, status=200),
    Bad("admin-remote-client", "GET", "/admin/indexes", status=403, code="forbidden", client="remote"),
    Bad("adapter-delete-remote-client", "DELETE", "/admin/adapters/x", status=403, code="forbidden", client="remote"),
    Bad(
        "documents-remote-client",
        "POST",
        "/v1/documents",
        j({"delete": ["a"]}),
        status=403,
        code="forbidden",
        client="remote",
    ),
    # --- wrong tokens and scopes (token app: admin and read tokens, protected queries) -----------
    Bad("no-token-admin", "GET", "/admin/indexes", status=401, code="unauthorized", client="token"),
    Bad(
        "unknown-token",
        "GET",
        "/admin/indexes",
        headers=bearer("rgs_not-a-token"),
        status=401,
        code="unauthorized",
        client="token",
    ),
    Bad(
        "digest-instead-of-token",
        "GET",
        "/admin/indexes",
        headers=bearer(token_digest(ADMIN_TOKEN)),
        status=401,
        code="unauthorized",
        client="token",
    ),
    Bad(
        "basic-scheme",
        "GET",
        "/admin/indexes",
        headers={"authorization": "Basic YWRtaW46YWRtaW4="},
        status=401,
        code="unauthorized",
        client="token",
    ),
    Bad(
        "token-without-scheme",
        "GET",
        "/admin/indexes",
        headers={"authorization": ADMIN_TOKEN},
        status=401,
        code="unauthorized",
        client="token",
    ),
    Bad(
        "empty-bearer",
        "GET",
        "/admin/indexes",
        headers={"authorization": "Bearer "},
        status=401,
        code="unauthorized",
        client="token",
    ),
    Bad(
        "bare-bearer",
        "GET",
        "/admin/indexes",
        headers={"authorization": "Bearer"},
        status=401,
        code="unauthorized",
        client="token",
    ),
    Bad(
        "token-with-non-ascii-bytes",
        "GET",
        "/admin/indexes",
        headers={"authorization": "Bearer tökén".encode()},
        status=401,
        code="unauthorized",
        client="token",
    ),
    Bad(
        "huge-token",
        "GET",
        "/admin/indexes",
        headers=bearer("t" * 10_000),
        status=401,
        code="unauthorized",
        client="token",
    ),
    Bad(
        "read-token-on-admin",
        "GET",
        "/admin/indexes",
        headers=bearer(READ_TOKEN),
        status=403,
        code="forbidden",
        client="token",
    ),
    Bad(
        "read-token-on-rollback",
        "POST",
        "/admin/indexes/default/rollback",
        j({"version": VERSION}),
        headers={**JSON, **bearer(READ_TOKEN)},
        status=403,
        code="forbidden",
        client="token",
    ),
    Bad(
        "read-token-on-documents",
        "POST",
        "/v1/documents",
        j({"delete": ["a"]}),
        headers={**JSON, **bearer(READ_TOKEN)},
        status=403,
        code="forbidden",
        client="token",
    ),
    Bad(
        "read-token-on-adapter-delete",
        "DELETE",
        "/admin/adapters/squad-lora",
        headers=bearer(READ_TOKEN),
        status=403,
        code="forbidden",
        client="token",
    ),
    Bad(
        "admin-token-lowercase-scheme",
        "GET",
        "/admin/indexes",
        headers={"authorization": f"bearer {ADMIN_TOKEN}"},
        status=200,
        client="token",
    ),
    Bad(
        "read-token-on-query-with-bad-body",
        "POST",
        "/v1/ask",
        j({"question": ""}),
        headers={**JSON, **bearer(READ_TOKEN)},
        code="invalid_request",
        client="token",
    ),
    Bad(
        "no-token-on-protected-query",
        "POST",
        "/v1/retrieve",
        j({"query": "q"}),
        status=401,
        code="unauthorized",
        client="token",
    ),
    Bad("no-token-on-job", "GET", f"/v1/jobs/{HEX}", status=401, code="unauthorized", client="token"),
    Bad(
        "read-token-on-unknown-job",
        "GET",
        f"/v1/jobs/{HEX}",
        headers=bearer(READ_TOKEN),
        status=404,
        code="unknown_job",
        client="token",
    ),
    Bad(
        "public-path-dot-dot-to-admin",
        "GET",
        "/docs/%2e%2e/admin/indexes",
        headers={},
        status=401,
        code="unauthorized",
        client="token",
    ),
    Bad("no-token-unknown-path", "GET", "/nope", headers={}, status=401, code="unauthorized", client="token"),
]
IDS = [f"{i:03d}-{case.name}" for i, case in enumerate(CASES, 1)]
assert len(set(c.name for c in CASES)) == len(CASES), "case names are unique"


def _app_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory, **update: object) -> Settings:
    return settings.model_copy(
        update={
            "registry_dir": tmp_path_factory.mktemp("bad-registry"),
            "adapters_dir": tmp_path_factory.mktemp("bad-adapters"),
            **LIMITS,
            **update,
        }
    )


@pytest.fixture(scope="module")
def clients(
    settings: Settings, encoder: Encoder, generator: Generator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TestClient]]:
    def load(s: Settings) -> Services:
        return load_services(s, encoder=encoder, generator=generator)

    open_app = create_app(_app_settings(settings, tmp_path_factory), loader=load)
    token_app = create_app(
        _app_settings(
            settings,
            tmp_path_factory,
            admin_token_sha256=[token_digest(ADMIN_TOKEN)],
            read_token_sha256=[token_digest(READ_TOKEN)],
            protect_queries=True,
        ),
        loader=load,
    )
    with local_client(open_app) as open_client, local_client(token_app) as token_client:
        wait_ready(open_client)
        wait_ready(token_client)
        remote = TestClient(open_app, base_url="http://localhost", client=("203.0.113.7", 50000))
        yield {"open": open_client, "remote": remote, "token": token_client}


@pytest.fixture(scope="module")
def adapter_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`linked`: an adapter folder (it has adapter_config.json) with a symbolic link in it."""
    root = tmp_path_factory.mktemp("bad-adapter-sources")
    linked = root / "linked"
    linked.mkdir()
    (linked / "adapter_config.json").write_text("{}")
    (linked / "adapter_model.safetensors").symlink_to("/etc/passwd")
    return root


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_input_is_refused_with_a_json_4xx(case: Bad, clients: dict[str, TestClient], adapter_folders: Path) -> None:
    body = case.body.replace(TMP.encode(), str(adapter_folders).encode())
    content = iter([body[i : i + 4096] for i in range(0, len(body), 4096)]) if case.chunked else body
    response = clients[case.client].request(case.method, case.path, content=content, headers=case.headers)
    expected = case.status if isinstance(case.status, frozenset) else frozenset({case.status})
    assert response.status_code in expected, (response.status_code, response.text[:500])
    assert response.status_code < 500
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json"), response.headers
        error = response.json()["error"]
        assert isinstance(error["code"], str) and error["code"], error
        assert isinstance(error["message"], str) and error["message"], error
        if case.code is not None:
            assert error["code"] == case.code, error
        if case.needle is not None:
            assert case.needle in error["message"], error
