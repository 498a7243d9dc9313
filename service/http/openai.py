"""The OpenAI-compatible API: POST /v1/chat/completions (plain and streamed) and GET /v1/models,
so OpenAI's clients (the `openai` package, LangChain's and LlamaIndex's OpenAI connectors, Open
WebUI's OpenAI connection) work with `base_url` pointed at ragserve.

- The question is the last message, which must be the user's. With `chat_history_turns` > 0 the
  user's earlier messages (up to that many, latest first) are searched for together with it, so
  a follow-up finds the passages of the conversation; the reader sees the last message alone.
  System and assistant messages are not used: the reader has its own prompt.
- `model` picks the reader and adapter: `ragserve` (the server's defaults), a reader's name, or
  `reader+adapter` (`+none`: the base model), as GET /v1/models lists them.
- The answer's text ends with its sources, numbered ([1] title (document id, page)), with the
  cited passage's number after the answer when the reader says which one it used (an
  extractive answer's evidence, the RAG readers' heaviest passage); `chat_sources_in_text` off
  leaves the answer alone. The passages themselves ride along as `citations` (extension).
- `usage` counts generator tokens: the prompt is the question and the cited passages' texts, the
  completion is the answer.
"""

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, cast

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ragserve.errors import InvalidInputError, UnknownReaderError
from service.application.engine import AskListener, AskResult, QAEngine
from service.http.openai_schemas import (
    ChatChoice,
    ChatCompletion,
    ChatMessageOut,
    ChatRequestBase,
    ModelCard,
    ModelList,
    TextPart,
    Usage,
    chat_request_model,
)
from service.http.schemas import AskResponse
from service.http.state import CancellationDep, EngineDep, ServiceState, StateDep
from service.http.streams import (
    KEEPALIVE,
    SSE_HEADERS,
    SSE_MEDIA_TYPE,
    Event,
    Failed,
    Finished,
    Text,
    error_data,
    follow,
)
from service.settings import Settings

DEFAULTS = "ragserve"  # the model id of the server's default reader and adapter
STARTED = int(time.time())


def model_ids(engine: QAEngine) -> dict[str, str]:
    """Model id -> what it is, for every reader and reader+adapter this server runs."""
    ids = {DEFAULTS: f"the server's defaults (reader {engine.default_reader!r})"}
    adapters = engine.adapters.names() if engine.adapters is not None else []
    for name, reader in sorted(engine.readers.items()):
        ids[name] = f"reader {name!r}" + (" with the default adapter" if reader.adapts and adapters else "")
        for adapter in adapters if reader.adapts else []:
            ids[f"{name}+{adapter}"] = f"reader {name!r} with adapter {adapter!r}"
    return ids


def read_plan(model: str, engine: QAEngine) -> tuple[str | None, str | None]:
    """(reader, adapter) of a model id; None: the server's default."""
    if model == DEFAULTS:
        return None, None
    reader, _, adapter = model.partition("+")
    if reader not in engine.readers or (adapter == "" and "+" in model):
        known = ", ".join(model_ids(engine))
        raise UnknownReaderError(f"unknown model {model!r}; this server runs: {known} (GET /v1/models)")
    return reader, adapter or None


def content_text(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(part.text for part in content)


def question_and_query(messages: list[Any], settings: Settings) -> tuple[str, str]:
    """The question (the last message) and what is searched for (with earlier user turns)."""
    if messages[-1].role != "user":
        raise InvalidInputError("the last message must be the user's question (role 'user')")
    question = content_text(messages[-1].content).strip()
    if not question or len(question) > settings.max_question_chars:
        raise InvalidInputError(
            f"the question must have 1 to {settings.max_question_chars} characters (max_question_chars)"
        )
    earlier = [content_text(m.content).strip() for m in messages[:-1] if m.role == "user"]
    turns = [t for t in earlier if t][-settings.chat_history_turns :] if settings.chat_history_turns else []
    query = "\n".join([*turns, question])[-settings.max_question_chars :]  # the latest turns, if too long
    return question, query


def cited_number(result: AskResult) -> int | None:
    """The number (from 1) of the passage the answer says it came from, when the reader says."""
    if result.evidence is not None:
        return result.evidence.passage + 1
    weights = [w for w in result.weights if w is not None]
    if weights and len(weights) == len(result.weights):
        return max(range(len(weights)), key=weights.__getitem__) + 1
    return None


def sources_text(result: AskResult) -> str:
    """What follows the answer in the message: its passage's number, then the numbered sources."""
    number = cited_number(result)
    lines = []
    for i, passage in enumerate(result.passages, 1):
        page = passage.metadata.get("page")
        where = f"{passage.doc_id}, p. {page}" if page is not None else passage.doc_id
        lines.append(f"[{i}] {passage.title} ({where})")
    mark = f" [{number}]" if number is not None else ""
    return f"{mark}\n\nSources:\n" + "\n".join(lines) if lines else mark


def usage(result: AskResult, question: str, engine: QAEngine) -> Usage:
    prompt = engine.count_tokens("\n".join([question, *(p.text for p in result.passages)]))
    completion = engine.count_tokens(result.answer) if result.answer else 0
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def data(body: object) -> bytes:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


class Completion:
    """One chat completion in OpenAI's wire format: whole, or as `chat.completion.chunk`s."""

    def __init__(self, model: str, question: str, engine: QAEngine, settings: Settings, state: ServiceState) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model, self.question, self.engine, self.settings, self.state = model, question, engine, settings, state

    def _done(self, result: AskResult) -> tuple[str, Literal["stop", "length"]]:
        """What follows the answer's text, and why it ended; counted in the metrics."""
        self.state.metrics.observe_stages("/v1/chat/completions", result.timings_ms)
        full = self.engine.count_tokens(result.answer) >= self.settings.max_new_tokens
        return sources_text(result) if self.settings.chat_sources_in_text else "", "length" if full else "stop"

    def whole(self, result: AskResult) -> ChatCompletion:
        after, reason = self._done(result)
        answer = AskResponse.of(result)
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[ChatChoice(message=ChatMessageOut(content=result.answer + after), finish_reason=reason)],
            usage=usage(result, self.question, self.engine),
            citations=answer.citations,
            ragserve=answer,
        )

    def chunk(self, delta: dict[str, str], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return data({**self._head(), "choices": [choice], **extra})

    def _head(self) -> dict[str, object]:
        """What every chunk of this completion starts with."""
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}

    async def chunks(self, events: AsyncIterator[Event | None], include_usage: bool) -> AsyncIterator[bytes]:
        """The role, the answer's text as it is decoded, its sources, the end (with `citations` and
        `ragserve`), `usage` when asked for, then `[DONE]`; an error mid-way as `{"error": ...}`."""
        yield self.chunk({"role": "assistant", "content": ""})
        async for event in events:
            if event is None:
                yield KEEPALIVE
            elif isinstance(event, Text):
                yield self.chunk({"content": event.piece})
            elif isinstance(event, Finished):
                result = event.result
                after, reason = self._done(result)
                if after:
                    yield self.chunk({"content": after})
                answer = AskResponse.of(result).model_dump()
                yield self.chunk({}, reason, citations=answer["citations"], ragserve=answer)
                if include_usage:
                    counts = usage(result, self.question, self.engine).model_dump()
                    yield data({**self._head(), "choices": [], "usage": counts})
            elif isinstance(event, Failed):
                yield data(error_data(event.error))
        yield b"data: [DONE]\n\n"


def build_openai_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["openai"])
    ChatRequest = chat_request_model(settings)

    @router.get("/v1/models", response_model=ModelList)
    async def models(engine: EngineDep) -> ModelList:
        """The reader and reader+adapter combinations, as OpenAI model ids."""
        cards = [ModelCard(id=i, created=STARTED, description=d) for i, d in model_ids(engine).items()]
        return ModelList(data=cards)

    @router.post("/v1/chat/completions", response_model=ChatCompletion)
    async def chat(body: ChatRequest, engine: EngineDep, state: StateDep, cancellation: CancellationDep) -> Any:  # type: ignore[valid-type]
        """An answer from the documents to the last user message, in OpenAI's format (see the module)."""
        req = cast(ChatRequestBase, body)
        reader, adapter = read_plan(req.model, engine)
        question, query = question_and_query(req.messages, settings)
        options = req.ragserve
        top_k = options.top_k if options and options.top_k else settings.ask_top_k
        mode, extractive = (options.retrieval, options.extractive) if options else (None, None)
        abstain, use_edits = (options.abstain, options.edits) if options else (None, True)
        engine.plan(reader, extractive, adapter)  # a bad request is a plain 4xx, before any stream

        def work(listener: AskListener | None = None) -> AskResult:
            return engine.ask(
                question, top_k, reader, mode, extractive, adapter, cancellation, listener, query, abstain, use_edits
            )

        completion = Completion(req.model, question, engine, settings, state)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = completion.chunks(follow(work, settings.stream_keepalive_s, cancellation), include_usage)
            return StreamingResponse(chunks, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
        return completion.whole(await run_in_threadpool(work))

    return router
