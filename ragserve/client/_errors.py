"""Errors of the client: a server's error body turned back into the domain exception it was
raised as (ragserve/errors.py defines each code once), and what goes wrong on the way there."""

import email.utils
import json
import time
from typing import Any

import httpx

from ragserve.errors import OverloadedError, RagserveError, error_classes


class APIError(RagserveError):
    """An error response whose code no ragserve error class defines: a newer server's, a body
    too large for the server (`payload_too_large`), a route that does not exist (`http_404`), or
    a proxy in between that answered with no ragserve body at all (`http_<status>`)."""

    def __init__(self, message: str, *, status: int, code: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail


class NetworkError(RagserveError):
    """The request got no HTTP answer: connection refused or reset, a name that does not resolve,
    a stream cut off mid-way."""

    def __init__(self, message: str, *, url: str, reason: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason
        self.code = "network_error"  # no server sends it: not a class-level code (error_classes)


class RequestTimeoutError(NetworkError):
    """No answer (or no next part of a streamed one) within the client's timeout."""


class JobTimeoutError(RagserveError, TimeoutError):
    """A job was still queued or running when the wait for it ended."""


def network_error(exc: httpx.TransportError, url: str) -> NetworkError:
    """What a transport failure means, in one line naming the URL."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        reason = f"no answer in time ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
        return RequestTimeoutError(f"{url}: {reason}", url=url, reason=reason)
    return NetworkError(f"{url}: {reason}", url=url, reason=reason)


class ErrorResponse(Exception):
    """The HTTP side of an error answer: the cause (`__cause__`) of every exception the client
    raises for one, so that a traceback, or `error_response(exc)`, tells which request failed how."""

    def __init__(self, method: str, url: str, status: int, code: str) -> None:
        super().__init__(f"{method} {url} answered HTTP {status} ({code})")
        self.method, self.url, self.status, self.code = method, url, status, code


def error_response(exc: BaseException) -> ErrorResponse | None:
    """The error answer `exc` was raised for, or None (it was raised here, not by a server)."""
    cause = exc.__cause__
    return cause if isinstance(cause, ErrorResponse) else None


def error_from_response(response: httpx.Response) -> tuple[RagserveError, ErrorResponse]:
    """The exception an error response stands for (the domain class of its code, else an
    APIError) and its cause. The response's body must have been read."""
    status = response.status_code
    try:
        body = response.json()
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message, body = f"http_{status}", response.text.strip()[:200] or response.reason_phrase, {}
    cause = ErrorResponse(response.request.method, str(response.request.url), status, code)
    cls = error_classes().get(code)
    if cls is None:
        return APIError(message, status=status, code=code, detail=body.get("detail")), cause
    if issubclass(cls, OverloadedError):
        return cls(message, retry_after_s=max(1, round(retry_after(response.headers) or 1))), cause
    return cls(message), cause


def error_from_event(data: str, url: str) -> tuple[RagserveError, ErrorResponse]:
    """The exception of an `error` event of a stream (its data: the JSON error body), and its cause."""
    try:
        error = json.loads(data)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "stream_error", f"the stream failed: {data[:200]}"
    cause = ErrorResponse("POST", url, 200, code)
    cls = error_classes().get(code)
    return (cls(message) if cls is not None else APIError(message, status=200, code=code)), cause


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asks to wait (Retry-After: seconds or an HTTP date), or None."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
