"""Typed errors -> HTTP status and `{"error": {"code", "message"}}`, in this one place.

`field`, where an error is about one input field, names it ("input.question", "model", "limit").
Errors that pass (429, 503) carry `Retry-After`; a 401 carries `WWW-Authenticate: Bearer`.
Postgres unreachable is a 503 `database_unavailable`, never a 500: the API recovers by itself once
the database is back (the error empties the engine's pool, and the next request reconnects).
"""

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from blip2.errors import (
    Blip2Error,
    DatasetNotFound,
    ForbiddenUrl,
    ImageTooLarge,
    InvalidArgument,
    InvalidImage,
    ModelNotFound,
    UnsupportedImageFormat,
    UnsupportedOperation,
)
from jobs.db import database_error_summary, is_connection_error
from jobs.errors import (
    ApiKeyNotFound,
    BatchTooLarge,
    FetchFailed,
    IdempotencyKeyReused,
    ImageNotFound,
    InvalidCursor,
    InvalidTenant,
    InvalidTimeRange,
    InvalidWebhookUrl,
    JobNotCancelable,
    JobNotFound,
    JobsError,
    LossCurveNotFound,
    ModelNameTaken,
    NotReady,
    RateLimited,
    TenantQueueFull,
    TooManyJobs,
    Unauthorized,
    UnknownImage,
    UploadTooLarge,
)
from jobs.kinds import JobKind
from jobs.schemas import ErrorDetail

# Looked up along the exception's MRO, so the most specific entry wins.
STATUS_BY_ERROR: dict[type[Exception], int] = {
    Unauthorized: 401,
    RateLimited: 429,
    TenantQueueFull: 503,
    JobNotFound: 404,
    ImageNotFound: 404,
    ApiKeyNotFound: 404,
    LossCurveNotFound: 404,
    InvalidTenant: 422,
    JobNotCancelable: 409,
    IdempotencyKeyReused: 422,
    UnknownImage: 422,
    InvalidCursor: 422,
    InvalidTimeRange: 422,
    BatchTooLarge: 422,
    TooManyJobs: 422,
    InvalidWebhookUrl: 422,
    ModelNameTaken: 409,
    UploadTooLarge: 413,
    FetchFailed: 422,
    NotReady: 503,
    JobsError: 400,
    ModelNotFound: 422,
    DatasetNotFound: 422,
    UnsupportedOperation: 422,
    ImageTooLarge: 413,
    ForbiddenUrl: 422,
    UnsupportedImageFormat: 415,
    InvalidImage: 422,
    InvalidArgument: 422,
    Blip2Error: 400,
}
DATABASE_RETRY_AFTER_S = 2
_KIND_TAGS = frozenset(kind.value for kind in JobKind)
log = logging.getLogger(__name__)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The one error shape every response uses."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def status_for(exc: Exception) -> int:
    return next(STATUS_BY_ERROR[c] for c in type(exc).__mro__ if c in STATUS_BY_ERROR)


def error_detail(exc: JobsError | Blip2Error) -> ErrorDetail:
    """The error body's detail for a typed error (also one refused job of a batch)."""
    return ErrorDetail(code=exc.code, message=str(exc), field=exc.field)


def _headers_of(exc: JobsError | Blip2Error) -> dict[str, str]:
    headers = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    retry_after = exc.retry_after_s if isinstance(exc, JobsError) else None
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return headers


async def _typed_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobsError | Blip2Error)
    body = {"error": error_detail(exc).model_dump(exclude_none=True)}
    return JSONResponse(body, status_code=status_for(exc), headers=_headers_of(exc))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """Postgres went away (restart, failover, network): 503 and try again, never a 500."""
    assert isinstance(exc, DBAPIError)
    if not is_connection_error(exc):
        raise exc
    log.warning("database unavailable for %s %s: %s", request.method, request.url.path, database_error_summary(exc))
    body = error_body("database_unavailable", "the database is unavailable; try again shortly")
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)})


def field_path(error: Mapping[str, Any]) -> str:
    """A pydantic error's location as a dotted field name, without "body" and the job-kind tag."""
    if error["type"] == "json_invalid":
        return "body"  # its loc is a character offset into the body, not a field
    parts = list(error["loc"])
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        parts.append(str(error["ctx"]["discriminator"]).strip("'"))
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    # The union's tag names the kind the job was validated as ("jobs.0.job.caption.input"), not a field.
    parts = [p for i, p in enumerate(parts) if not (p in _KIND_TAGS and (i == 0 or parts[i - 1] == "job"))]
    return ".".join(str(p) for p in parts) or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 `invalid_request` for a request the schema refuses; `invalid_argument` when every problem is
    one of the rules across fields that the schema cannot state (decoding options, jobs/inputs.py)."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    fields = [field_path(e) for e in errors]
    message = "; ".join(f"{field}: {e['msg']}" for field, e in zip(fields, errors, strict=True))
    beyond_schema = bool(errors) and all(e["type"] == InvalidArgument.code for e in errors)
    code = InvalidArgument.code if beyond_schema else "invalid_request"
    return JSONResponse(error_body(code, message, fields[0] if fields else None), status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:
        # FastAPI's own 400: a body that is not even text (e.g. bytes that are not UTF-8 JSON).
        message = f"body: could not be parsed ({exc.detail})"
        return JSONResponse(error_body("invalid_request", message, "body"), status_code=422)
    code = "not_found" if exc.status_code == 404 else f"http_{exc.status_code}"
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the API raises on purpose to its status and the one error shape."""
    app.add_exception_handler(JobsError, _typed_error)
    app.add_exception_handler(Blip2Error, _typed_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
