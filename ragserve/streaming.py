"""Where the text of an answer goes while it is decoded, for requests that stream it.

The HTTP layer hands the engine a listener (service/http/streams.py); the engine makes its text
sink the current one (`streaming_to`) for the thread that does the work, as it does with the
request's cancellation (ragserve/cancel.py). A reader that decodes one answer token by token
turns the tokens into text pieces (reader/text.py `AnswerStream`) and passes them to the sink;
readers that cannot (an answer chosen among candidates, RAG-sequence) stream nothing, and the
engine sends their whole answer as one piece. The sink is called from the decoding thread: it
must be quick and must not raise.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

OnText = Callable[[str], None]

_current: contextvars.ContextVar[OnText | None] = contextvars.ContextVar("ragserve_text_sink", default=None)


def current() -> OnText | None:
    """The text sink of the request this thread works for; None when nobody streams."""
    return _current.get()


@contextlib.contextmanager
def streaming_to(sink: OnText | None) -> Iterator[None]:
    token = _current.set(sink)
    try:
        yield
    finally:
        _current.reset(token)
