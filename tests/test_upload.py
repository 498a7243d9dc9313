"""POST /v1/documents/files: uploaded files through the corpus readers into an ingestion job.

An app of this module's own (its own registry, small limits) on the session's models; and curl
against the session's real server (tests/live.py), with its admin and read tokens."""

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from reader.generator import Generator
from retriever.encoder import Encoder
from service.application.loading import load_services
from service.http.app import create_app
from service.settings import Settings
from tests.conftest import local_client, wait_job, wait_ready
from tests.live import LiveServer
from tests.test_formats import ARTICLE, BOILERPLATE, PAGES, make_docx, make_html, make_pdf

LIMITS = {"max_upload_files": 5, "max_upload_bytes": 200_000, "max_document_chars": 5_000, "max_batch_documents": 8}
FAQ = "Ref,Question,Answer\nk-up-1,Where are the keys?,In the blue box by the door.\nk-up-2,Opening hours?,\n"
Files = list[tuple[str, tuple[str, bytes, str]]]


@pytest.fixture(scope="module")
def upload_client(
    tmp_path_factory: pytest.TempPathFactory, tiny_index: Path, cache_home: Path, encoder: Encoder, generator: Generator
) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("upload")
    settings = Settings(
        home=cache_home,
        index_path=tiny_index,
        registry_dir=folder / "registry",
        adapters_dir=folder / "adapters",
        adapter="none",
        **LIMITS,
    )
    app = create_app(settings, loader=lambda s: load_services(s, encoder=encoder, generator=generator))
    with local_client(app) as client:
        wait_ready(client)
        yield client


def part(name: str, data: bytes | str, kind: str = "application/octet-stream") -> tuple[str, tuple[str, bytes, str]]:
    return ("files", (name, data.encode() if isinstance(data, str) else data, kind))


def upload(client: TestClient, files: Files, form: dict[str, str] | None = None) -> Any:
    return client.post("/v1/documents/files", files=files, data=form or {})


def top(client: TestClient, query: str) -> dict[str, Any]:
    passages = client.post("/v1/retrieve", json={"query": query, "top_k": 1}).json()["passages"]
    result: dict[str, Any] = passages[0]
    return result


def test_uploaded_files_become_a_job_and_their_passages_keep_pages(upload_client: TestClient, tmp_path: Path) -> None:
    make_docx(tmp_path / "cellar.docx", core_title="Brisket cellar")
    files = [
        part("upload-ferry.pdf", make_pdf(PAGES, title="Harbour notes"), "application/pdf"),
        part("upload-reservoir.html", make_html(ARTICLE), "text/html"),
        part("upload-cellar.docx", (tmp_path / "cellar.docx").read_bytes()),
        part("upload-faq.csv", FAQ, "text/csv"),
        part("upload-photo.png", b"\x89PNG\r\n\x1a\n", "image/png"),
    ]
    mapping = {"csv_id_column": "Ref", "csv_title_column": "Question", "csv_text_column": "Answer"}
    response = upload(upload_client, files, mapping)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["documents"] == 4
    assert body["skipped"] == [
        {"file": "upload-faq.csv", "reason": "row 2: no text in column 'Answer'"},
        {"file": "upload-photo.png", "reason": "unsupported file type .png"},
    ]
    job = wait_job(upload_client, body["job_id"])
    assert job["state"] == "done" and job["counts"]["upserted"] == 4 and job["errors"] == {}

    ferry = top(upload_client, "Which ferry goes to Isle Brack, and how many bicycles does it carry?")
    assert ferry["doc_id"] == "upload-ferry.pdf" and ferry["title"] == "Harbour notes"
    assert "Tamsin ferry" in ferry["text"] and ferry["metadata"]["pages"][1] == 3
    assert ferry["metadata"]["page"] == ferry["metadata"]["pages"][0] == 3 - ferry["text"].count("\f")
    reservoir = top(upload_client, "Why was the Wexley reservoir drained?")
    assert reservoir["doc_id"] == "upload-reservoir.html"
    assert not any(noise in reservoir["text"] for noise in BOILERPLATE)
    assert top(upload_client, "How many casks of pear cider are in the cellar?")["doc_id"] == "upload-cellar.docx"
    keys = top(upload_client, "Where are the keys kept?")
    assert keys["doc_id"] == "k-up-1" and keys["metadata"] == {"source": "upload-faq.csv", "row": 1}


def test_documents_over_a_limit_are_skipped_and_names_cannot_climb(upload_client: TestClient) -> None:
    files = [
        part("../../etc/upload-notes.txt", "The upload notes say the boiler is serviced in May."),
        part("upload-long.txt", "word " * 1_500),  # 7,500 characters: over max_document_chars
    ]
    response = upload(upload_client, files)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["documents"] == 1
    (skipped,) = body["skipped"]
    assert skipped["file"] == "upload-long.txt" and "5000 characters" in skipped["reason"]
    assert wait_job(upload_client, body["job_id"])["state"] == "done"
    assert top(upload_client, "When is the boiler serviced?")["doc_id"] == "etc/upload-notes.txt"


def error_of(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"}
    message: str = error["message"]
    return message


def test_bad_uploads_are_refused_with_a_json_error(upload_client: TestClient) -> None:
    post = upload_client.post
    assert "files" in error_of(post("/v1/documents/files", data={"csv_text_column": "x"}), 422)  # no files
    assert "files" in error_of(post("/v1/documents/files", json={"upsert": []}), 422)  # not multipart
    six = [part(f"upload-{i}.txt", f"Note {i}.") for i in range(6)]
    assert "5" in error_of(upload(upload_client, six), 422)  # max_upload_files
    unreadable = [part("upload-broken.pdf", b"%PDF-1.4 nothing"), part("upload-empty.txt", b"")]
    message = error_of(upload(upload_client, unreadable), 422)
    assert "nothing to ingest" in message and "upload-broken.pdf" in message and "an empty file" in message
    twice = [part("upload-same.txt", "One."), part("upload-same.txt", "Two.")]
    assert "duplicate document id" in error_of(upload(upload_client, twice), 422)
    assert "needs a file name" in error_of(upload(upload_client, [part("..", "Nameless.")]), 422)
    bad_jsonl = [part("upload-bad.jsonl", '{"id": "x", "text": "fine"}\n{oops\n')]
    assert "upload-bad.jsonl:2: invalid JSON" in error_of(upload(upload_client, bad_jsonl), 422)
    big = [part("upload-big.txt", "x" * 250_000)]
    assert error_of(upload(upload_client, big), 413)  # max_upload_bytes
    rows = [part("upload-rows.csv", "text\n" + "".join(f"Row {i}.\n" for i in range(9)))]
    assert "max_batch_documents" in error_of(upload(upload_client, rows), 422)
    no_text_column = [part("upload-faq.csv", FAQ)]
    assert "--csv-text-column" in error_of(upload(upload_client, no_text_column), 422)


def curl(server: LiveServer, files: dict[str, Path], token: str | None) -> tuple[int, dict[str, Any]]:
    args = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", f"{server.base_url}/v1/documents/files"]
    for name, path in files.items():
        args += ["-F", f"files=@{path};filename={name}"]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


def test_curl_uploads_with_an_admin_token_only(live_server: LiveServer, tmp_path: Path) -> None:
    pdf = tmp_path / "guide.pdf"
    pdf.write_bytes(make_pdf(PAGES))
    files = {"upload-live-guide.pdf": pdf}
    assert curl(live_server, files, None)[0] == 401
    status, body = curl(live_server, files, live_server.read_token)
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = curl(live_server, files, live_server.admin_token)
    assert status == 202 and body["documents"] == 1 and body["skipped"] == []
    auth = {"Authorization": f"Bearer {live_server.admin_token}"}
    with httpx.Client(base_url=live_server.base_url, headers=auth, timeout=60) as client:
        for _ in range(600):
            job = client.get(f"/v1/jobs/{body['job_id']}").json()
            if job["state"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert job["state"] == "done"
        query = {"query": "Which ferry goes to Isle Brack?", "top_k": 5}  # the shared server holds other tests' too
        found = client.post("/v1/retrieve", json=query).json()["passages"]
    hit = next(p for p in found if p["doc_id"] == "upload-live-guide.pdf")
    assert hit["metadata"]["pages"][1] == 3


def test_ragserve_ingest_reads_the_formats_and_reports_skips(
    live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    folder = tmp_path / "ingest-live"
    folder.mkdir()
    (folder / "ingest-live-ferry.pdf").write_bytes(make_pdf(PAGES))
    (folder / "faq.csv").write_text(FAQ.replace("k-up-", "k-live-"), "utf-8")
    (folder / "photo.png").write_bytes(b"\x89PNG")
    args = ["ingest", str(folder), "--url", live_server.base_url, "--token", live_server.admin_token]
    assert main([*args, "--csv-text-column", "Answer", "--csv-id-column", "Ref", "--no-progress"]) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out.strip().splitlines()[-1])
    assert report["counts"]["upserted"] == 2 and report["failed_documents"] == 0 and report["skipped"] == 2
    assert f"skipped {folder / 'photo.png'}: unsupported file type .png" in printed.err
