"""The web page at `/` and the API documentation, as a person meets them: in a real browser
(Debian's chromium, driven headless by Playwright; nothing downloads a browser) against the real
server process of `live_server`, on a machine without a network.

Where chromium is missing these tests skip, unless RAGSERVE_REQUIRE_BROWSER=1 (as .ci/run sets):
then they fail. One browser serves the whole module; each test gets a fresh context (its own
session storage) that records every request the page makes, and fails if one leaves 127.0.0.1.
"""

import http.client
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.live import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
ANSWER_MS = 120_000  # a generated answer on two shared cores, with other tests running
PUBLIC = ["/", "/ui/app.js", "/ui/app.css", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"]
DOCS_ASSETS = ["swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"]
LOCAL_SCHEMES = ("data:", "blob:")  # ReDoc searches in a worker made from a blob
CSP_FAILURES = ("csp", "net::ERR_BLOCKED_BY_CSP")
REDOC_LOGO = {"https://cdn.redoc.ly/redoc/logo-mini.svg"}  # in ReDoc's sidebar, whatever its options

# Records the answer's text each time it changes while it streams, and its state at the end.
WATCH_ANSWER = """() => {
  const answer = document.getElementById("answer");
  window.answerTexts = [];
  new MutationObserver(() => {
    if (answer.dataset.state === "streaming" && answer.textContent) window.answerTexts.push(answer.textContent);
  }).observe(answer, { childList: true, characterData: true, subtree: true });
}"""


def references(html: str) -> list[str]:
    """Every URL a page names: src and href attributes, and Swagger UI's `url: '...'`."""
    return re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']""", html) + re.findall(r"url: '([^']+)'", html)


def is_local(url: str) -> bool:
    return url.startswith(("data:", "#")) or (url.startswith("/") and not url.startswith("//"))


# --- without a browser: what the server sends --------------------------------------------------


def test_the_page_and_the_docs_need_no_token(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.base_url) as http:
        for path in PUBLIC + [f"/docs-assets/{name}" for name in DOCS_ASSETS]:
            assert http.get(path).status_code == 200, path
        assert http.get("/admin/indexes").status_code == 401  # what the page fetches still needs one
        assert http.get("/ui/index.html").status_code == 404  # the page only at /, with its headers
        page = http.get("/")
        docs = [http.get(path).headers["content-security-policy"] for path in ("/docs", "/redoc")]
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert all("img-src 'self' data:" in p and "connect-src 'self'" in p for p in docs)


def test_a_dot_dot_below_the_assets_reaches_nothing_private(live_server: LiveServer) -> None:
    address = urlsplit(live_server.base_url)
    for path, status in (("/ui/%2e%2e/admin/indexes", 401), ("/ui/../admin/indexes", 401), ("/docs-assets/../x", 401)):
        connection = http.client.HTTPConnection(str(address.hostname), address.port, timeout=30)
        connection.request("GET", path)  # sent as written: httpx would remove the dots first
        assert connection.getresponse().status == status, path
        connection.close()


def test_the_docs_and_the_page_reference_only_this_server(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.base_url) as http:
        for path in ("/", "/docs", "/redoc"):
            html = http.get(path).text
            urls = references(html)
            assert urls, path
            assert all(is_local(u) for u in urls), (path, [u for u in urls if not is_local(u)])
            for url in urls:
                if url.startswith("/"):
                    assert http.get(url).status_code == 200, (path, url)
        assert "fonts.googleapis" not in http.get("/redoc").text


def test_the_page_and_its_assets_have_metrics_labels_of_their_own(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.base_url) as http:
        http.get("/ui/app.js")
        http.get("/docs-assets/swagger-ui.css")
        metrics = http.get("/metrics").text
    assert 'endpoint="/ui",status="200"' in metrics
    assert 'endpoint="/docs-assets",status="200"' in metrics


# --- in the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("RAGSERVE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} not found, and RAGSERVE_REQUIRE_BROWSER=1 (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser: Any, live_server: LiveServer) -> Iterator[Any]:
    context = browser.new_context(base_url=live_server.base_url)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    blocked: list[str] = []  # stopped in the browser by the page's Content-Security-Policy: never sent
    page.on("requestfailed", lambda request: request.failure in CSP_FAILURES and blocked.append(request.url))
    failed: list[str] = []
    page.on("pageerror", lambda error: failed.append(str(error)))
    yield page
    context.close()
    outside = [u for u in requested if not u.startswith(LOCAL_SCHEMES) and urlsplit(u).hostname != "127.0.0.1"]
    assert not [u for u in outside if u not in blocked], f"requests that left the machine: {outside}"
    assert set(outside) <= REDOC_LOGO, outside  # the one thing the policy has to stop
    assert not failed, f"errors in the page's scripts: {failed}"


def open_page(page: Any) -> None:
    page.goto("/")
    page.wait_for_selector("#server-status[data-state=ready]")
    page.wait_for_function("document.getElementById('reader').options.length > 1")


def ask(page: Any, question: str, extractive: bool = False, adapter: str = "") -> str:
    """Ask with the keyboard (Enter in the question) and wait for the whole answer. The live server
    answers with the base model by default; the bundled SQuAD adapter answers the tiny corpus's
    questions in words of their passages."""
    page.evaluate(WATCH_ANSWER)
    page.set_checked("#extractive", extractive)
    page.select_option("#adapter", adapter)
    page.fill("#question", question)
    page.press("#question", "Enter")
    page.wait_for_selector("#answer[data-state=done], #answer[data-state=error]", timeout=ANSWER_MS)
    assert page.get_attribute("#answer", "data-state") == "done", page.text_content("#ask-error")
    return str(page.text_content("#answer"))


def test_an_answer_streams_in_with_its_citations(page: Any, live_server: LiveServer) -> None:
    open_page(page)
    version = httpx.get(live_server.base_url + "/readyz").json()["index_version"]
    answer = ask(page, "Who built the Harrow bridge?", adapter="squad-lora")
    assert "Brell" in answer
    tokens = int(page.get_attribute("#answer", "data-token-events"))
    seen = page.evaluate("window.answerTexts")
    assert tokens >= 2 and len(set(seen)) >= 2, (tokens, seen)  # it grew while it streamed
    assert all(answer.startswith(t) for t in seen)  # each step a prefix of the answer
    bridge = page.locator("li.citation[data-doc-id=bridge]")
    assert bridge.is_visible()
    assert "Harrow bridge" in bridge.text_content() and "Tomas Brell" in bridge.text_content()
    assert version in page.text_content("#citations-version")
    assert "reader" in page.text_content("#answer-meta")


def test_an_extractive_answer_marks_its_span_in_the_passage(page: Any) -> None:
    open_page(page)
    answer = ask(page, "Who built the Harrow bridge?", extractive=True)
    mark = page.locator("li.citation[data-doc-id=bridge] mark.evidence")
    assert mark.count() == 1 and mark.text_content() == answer and "Brell" in answer


def test_the_options_come_from_the_server(page: Any, live_server: LiveServer) -> None:
    open_page(page)
    ready = httpx.get(live_server.base_url + "/readyz").json()
    readers = page.eval_on_selector_all("#reader option", "options => options.map(o => o.value)")
    assert readers == ["", *ready["readers"]]
    modes = page.eval_on_selector_all("#retrieval option", "options => options.map(o => o.value)")
    assert modes == ["", "dense", "sparse", "hybrid"]
    spec = httpx.get(live_server.base_url + "/openapi.json").json()
    top_k = page.locator("#top-k")
    assert float(top_k.get_attribute("max")) == ask_schema(spec)["properties"]["top_k"]["maximum"]
    page.select_option("#retrieval", "sparse")
    page.fill("#top-k", "2")
    ask(page, "Who is the mayor of Quenmoor?")
    assert page.locator("li.citation").count() == 2
    assert page.locator("li.citation[data-doc-id=quenmoor]").count() == 1


def ask_schema(spec: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = spec["paths"]["/v1/ask"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rpartition("/")[2]]
    return schema


def test_a_pasted_document_is_ingested_and_cited(page: Any, live_server: LiveServer) -> None:
    open_page(page)
    doc_id = f"web-{uuid.uuid4().hex[:8]}"
    fact = "The Quorrel windmill at Dunmere Cross was thatched in 1904 by the miller Odalys Fenwick."
    page.fill("#doc-id", doc_id)
    page.fill("#doc-title", "Quorrel windmill")
    page.fill("#doc-text", fact)
    page.click("#paste-button")  # no token yet: the server's JSON error, shown
    page.wait_for_selector("#manage-error:not([hidden])")
    assert "unauthorized" in page.text_content("#manage-error")

    page.fill("#token", live_server.admin_token)
    page.press("#token", "Enter")
    page.wait_for_selector("#versions tbody tr.serving")  # the admin panel loads with the token
    assert page.evaluate("sessionStorage.getItem('ragserve.token')") == live_server.admin_token
    assert page.evaluate("localStorage.length") == 0
    page.click("#paste-button")
    job = page.locator(f"li.job[data-state=done] >> text={doc_id}")
    job.wait_for(timeout=ANSWER_MS)
    assert "upserts" in job.text_content()
    answer = ask(page, "Who thatched the Quorrel windmill?", extractive=True)
    assert page.locator(f"li.citation[data-doc-id={doc_id}]").count() == 1
    assert "Fenwick" in answer


def test_uploaded_files_are_ingested_and_a_skipped_one_is_listed(page: Any, live_server: LiveServer) -> None:
    open_page(page)
    page.fill("#token", live_server.admin_token)
    page.press("#token", "Enter")
    name = f"web-upload-{uuid.uuid4().hex[:8]}"
    note = b"The Quillfen observatory on Mount Arvel was founded in 1887 by the astronomer Henrike Sollas."
    page.set_input_files(
        "#files",
        files=[
            {"name": f"{name}.txt", "mimeType": "text/plain", "buffer": note},
            {"name": f"{name}.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\n"},
        ],
    )
    page.click("#upload-button")
    page.wait_for_selector("#upload-result ul.skipped li")
    assert f"{name}.png" in page.text_content("#upload-result ul.skipped")
    assert "1 document(s) queued" in page.text_content("#upload-result")
    page.locator("li.job[data-state=done]", has_text="upload of 2 file(s)").wait_for(timeout=ANSWER_MS)
    ask(page, "Who founded the Quillfen observatory?", extractive=True)
    cited = page.eval_on_selector_all("li.citation", "items => items.map(i => i.dataset.docId)")
    assert any(doc_id.startswith(name) for doc_id in cited), cited


def test_a_refresh_and_a_rollback_from_the_index_panel(page: Any, live_server: LiveServer) -> None:
    # the shared server ends where it began: serving the version it served, its documents all there
    ingest_one(live_server, f"web-refresh-{uuid.uuid4().hex[:8]}")  # a delta to compact, whatever ran before
    open_page(page)
    page.fill("#token", live_server.admin_token)
    page.press("#token", "Enter")
    page.wait_for_selector("#versions tbody tr.serving")
    before = str(page.text_content("#versions tbody tr.serving td.id"))
    count = page.locator("#versions tbody tr").count()
    delta = page.locator("#index-summary dt", has_text="Delta").locator("xpath=following-sibling::dd[1]")
    assert re.fullmatch(r"[1-9]\d* chunks", str(delta.text_content())), delta.text_content()  # the new document
    page.click("#refresh-button")
    page.locator("li.job[data-state=done]", has_text="refresh").wait_for(timeout=ANSWER_MS)
    page.wait_for_function(f"document.querySelectorAll('#versions tbody tr').length > {count}")
    assert page.text_content("#versions tbody tr.serving td.id") != before
    page.click(f"button[aria-label='Roll back to version {before}']")
    page.wait_for_selector("#manage-note:not([hidden])")
    assert f"Serving {before}" in page.text_content("#manage-note")
    assert page.text_content("#versions tbody tr.serving td.id") == before
    assert before in page.text_content("#server-status")


def ingest_one(live_server: LiveServer, doc_id: str) -> None:
    auth = {"Authorization": f"Bearer {live_server.admin_token}"}
    with httpx.Client(base_url=live_server.base_url, headers=auth, timeout=30) as http:
        doc = {"id": doc_id, "title": "Refresh", "text": "The Ardent mill grinds rye on Tuesdays."}
        job_id = http.post("/v1/documents", json={"upsert": [doc]}).json()["job_id"]
        deadline = time.monotonic() + ANSWER_MS / 1000
        while http.get(f"/v1/jobs/{job_id}").json()["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline, "the ingestion job did not finish"
            time.sleep(0.05)


def test_the_api_docs_render_offline(page: Any) -> None:
    page.goto("/docs")
    page.locator(".swagger-ui .info .title", has_text="ragserve").wait_for()
    page.locator(".opblock-summary-path", has_text="/v1/ask").first.wait_for()
    with page.expect_event("requestfailed", lambda request: request.url in REDOC_LOGO) as logo:
        page.goto("/redoc")
        page.locator("h1", has_text="ragserve").first.wait_for()
    assert logo.value.failure in CSP_FAILURES  # stopped by the docs' policy before it was sent
    page.get_by_text("/v1/ask").first.wait_for(state="attached")


def test_the_page_fits_a_phone(page: Any) -> None:
    page.set_viewport_size({"width": 360, "height": 740})
    open_page(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    page.keyboard.press("Tab")  # the first stop is the skip link, which jumps to the question
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    page.keyboard.type("Where is the Zorblat festival held?")
    assert page.input_value("#question") == "Where is the Zorblat festival held?"
