"""The Python client (ragserve/client) and the CLI verbs built on it, against one real server
process (tests/live.py); only the retry sequences run against a stub transport, since a real
server does not refuse on cue."""

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.latency import free_port
from ragserve import AsyncClient, Client
from ragserve.client import (
    APIError,
    CitationsEvent,
    DoneEvent,
    IngestProgress,
    NetworkError,
    RequestTimeoutError,
    TokenEvent,
    error_response,
)
from ragserve.errors import (
    DeadlineExceededError,
    ForbiddenError,
    InvalidRequestError,
    OverloadedError,
    UnauthorizedError,
    UnknownJobError,
    UnknownReaderError,
    UnknownVersionError,
    error_classes,
)
from ragserve.types import Document
from service.http.errors import STATUS
from tests.live import LiveServer

ROOT = Path(__file__).resolve().parent.parent
FACTS = [
    Document("client-test-lighthouse", "Plovdak lighthouse", "The Plovdak lighthouse was painted teal by Anouk Seltz."),
    Document("client-test-orchard", "Wendle orchard", "The Wendle orchard grows quince trees planted by Bram Osei."),
]


@pytest.fixture()
def rag(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.base_url, token=live_server.admin_token) as client:
        yield client


def test_ask_and_retrieve_answer_from_the_index(rag: Client) -> None:
    answer = rag.ask("Who built the Harrow bridge?", top_k=2)
    assert answer.citations[0].doc_id == "bridge" and len(answer.citations) == 2
    assert answer.answer and answer.reader == "stuff" and answer.index_version
    assert answer.timings_ms["total"] > 0
    found = rag.retrieve("Velt cheese caves", top_k=3)
    assert found.passages[0].doc_id == "ferment" and len(found.passages) == 3
    sparse = rag.retrieve("Velt cheese caves", retrieval="sparse")  # BM25: only passages with the words
    assert [p.doc_id for p in sparse.passages] == ["ferment"]
    extractive = rag.ask("Who is the mayor of Quenmoor?", extractive=True)
    assert extractive.evidence is not None and extractive.evidence.doc_id == "quenmoor"
    cited = extractive.citations[0].text
    assert cited[extractive.evidence.start_char : extractive.evidence.end_char] == extractive.evidence.text


def test_ask_stream_yields_citations_tokens_then_the_answer(rag: Client) -> None:
    events = list(rag.ask_stream("Who built the Harrow bridge?"))
    first, tokens, last = events[0], events[1:-1], events[-1]
    assert isinstance(first, CitationsEvent) and first.citations[0].doc_id == "bridge"
    assert tokens and all(isinstance(t, TokenEvent) for t in tokens)
    assert isinstance(last, DoneEvent)
    assert "".join(t.text for t in tokens if isinstance(t, TokenEvent)) == last.answer.answer
    assert last.answer.citations == first.citations and last.answer.index_version == first.index_version
    with pytest.raises(UnknownReaderError):  # refused before the stream starts: a plain error
        list(rag.ask_stream("q", reader="no-such-reader"))


def test_ingest_waits_reports_progress_and_the_documents_answer(rag: Client) -> None:
    seen: list[IngestProgress] = []
    result = rag.ingest(FACTS, batch_size=1, progress=seen.append)
    assert len(result.job_ids) == 2 and [j.state for j in result.jobs] == ["done", "done"]
    assert result.counts.get("upserted", 0) + result.counts.get("unchanged", 0) == 2 and not result.errors
    assert seen[-1].documents_done == 2 and seen[-1].jobs_done == 2 and seen[-1].documents_failed == 0
    assert [p.documents_sent for p in seen if p.jobs_done == 0][:1] == [1]  # reported as it goes
    job = rag.job(result.job_ids[0])
    assert job.finished and job.kind == "documents" and job.upserts == 1
    assert rag.wait_job(result.job_ids[1], timeout=30).state == "done"
    answer = rag.ask("Who painted the Plovdak lighthouse?")
    assert answer.citations[0].doc_id == "client-test-lighthouse"
    pending = rag.ingest([{"id": "client-test-nowait", "text": "A note nobody waits for."}], wait=False)
    assert len(pending.job_ids) == 1 and pending.jobs == ()
    assert rag.wait_job(pending.job_ids[0], timeout=60).state == "done"


def test_index_administration_and_adapters(rag: Client) -> None:
    (index,) = rag.indexes()
    assert index.serving is not None and index.serving in {v.version for v in index.versions}
    assert any(r.this for r in index.replicas) and index.store == "sqlite"
    switched = rag.rollback(index.serving)  # to what serves: a switch that changes nothing
    assert switched.serving == index.serving and switched.index == index.name
    job = rag.refresh(version=index.serving, timeout=120)
    assert job.kind == "refresh" and job.state == "done" and job.index is not None
    assert job.index.serving == index.serving
    with pytest.raises(UnknownVersionError):
        rag.rollback("20200101T000000Z-00000000")
    adapters = rag.adapters()
    assert adapters.default is None  # RAGSERVE_ADAPTER=none (tests/live.py)
    assert all(a.source in ("bundled", "directory") for a in adapters.adapters)
    assert rag.ready().ready


def test_errors_are_the_domain_exceptions_the_server_raised(live_server: LiveServer, rag: Client) -> None:
    with pytest.raises(UnknownReaderError) as caught:
        rag.ask("Who built the Harrow bridge?", reader="no-such-reader")
    answered = error_response(caught.value)
    assert answered is not None and answered.status == 422 and answered.code == "unknown_reader"
    assert answered.url == live_server.base_url + "/v1/ask"
    with pytest.raises(InvalidRequestError):  # the schema's own 422 (top_k over its limit)
        rag.ask("q", top_k=10_000)
    with pytest.raises(UnknownJobError):
        rag.job("0" * 32)
    with Client(live_server.base_url, token=live_server.read_token) as reader:
        assert reader.ask("Who built the Harrow bridge?").citations  # a read token asks
        with pytest.raises(ForbiddenError):
            reader.indexes()
    with Client(live_server.base_url) as anonymous, pytest.raises(UnauthorizedError):
        anonymous.job("0" * 32)
    with Client(live_server.base_url, token="wrong") as wrong, pytest.raises(UnauthorizedError):
        wrong.adapters()


def test_every_error_code_has_one_class_and_a_status() -> None:
    codes = error_classes()
    assert codes["unknown_reader"] is UnknownReaderError and codes["invalid_request"] is InvalidRequestError
    assert all(any(c in STATUS for c in cls.__mro__) for cls in codes.values())


def stub(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[float]]:
    """A transport answering each request with the next of `answers` (raising the exceptions)."""
    queue, times = list(answers), []

    def handle(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), times


def refusal(status: int, code: str, retry_after: str | None) -> httpx.Response:
    headers = {"retry-after": retry_after} if retry_after else {}
    return httpx.Response(status, json={"error": {"code": code, "message": "busy"}}, headers=headers)


OK_JOB = {"job_id": "a" * 32, "kind": "documents", "state": "done", "upserts": 1, "deletes": 0}


def test_refusals_are_retried_no_sooner_than_retry_after() -> None:
    transport, times = stub(
        refusal(429, "overloaded", "1"), refusal(503, "not_ready", "1"), httpx.Response(200, json=OK_JOB)
    )
    with Client("http://stub", transport=transport) as client:
        assert client.job("a" * 32).state == "done"
    assert len(times) == 3 and times[1] - times[0] >= 1.0 and times[2] - times[1] >= 1.0
    transport, times = stub(refusal(429, "overloaded", "2"), refusal(429, "overloaded", "2"))
    with Client("http://stub", transport=transport, max_retries=1) as client, pytest.raises(OverloadedError) as exc:
        client.job("a" * 32)
    assert len(times) == 2 and exc.value.retry_after_s == 2  # the last refusal, raised as the server's error


def test_connection_failures_are_retried_only_where_it_is_safe() -> None:
    refused = httpx.ConnectError("refused")
    transport, times = stub(refused, refused, httpx.Response(200, json=OK_JOB))
    with Client("http://stub", transport=transport) as client:
        assert client.job("a" * 32).state == "done" and len(times) == 3
    transport, times = stub(httpx.ReadError("reset"), httpx.Response(200, json=OK_JOB))
    with Client("http://stub", transport=transport) as client, pytest.raises(NetworkError):
        client.ingest([FACTS[0]])  # a batch may have been queued: never sent twice
    assert len(times) == 1
    transport, _ = stub(httpx.Response(502, text="<html>bad gateway</html>"))
    with Client("http://stub", transport=transport) as client, pytest.raises(APIError) as err:
        client.job("a" * 32)
    assert err.value.status == 502 and err.value.code == "http_502"


def test_a_stream_that_fails_or_stops_mid_way_raises() -> None:
    citations = 'event: citations\ndata: {"citations": [], "index_version": "v"}\n\n: keep-alive\n\n'
    failed = 'event: error\ndata: {"error": {"code": "deadline_exceeded", "message": "too slow"}}\n\n'
    sse = {"content-type": "text/event-stream"}
    transport, _ = stub(httpx.Response(200, text=citations + failed, headers=sse))
    with Client("http://stub", transport=transport) as client, pytest.raises(DeadlineExceededError):
        list(client.ask_stream("q"))
    transport, _ = stub(httpx.Response(200, text=citations + 'event: token\ndata: {"text": "x"}\n\n', headers=sse))
    with Client("http://stub", transport=transport) as client, pytest.raises(NetworkError, match="before its 'done'"):
        list(client.ask_stream("q"))


def test_a_server_that_does_not_answer_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with Client(url, timeout=httpx.Timeout(0.3), max_retries=0) as client, pytest.raises(RequestTimeoutError):
            client.ask("anyone?")
    with Client(f"http://127.0.0.1:{free_port()}", max_retries=1) as closed, pytest.raises(NetworkError) as exc:
        closed.ready()
    assert "127.0.0.1" in str(exc.value)


def test_async_client(live_server: LiveServer) -> None:
    async def run() -> None:
        async with AsyncClient(live_server.base_url, token=live_server.admin_token) as rag:
            answer, found = await asyncio.gather(
                rag.ask("Who built the Harrow bridge?"), rag.retrieve("Quenmoor mayor", top_k=2)
            )
            assert answer.citations[0].doc_id == "bridge" and found.passages[0].doc_id == "quenmoor"
            events = [event async for event in rag.ask_stream("Who built the Harrow bridge?")]
            assert isinstance(events[0], CitationsEvent) and isinstance(events[-1], DoneEvent)
            doc = Document("client-test-async", "Async note", "The Tovrin kettle whistles in A minor.")
            result = await rag.ingest([doc])
            assert result.jobs[0].state == "done"
            assert (await rag.indexes())[0].serving and (await rag.adapters()).default is None
            with pytest.raises(UnknownReaderError):
                await rag.ask("q", reader="no-such-reader")

    asyncio.run(run())


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAGSERVE_TOKEN", None)
    env.pop("RAGSERVE_URL", None)
    cmd = [sys.executable, "-m", "service.cli", "--log-level", "warning", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_cli_ask_prints_the_answer_citations_and_version(live_server: LiveServer) -> None:
    done = cli("ask", "Who built the Harrow bridge?", "--url", live_server.base_url, "--stream", "--top-k", "2")
    assert done.returncode == 0, done.stderr
    assert "[1] bridge: Harrow bridge (score " in done.stdout and "[2] " in done.stdout
    assert "index version " in done.stdout
    as_json = cli("ask", "Who is the mayor of Quenmoor?", "--url", live_server.base_url, "--json")
    assert json.loads(as_json.stdout)["citations"][0]["doc_id"] == "quenmoor"
    lines = cli("ask", "Who is the mayor of Quenmoor?", "--url", live_server.base_url, "--json", "--stream")
    events = [json.loads(line)["event"] for line in lines.stdout.splitlines()]
    assert events[0] == "citations" and events[-1] == "done" and "token" in events


def test_cli_ingest_sends_files_as_jobs(live_server: LiveServer, tmp_path: Path) -> None:
    corpus = tmp_path / "notes.jsonl"
    corpus.write_text(json.dumps({"id": "client-test-cli", "text": "The Gorsby tram leaves the depot at dawn."}) + "\n")
    done = cli(
        "ingest", str(corpus), "--url", live_server.base_url, "--token", live_server.admin_token, "--no-progress"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["jobs"] == 1 and report["failed_documents"] == 0
    refused = cli("ingest", str(corpus), "--url", live_server.base_url, "--token", live_server.read_token)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{live_server.base_url}/v1/documents answered HTTP 403" in refused.stderr and "--token" in refused.stderr


def test_cli_network_errors_are_one_line_without_a_traceback(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    corpus = tmp_path / "a.txt"
    corpus.write_text("Some text.")
    for args in (["ask", "anyone?", "--url", url], ["ingest", str(corpus), "--url", url, "--no-progress"]):
        done = cli(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert f"cannot reach a ragserve server at {url}" in line and "--url" in line


@pytest.fixture
def resetting_server() -> Iterator[str]:
    """A listener that reads each request and resets the connection (SO_LINGER 0) instead of answering."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    listener.close()


def test_cli_a_connection_reset_is_one_line_without_a_traceback(resetting_server: str, tmp_path: Path) -> None:
    corpus = tmp_path / "a.txt"
    corpus.write_text("Some text.")
    for args in (["ask", "anyone?"], ["ingest", str(corpus), "--no-progress"]):
        done = cli(*args, "--url", resetting_server)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert resetting_server in line, line
