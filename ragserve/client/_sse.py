"""Server-sent events (text/event-stream) read line by line, and the events of a streamed answer.

The parser follows the WHATWG rules the server's stream relies on: `event:` names the event,
`data:` lines (joined by newlines) carry it, a blank line ends it, and lines starting with `:`
are keep-alive comments. It holds no I/O, so the synchronous and the asynchronous client feed it
the lines they read."""

import json
from dataclasses import dataclass

import httpx

from ragserve.client._errors import APIError, NetworkError, error_from_event
from ragserve.client._types import Answer, Citation, CitationsEvent, DoneEvent, StreamEvent, TokenEvent, _known


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str


class EventParser:
    """Lines in, complete events out (`feed` returns one when a blank line ends it)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None  # `id` and `retry` mean nothing to a one-shot answer stream

    def close(self) -> ServerSentEvent | None:
        """An event the stream ended in without its blank line, if any."""
        return self._dispatch()

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data and not self._event:
            return None
        event = ServerSentEvent(self._event or "message", "\n".join(self._data))
        self._event, self._data = "", []
        return event


def answer_event(sse: ServerSentEvent, url: str) -> StreamEvent | None:
    """The typed event of a streamed answer; raises the domain error of an `error` event.
    Unknown event names (a newer server's) are skipped: None."""
    if sse.event == "error":
        error, cause = error_from_event(sse.data, url)
        raise error from cause
    if sse.event not in ("citations", "token", "done"):
        return None
    try:
        data = json.loads(sse.data)
        if sse.event == "token":
            return TokenEvent(str(data["text"]))
        if sse.event == "citations":
            citations = tuple(_known(Citation, c) for c in data["citations"])
            return CitationsEvent(citations, str(data["index_version"]))
        return DoneEvent(Answer.of(data))
    except (ValueError, KeyError, TypeError) as exc:
        raise APIError(f"malformed {sse.event!r} event: {exc}", status=200, code="stream_error") from None


class AnswerStream:
    """The typed events of one streamed answer, from its lines; `finish` checks that it ended
    with its answer (a stream cut off before `done` is a failure, not a short answer)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._parser = EventParser()
        self._done = False

    def feed(self, line: str) -> StreamEvent | None:
        sse = self._parser.feed(line)
        return self._typed(sse) if sse is not None else None

    def finish(self) -> StreamEvent | None:
        """The last event, if the stream ended without its blank line; raises if no answer came."""
        sse = self._parser.close()
        event = self._typed(sse) if sse is not None else None
        if not self._done:
            reason = "the answer stream ended before its 'done' event"
            raise NetworkError(f"{self.url}: {reason}", url=self.url, reason=reason)
        return event

    def _typed(self, sse: ServerSentEvent) -> StreamEvent | None:
        event = answer_event(sse, self.url)
        self._done = self._done or isinstance(event, DoneEvent)
        return event


def is_event_stream(response: httpx.Response) -> bool:
    """Whether the answer is a stream; a server that answers JSON instead sent the whole answer."""
    media = str(response.headers.get("content-type", ""))
    return media.partition(";")[0].strip() == "text/event-stream"
