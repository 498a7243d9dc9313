"""The one place where domain exceptions become HTTP status codes and JSON bodies."""

import json
import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from ragserve.errors import (
    ArtifactError,
    ClientGoneError,
    DeadlineExceededError,
    DrainingError,
    ForbiddenError,
    InvalidAdapterError,
    InvalidInputError,
    InvalidRequestError,
    ModelNotFoundError,
    NotReadyError,
    OverloadedError,
    PartialReplicaError,
    RagserveError,
    ReaderUnavailableError,
    ShardsDisagreeError,
    ShardUnavailableError,
    StorageUnavailableError,
    SupersededError,
    TooManyEditsError,
    TooManyJobsError,
    UnauthorizedError,
    UnknownAdapterError,
    UnknownEditError,
    UnknownIndexError,
    UnknownJobError,
    UnknownReaderError,
    UnknownVersionError,
)
from ragserve.storage import is_storage_error

log = logging.getLogger(__name__)

# Looked up along the exception's MRO, so a subclass inherits its parent's status. The `code` of the
# body is the class's own (ragserve/errors.py), so each code is defined once, there.
STATUS: dict[type[RagserveError], int] = {
    UnknownReaderError: 422,
    ReaderUnavailableError: 422,
    UnknownAdapterError: 422,
    InvalidAdapterError: 422,
    InvalidInputError: 422,
    UnknownIndexError: 404,
    UnknownJobError: 404,
    UnknownEditError: 404,
    TooManyEditsError: 409,
    UnknownVersionError: 404,
    UnauthorizedError: 401,
    ForbiddenError: 403,
    TooManyJobsError: 429,
    OverloadedError: 429,
    DrainingError: 503,
    NotReadyError: 503,
    StorageUnavailableError: 503,
    SupersededError: 409,
    PartialReplicaError: 409,
    ShardUnavailableError: 503,  # retriever/router.py
    ShardsDisagreeError: 503,  # a roll in progress: retry
    ModelNotFoundError: 503,  # a server-side configuration problem
    DeadlineExceededError: 504,
    ClientGoneError: 499,  # nobody reads it; nginx's code, for the logs
    ArtifactError: 409,  # e.g. switching to a version that fails verification
    RagserveError: 500,
}
RETRY_AFTER_S = 5  # what a not-ready or storage-failed server asks a client to wait


def error_body(code: str, message: str, detail: object = None) -> dict[str, object]:
    body: dict[str, object] = {"error": {"code": code, "message": message}}
    if detail is not None:
        body["detail"] = detail
    return body


def domain_response(exc: RagserveError) -> tuple[int, dict[str, object], dict[str, str]]:
    """(status, JSON body, headers) of a domain error: the one mapping, for routes and middleware."""
    status = next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)
    if status >= 500 and status != 503:
        log.error("request failed: %s", exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, OverloadedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return status, error_body(exc.code, str(exc)), headers


def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RagserveError)
    status, body, headers = domain_response(exc)
    return JSONResponse(body, status_code=status, headers=headers)


async def send_error(send: Send, exc: RagserveError) -> None:
    """Answer a request from ASGI middleware (before any route runs) with a domain error."""
    status, body, headers = domain_response(exc)
    await send_json(send, status, body, headers)


async def send_json(send: Send, status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
    content = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in problems)
    return JSONResponse(
        error_body(InvalidRequestError.code, summary or "invalid request", jsonable_encoder(problems)), status_code=422
    )


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        error_body(f"http_{exc.status_code}", str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    """The store is down (PostgreSQL restarting, a full disk): 503, retry; nothing is wrong with
    the request. Other errors of these classes are bugs (500)."""
    if not is_storage_error(exc):
        return _unexpected(request, exc)
    log.warning("%s %s: the store failed: %s", request.method, request.url.path, exc)
    unavailable = StorageUnavailableError(f"the store failed ({type(exc).__name__}); retry later")
    return _domain_error(request, unavailable)


def storage_error_classes() -> list[type[Exception]]:
    """What a failing store raises (ragserve/storage.py); psycopg's only where it is installed."""
    classes: list[type[Exception]] = [sqlite3.DatabaseError, OSError]
    try:
        import psycopg
    except ImportError:
        return classes
    return [*classes, psycopg.OperationalError, psycopg.InterfaceError]


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body(RagserveError.code, "internal error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RagserveError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for storage in storage_error_classes():
        app.add_exception_handler(storage, _storage_error)
    app.add_exception_handler(Exception, _unexpected)
