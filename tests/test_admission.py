"""Admission control: a bounded number of requests in service and queued, 429/503 beyond with a
JSON body and Retry-After, deadlines that end in 504, and dropped work for cancelled requests."""

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from ragserve import cancel
from ragserve.errors import ClientGoneError, DeadlineExceededError, OverloadedError
from reader.continuous import ContinuousDecoder
from reader.generator import Generator
from retriever.encoder import Encoder
from service.application.loading import load_services
from service.http.admission import Gate
from service.http.app import create_app
from service.settings import Settings
from tests.conftest import local_client, wait_ready


def test_the_gate_serves_in_order_and_refuses_beyond_its_queue() -> None:
    async def scenario() -> list[str]:
        gate, log = Gate("/x", limit=1, queue=2), []

        async def request(name: str, hold_s: float) -> None:
            try:
                await gate.enter(timeout_s=1.0)
            except OverloadedError:
                log.append(f"{name}:429")
                return
            log.append(f"{name}:in")
            await asyncio.sleep(hold_s)
            gate.leave()

        await asyncio.gather(*(request(n, 0.05) for n in "abcd"))
        assert gate.in_service == 0 and not gate.waiting
        return log

    assert asyncio.run(scenario()) == ["a:in", "d:429", "b:in", "c:in"]


def test_a_request_queued_past_its_timeout_leaves_the_queue() -> None:
    async def scenario() -> None:
        gate = Gate("/x", limit=1, queue=4)
        await gate.enter(1.0)
        with pytest.raises(TimeoutError):
            await gate.enter(0.01)
        assert not gate.waiting
        gate.leave()
        assert gate.in_service == 0

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def tight(settings: Settings, encoder: Encoder, generator: Generator) -> Iterator[TestClient]:
    """One /v1/ask in service, one queued."""
    strict = settings.model_copy(update={"ask_max_in_service": 1, "ask_max_queue": 1, "max_new_tokens": 24})
    with local_client(create_app(strict, loader=lambda s: load_services(s, encoder=encoder, generator=generator))) as c:
        wait_ready(c)
        yield c


def test_beyond_the_queue_requests_get_429_at_once_with_retry_after(tight: TestClient) -> None:
    def ask(_: int) -> tuple[int, float, dict[str, str], dict[str, object]]:
        started = time.perf_counter()
        r = tight.post("/v1/ask", json={"question": "Who built the Harrow bridge?", "reader": "rag-token"})
        return r.status_code, time.perf_counter() - started, dict(r.headers), r.json()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    statuses = sorted(status for status, *_ in results)
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1 and set(statuses) <= {200, 429}, statuses
    for status, _, headers, body in results:
        if status == 429:
            assert int(headers["retry-after"]) >= 1
            assert body["error"]["code"] == "overloaded"  # type: ignore[index]
            assert "ask_max_queue" in body["error"]["message"] or "max_queue" in body["error"]["message"]  # type: ignore[index]
    metrics = tight.get("/metrics").text
    assert 'ragserve_rejections_total{endpoint="/v1/ask",reason="queue_full"}' in metrics
    assert 'ragserve_queue_depth{endpoint="/v1/ask"} 0.0' in metrics


def test_health_answers_while_the_model_routes_are_saturated(tight: TestClient) -> None:
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            tight.post("/v1/ask", json={"question": "Who is the mayor of Quenmoor?"})

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        worst = 0.0
        for _ in range(20):
            started = time.perf_counter()
            assert tight.get("/healthz").status_code == 200
            worst = max(worst, time.perf_counter() - started)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert worst < 1.0, worst  # it never waits behind a decoding request (that takes longer)


def test_a_passed_deadline_is_a_504_and_the_server_goes_on(
    settings: Settings, encoder: Encoder, generator: Generator
) -> None:
    hurried = settings.model_copy(update={"request_deadline_s": 0.02, "max_new_tokens": 64})
    with local_client(
        create_app(hurried, loader=lambda s: load_services(s, encoder=encoder, generator=generator))
    ) as c:
        wait_ready(c)
        response = c.post("/v1/ask", json={"question": "Describe Quenmoor in detail.", "reader": "rag-sequence"})
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "deadline_exceeded"
        assert "ragserve_deadline_expired_total" in c.get("/metrics").text
        assert c.get("/readyz").status_code == 200


def test_while_loading_model_routes_answer_503_with_retry_after(settings: Settings) -> None:
    release = threading.Event()

    def slow_loader(_: Settings) -> object:
        release.wait(30)
        raise RuntimeError("never mind")

    with local_client(create_app(settings, loader=slow_loader)) as c:  # type: ignore[arg-type]
        try:
            for path in ("/v1/ask", "/v1/retrieve"):
                response = c.post(path, json={"question": "x", "query": "x"})
                assert response.status_code == 503 and response.headers["retry-after"]
                assert response.json()["error"]["code"] == "not_ready"
            assert c.get("/readyz").json()["status"] == "loading"
        finally:
            release.set()


def test_the_answer_decoder_drops_cancelled_requests_and_keeps_the_others(generator: Generator) -> None:
    decoder = ContinuousDecoder(generator, max_batch=4)
    prompt = generator.text.encode("Count from one to one hundred: one, two, three,")
    try:
        alone = decoder.greedy(prompt, 12)
        before = cancel.Cancellation()
        before.cancel(cancel.DISCONNECTED)
        with cancel.current_request(before), pytest.raises(ClientGoneError):
            decoder.greedy(prompt, 12)  # dropped before its prefill

        # The long answer is 17 tokens: it is cancelled from its own 4th token on (a deadline passing
        # mid-answer), after the neighbour has queued at its 2nd, so the two share the batch then.
        running = cancel.Cancellation()
        outcome: dict[str, object] = {}
        neighbour: list[int] = []
        helper = threading.Thread(target=lambda: neighbour.extend(decoder.greedy(prompt, 12)))
        seen = 0

        def on_token(_: int) -> None:  # on the decoder's thread, between two steps
            nonlocal seen
            seen += 1
            if seen == 2:
                helper.start()
                while decoder._queue.qsize() == 0:  # queued: it is prefilled and merged before the next step
                    time.sleep(0.001)
            elif seen == 4:
                running.cancel(cancel.DEADLINE)

        def long_answer() -> None:
            with cancel.current_request(running):
                try:
                    outcome["tokens"] = decoder.greedy(prompt, 400, on_token=on_token)
                except DeadlineExceededError as exc:
                    outcome["error"] = exc

        worker = threading.Thread(target=long_answer)
        worker.start()
        worker.join(timeout=30)
        helper.join(timeout=30)
        assert not worker.is_alive() and isinstance(outcome.get("error"), DeadlineExceededError), outcome
        assert seen == 4  # it left the batch at the step after its cancellation
        assert neighbour == alone
        assert decoder.greedy(prompt, 12) == alone  # the decoder goes on
    finally:
        decoder.close()


def test_a_gate_resized_while_requests_wait_admits_or_drains_to_the_new_limit() -> None:
    import asyncio

    from service.http.admission import Gate

    async def scenario() -> None:
        gate = Gate("/v1/retrieve", limit=1, queue=8)
        await gate.enter(1.0)
        waiters = [asyncio.ensure_future(gate.enter(5.0)) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert (gate.in_service, len(gate.waiting)) == (1, 3)
        gate.resize(3)  # two of the waiting requests get in at once
        await asyncio.sleep(0.01)
        assert (gate.in_service, len(gate.waiting), sum(w.done() for w in waiters)) == (3, 1, 2)
        gate.resize(1)  # lowered: applies as requests leave, the waiting one waits for it
        gate.leave()
        gate.leave()
        await asyncio.sleep(0.01)
        assert (gate.in_service, len(gate.waiting)) == (1, 1)
        gate.leave()  # now at the limit: the place is handed over
        await asyncio.sleep(0.01)
        assert (gate.in_service, len(gate.waiting)) == (1, 0) and all(w.done() for w in waiters)

    asyncio.run(scenario())
