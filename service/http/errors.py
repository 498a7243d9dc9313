"""The one place where domain exceptions become HTTP status codes and JSON bodies."""

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragserve.errors import (
    ArtifactError,
    ForbiddenError,
    InvalidAdapterError,
    InvalidInputError,
    ModelNotFoundError,
    NotReadyError,
    RagserveError,
    ReaderUnavailableError,
    UnauthorizedError,
    UnknownAdapterError,
    UnknownIndexError,
    UnknownJobError,
    UnknownReaderError,
    UnknownVersionError,
)

log = logging.getLogger(__name__)

# Looked up along the exception's MRO, so a subclass inherits its parent's status.
STATUS: dict[type[RagserveError], tuple[int, str]] = {
    UnknownReaderError: (422, "unknown_reader"),
    ReaderUnavailableError: (422, "reader_unavailable"),
    UnknownAdapterError: (422, "unknown_adapter"),
    InvalidAdapterError: (422, "adapter_invalid"),
    InvalidInputError: (422, "invalid_input"),
    UnknownIndexError: (404, "unknown_index"),
    UnknownJobError: (404, "unknown_job"),
    UnknownVersionError: (404, "unknown_version"),
    UnauthorizedError: (401, "unauthorized"),
    ForbiddenError: (403, "forbidden"),
    NotReadyError: (503, "not_ready"),
    ArtifactError: (409, "artifact_invalid"),  # e.g. switching to a version that fails verification
    ModelNotFoundError: (500, "model_unavailable"),
    RagserveError: (500, "internal_error"),
}


def error_body(code: str, message: str, detail: object = None) -> dict[str, object]:
    body: dict[str, object] = {"error": {"code": code, "message": message}}
    if detail is not None:
        body["detail"] = detail
    return body


def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RagserveError)
    status, code = next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)
    if status >= 500:
        log.error("request failed: %s", exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(code, str(exc)), status_code=status, headers=headers)


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in problems)
    return JSONResponse(
        error_body("invalid_request", summary or "invalid request", jsonable_encoder(problems)), status_code=422
    )


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        error_body(f"http_{exc.status_code}", str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RagserveError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
