"""Bodies of the OpenAI-compatible API (/v1/chat/completions, /v1/models): what OpenAI's clients
send and expect, with ragserve's limits (settings) and two documented extensions: `ragserve` in a
request (retrieval options) and `citations` + `ragserve` in a response (the cited passages and
the whole /v1/ask answer object). Fields OpenAI's clients send that change nothing here
(temperature, top_p, penalties, user, ...) are accepted and ignored: answers are greedy, from the
documents; the ones that would change the answer's kind (n > 1, tools) are refused."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.http.schemas import AskResponse, CitationOut, Retrieval
from service.settings import Settings

ModelName = Annotated[str, StringConstraints(min_length=1, max_length=160)]


class TextPart(BaseModel):
    """One part of a message's content; images and audio are refused."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Extension(BaseModel):
    """`ragserve` in a request (the openai package sends it with `extra_body`)."""

    model_config = ConfigDict(extra="forbid")
    top_k: int | None = Field(None, ge=1, description="Passages retrieved and cited; default: setting ask_top_k.")
    retrieval: Retrieval | None = None
    extractive: bool | None = None
    abstain: bool | None = Field(None, description="Refuse when the passages do not support an answer.")
    edits: bool = Field(True, description="Answer from the edit memory when the question is in an edit's scope.")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    citations: list[CitationOut] = Field(description="Extension: the passages the answer cites, numbered from 1.")
    ragserve: AskResponse = Field(description="Extension: the whole answer object POST /v1/ask returns.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragserve"
    description: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ChatRequestBase(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI's other fields: accepted, ignored (see the module)
    model: ModelName
    messages: list[Any]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    tools: list[Any] | None = None
    ragserve: Extension | None = None


def chat_request_model(settings: Settings) -> type[ChatRequestBase]:
    """The request model whose limits are this server's settings."""
    Content = Annotated[str, StringConstraints(max_length=settings.max_chat_message_chars)]

    class BoundExtension(Extension):
        top_k: int | None = Field(
            None, ge=1, le=settings.max_ask_top_k, description=Extension.model_fields["top_k"].description
        )

    class ChatMessage(BaseModel):
        model_config = ConfigDict(extra="ignore")  # name, tool_call_id, ...: not used
        role: Literal["system", "developer", "user", "assistant", "tool"]
        content: Content | list[TextPart] | None = None

    class ChatRequest(ChatRequestBase):
        model: ModelName = Field(description="A model GET /v1/models lists: a reader, or reader+adapter.")
        messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=settings.max_chat_messages)]
        n: Annotated[int, Field(ge=1, le=1, description="One answer per request.")] = 1
        tools: Annotated[list[Any] | None, Field(max_length=0, description="Not supported: none or [].")] = None
        ragserve: BoundExtension | None = None

    return ChatRequest
