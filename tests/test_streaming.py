"""Streamed answers (`POST /v1/ask` with `"stream": true`): server-sent events in order, the same
answer as the plain call, errors as events, keep-alive comments, and a client that leaves."""

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from ragserve.cancel import Cancellation
from ragserve.errors import DeadlineExceededError
from ragserve.types import Passage, SearchResult
from service.application.engine import AskListener, AskResult
from service.http.streams import KEEPALIVE, Failed, Finished, Retrieved, Text, ask_events, follow
from tests.live import LiveServer

QUESTION = "Who is the mayor of Quenmoor?"


def parse_sse(lines: Iterator[str]) -> list[tuple[str, Any]]:
    """(event, data) pairs of an event stream; comments as ("comment", text)."""
    events: list[tuple[str, Any]] = []
    event, data = "message", []
    for line in lines:
        if line.startswith(":"):
            events.append(("comment", line[1:].strip()))
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            events.append((event, json.loads("\n".join(data))))
            event, data = "message", []
    return events


def streamed(client: TestClient, body: dict[str, Any]) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    with client.stream("POST", "/v1/ask", json={**body, "stream": True}) as response:
        if response.status_code != 200:
            response.read()
            return response, []
        return response, parse_sse(response.iter_lines())


def test_a_streamed_answer_is_citations_then_tokens_then_the_plain_answer(client: TestClient) -> None:
    response, events = streamed(client, {"question": QUESTION})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    kinds = [kind for kind, _ in events if kind != "comment"]
    assert kinds[0] == "citations" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"token"} and len(kinds) > 3, kinds  # the answer came in pieces
    citations, done = events[0][1], events[-1][1]
    assert citations["citations"][0]["doc_id"] == "quenmoor"
    tokens = "".join(data["text"] for kind, data in events if kind == "token")
    assert tokens == done["answer"] and "Ilse Varga" in done["answer"]
    plain = client.post("/v1/ask", json={"question": QUESTION}).json()
    assert done["answer"] == plain["answer"]
    assert [c["chunk_id"] for c in done["citations"]] == [c["chunk_id"] for c in plain["citations"]]
    assert done["index_version"] == citations["index_version"] == plain["index_version"]


def test_readers_that_choose_among_candidates_send_their_answer_as_one_piece(client: TestClient) -> None:
    _, events = streamed(
        client, {"question": "When was the Harrow bridge built?", "top_k": 3, "reader": "rag-sequence"}
    )
    tokens = [data["text"] for kind, data in events if kind == "token"]
    assert tokens == [events[-1][1]["answer"]] and events[-1][0] == "done"


def test_an_extractive_stream_ends_with_its_evidence(client: TestClient) -> None:
    _, events = streamed(client, {"question": "How many people live in Quenmoor?", "extractive": True})
    done = events[-1][1]
    assert events[-1][0] == "done" and done["evidence"]["text"] == done["answer"] == "4,200"
    assert any(kind == "token" for kind, _ in events)


@pytest.mark.parametrize(
    ("body", "status"),
    [({"reader": "nope"}, 422), ({"extractive": True, "reader": "rag-token"}, 422), ({"top_k": 0}, 422)],
)
def test_a_bad_streamed_request_is_a_plain_json_error(client: TestClient, body: dict[str, Any], status: int) -> None:
    response, events = streamed(client, {"question": QUESTION, **body})
    assert response.status_code == status and events == []
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"]


def result(answer: str) -> AskResult:
    return AskResult(answer, [], "stuff", "v1", {})


def collect(work: Any, keepalive_s: float = 5.0, cancellation: Cancellation | None = None) -> list[bytes]:
    async def run() -> list[bytes]:
        return [chunk async for chunk in ask_events(follow(work, keepalive_s, cancellation), lambda _: None)]

    return asyncio.run(run())


def test_a_failure_mid_way_is_an_error_event_with_the_json_error_body() -> None:
    def work(listener: AskListener) -> AskResult:
        listener.retrieved(SearchResult([Passage("c", "d", "t", "text", 0.5)], "v1", {}))
        listener.text("Tomas")
        raise DeadlineExceededError("the request's deadline passed")

    chunks = collect(work)
    events = parse_sse(iter(b"".join(chunks).decode().split("\n")))
    assert [kind for kind, _ in events] == ["citations", "token", "error"]
    assert events[-1][1] == {"error": {"code": "deadline_exceeded", "message": "the request's deadline passed"}}


def test_an_idle_stream_sends_keep_alive_comments() -> None:
    def work(listener: AskListener) -> AskResult:
        time.sleep(0.35)
        listener.text("late")
        return result("late")

    chunks = collect(work, keepalive_s=0.1)
    assert chunks.count(KEEPALIVE) >= 2
    assert chunks[-1].startswith(b"event: done")


def test_a_stream_closed_early_cancels_its_work() -> None:
    cancellation = Cancellation()
    release = threading.Event()

    def work(listener: AskListener) -> AskResult:
        listener.text("first")
        release.wait(5)
        return result("first")

    async def run() -> None:
        events = follow(work, 5.0, cancellation)
        first = await anext(events)
        assert isinstance(first, Text)
        await events.aclose()  # what Starlette does when the client is gone

    asyncio.run(run())
    release.set()
    assert cancellation.cancelled and cancellation.reason == "client_disconnected"


def test_events_come_in_the_order_they_happened() -> None:
    def work(listener: AskListener) -> AskResult:
        for piece in ("a", "b", "c"):
            listener.text(piece)
        return result("abc")

    async def run() -> list[Any]:
        return [event async for event in follow(work, 5.0, None)]

    events = asyncio.run(run())
    assert [e.piece for e in events if isinstance(e, Text)] == ["a", "b", "c"]
    assert isinstance(events[-1], Finished) and not any(isinstance(e, Retrieved | Failed) for e in events)


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith(name))
    return float(line.rsplit(" ", 1)[1])


def test_streams_and_plain_requests_share_the_batches_and_a_client_that_leaves_is_dropped(
    live_server: LiveServer,
) -> None:
    base = live_server.base_url
    solo = httpx.post(f"{base}/v1/ask", json={"question": QUESTION}, timeout=60).json()["answer"]
    answers: list[str] = []

    def plain() -> None:
        answers.append(httpx.post(f"{base}/v1/ask", json={"question": QUESTION}, timeout=60).json()["answer"])

    def stream() -> None:
        with httpx.stream("POST", f"{base}/v1/ask", json={"question": QUESTION, "stream": True}, timeout=60) as r:
            answers.append(parse_sse(r.iter_lines())[-1][1]["answer"])

    threads = [threading.Thread(target=f) for f in (plain, stream) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [solo] * 6  # batched together, every answer is the one it gets alone

    gone = 'ragserve_client_disconnects_total{endpoint="/v1/ask"}'
    before = metric(base, gone)
    long_question = "Describe everything about the Harrow bridge, its engineer, its granite and its river, at length."
    with httpx.stream("POST", f"{base}/v1/ask", json={"question": long_question, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("event: token"):
                break  # leave mid-answer
    deadline = time.monotonic() + 10
    while metric(base, gone) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(base, gone) == before + 1
    assert httpx.post(f"{base}/v1/ask", json={"question": QUESTION}, timeout=60).json()["answer"] == solo
