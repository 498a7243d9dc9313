"""The OpenAI-compatible API, tested with the official `openai` package itself against a real
server process: models, answers plain and streamed, citations, usage, errors, chat history."""

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.live import LiveServer

MAYOR = [{"role": "user", "content": "Who is the mayor of Quenmoor?"}]


@pytest.fixture(scope="module")
def oa(live_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key=live_server.read_token, max_retries=0) as client:
        yield client


def test_models_are_the_readers_and_their_adapters(oa: openai.OpenAI) -> None:
    ids = [model.id for model in oa.models.list()]
    assert ids[0] == "ragserve"
    assert {"stuff", "rag-token", "rag-sequence"} <= set(ids)


def test_a_chat_completion_answers_from_the_documents_with_numbered_sources(oa: openai.OpenAI) -> None:
    completion = oa.chat.completions.create(model="ragserve", messages=MAYOR)  # type: ignore[arg-type]
    message = completion.choices[0].message
    assert message.role == "assistant" and completion.choices[0].finish_reason == "stop"
    assert message.content is not None and message.content.startswith("Ilse Varga")
    assert "\n\nSources:\n[1] Quenmoor (quenmoor)" in message.content
    extra = completion.model_extra or {}
    assert extra["citations"][0]["doc_id"] == "quenmoor"
    assert extra["ragserve"]["answer"] == "Ilse Varga" and extra["ragserve"]["reader"] == "stuff"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.id.startswith("chatcmpl-") and completion.model == "ragserve"


def test_a_streamed_chat_completion_is_the_same_answer_in_pieces(oa: openai.OpenAI) -> None:
    whole = oa.chat.completions.create(model="stuff", messages=MAYOR)  # type: ignore[arg-type]
    stream = oa.chat.completions.create(
        model="stuff",
        messages=MAYOR,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 2 and "".join(pieces) == whole.choices[0].message.content
    ends = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(ends) == 1 and ends[0].choices[0].finish_reason == "stop"
    assert (ends[0].model_extra or {})["citations"][0]["doc_id"] == "quenmoor"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == (whole.usage.completion_tokens if whole.usage else None)


def test_the_extension_options_and_the_cited_passage_number(oa: openai.OpenAI) -> None:
    completion = oa.chat.completions.create(
        model="stuff",
        messages=[{"role": "user", "content": "How many people live in Quenmoor?"}],
        extra_body={"ragserve": {"extractive": True, "top_k": 2, "retrieval": "hybrid"}},
    )
    content = completion.choices[0].message.content or ""
    answer = (completion.model_extra or {})["ragserve"]["answer"]
    assert answer in "Quenmoor is a small river town with 4,200 inhabitants."  # copied from passage [1]
    assert content.startswith(f"{answer} [1]\n\nSources:\n[1] Quenmoor (quenmoor)\n[2] ")
    assert len((completion.model_extra or {})["citations"]) == 2


def test_earlier_user_turns_inform_retrieval(oa: openai.OpenAI) -> None:
    history = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Tell me about the Harrow bridge over the river Tessel."},
        {"role": "assistant", "content": "It is a granite bridge."},
        {"role": "user", "content": "Who was its engineer?"},
    ]
    completion = oa.chat.completions.create(model="ragserve", messages=history)  # type: ignore[arg-type]
    assert (completion.model_extra or {})["citations"][0]["doc_id"] == "bridge"


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"model": "no-such-reader"}, "unknown model"),
        ({"model": "stuff+no-such-adapter"}, "unknown adapter"),
        ({"n": 2}, "n"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "last message"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "text"),
        ({"extra_body": {"ragserve": {"top_k": 10_000}}}, "top_k"),
    ],
)
def test_bad_requests_are_clear_4xx_errors(oa: openai.OpenAI, kwargs: dict[str, object], says: str) -> None:
    args: dict[str, object] = {"model": "ragserve", "messages": MAYOR, **kwargs}
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        oa.chat.completions.create(**args)  # type: ignore[call-overload]
    assert says in str(caught.value)


def test_chat_completions_wait_in_the_ask_gate(live_server: LiveServer) -> None:
    metrics = httpx.get(f"{live_server.base_url}/metrics").text
    assert 'ragserve_in_service{endpoint="/v1/ask"}' in metrics
    assert "/v1/chat/completions" not in [
        ln.split('"')[1] for ln in metrics.splitlines() if "ragserve_in_service{" in ln
    ]
