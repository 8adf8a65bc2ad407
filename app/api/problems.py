"""One error shape for every failure: ``application/problem+json`` (RFC 9457).

:data:`PROBLEM_TYPES` is the one table of which problem each error is (status, type, title): the
errors the service raises on purpose (:mod:`app.errors`), those of cartl_core should one reach a
route (:mod:`cartl_core.errors`), request validation (pydantic errors reshaped to ``{field,
message}`` with dotted paths such as ``params.k``), a client that went away, and anything
unexpected: a 500 that says nothing of the cause, whose traceback goes to the log. One handler
renders them all with :func:`problem_for`, which the request guard (:mod:`app.api.guards`) calls
too, and the OpenAPI examples read the same table. Starlette's HTTP errors (unknown route, wrong
method) carry their own status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from app.errors import (
    MAX_FIELD_ERRORS,
    AppError,
    BadRequestError,
    ConflictError,
    FieldError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServiceUnavailableError,
    StorageFullError,
    StoredArtifactError,
    TooManyRequestsError,
    UnauthorizedError,
    UnprocessableError,
    UnsupportedMediaTypeError,
)
from app.storage import StorageError, problem_text
from cartl_core import errors as core

__all__ = [
    "PROBLEM_TYPE",
    "PROBLEM_TYPES",
    "ProblemResponse",
    "ProblemType",
    "install_problem_handlers",
    "problem",
    "problem_for",
    "problem_responses",
    "problem_type",
]

log = logging.getLogger(__name__)

PROBLEM_TYPE = "urn:cartl:problem:"
MEDIA_TYPE = "application/problem+json"

# Where the value sat: dropped from field paths, which then read like the JSON the client sent.
_LOCATIONS = {"body", "query", "path", "header", "cookie"}


@dataclass(frozen=True)
class ProblemType:
    """What a problem's ``status``, ``type`` (:data:`PROBLEM_TYPE` + ``slug``) and ``title``
    say, whatever the case at hand."""

    status: int
    slug: str
    title: str


_BAD_REQUEST = ProblemType(400, "bad-request", "Bad Request")
_CONFLICT = ProblemType(409, "conflict", "Conflict")
_INVALID = ProblemType(422, "validation-error", "Validation Error")
_INTERNAL = ProblemType(500, "internal-error", "Internal Server Error")

#: Which problem each error is; an error not listed is its nearest listed base class's.
PROBLEM_TYPES: dict[type[Exception], ProblemType] = {
    # app.errors: what the service refuses on purpose.
    BadRequestError: _BAD_REQUEST,
    UnauthorizedError: ProblemType(401, "unauthorized", "Unauthorized"),
    NotFoundError: ProblemType(404, "not-found", "Not Found"),
    RequestTimeoutError: ProblemType(408, "request-timeout", "Request Timeout"),
    ConflictError: _CONFLICT,
    PayloadTooLargeError: ProblemType(413, "payload-too-large", "Content Too Large"),
    UnsupportedMediaTypeError: ProblemType(415, "unsupported-media-type", "Unsupported Media Type"),
    UnprocessableError: _INVALID,
    TooManyRequestsError: ProblemType(429, "too-many-requests", "Too Many Requests"),
    StoredArtifactError: ProblemType(500, "artifact-unavailable", "Stored Artifact Unavailable"),
    ServiceUnavailableError: ProblemType(503, "service-unavailable", "Service Unavailable"),
    StorageFullError: ProblemType(507, "storage-full", "Insufficient Storage"),
    AppError: _INTERNAL,
    # app.storage: a bucket that is missing, refuses the credentials or cannot be reached.
    StorageError: ProblemType(503, "service-unavailable", "Service Unavailable"),
    # cartl_core.errors: what a user can cause (a bad option, architecture, dataset or
    # checkpoint), each message saying what to fix; services mostly catch them first.
    core.CartlError: _INVALID,
    core.CancelledError: _CONFLICT,
    # The framework's.
    RequestValidationError: _INVALID,
    ClientDisconnect: _BAD_REQUEST,
    Exception: _INTERNAL,
}

# Every listed error but the last row's: raised or reported on purpose.
_ON_PURPOSE = tuple(error for error in PROBLEM_TYPES if error is not Exception)
_NO_FIELD = FieldError("body", "invalid request")
_CLIENT_GONE = "the client went away before the request was read"
_UNEXPECTED = "an internal error occurred; it has been logged"


class ProblemResponse(JSONResponse):
    media_type = MEDIA_TYPE


def problem_type(error: type[BaseException]) -> ProblemType:
    """``error``'s row of :data:`PROBLEM_TYPES`, or its nearest listed base class's."""
    return next((PROBLEM_TYPES[cls] for cls in error.__mro__ if cls in PROBLEM_TYPES), _INTERNAL)


def problem_for(exc: BaseException) -> ProblemResponse:
    """``exc`` as the problem :data:`PROBLEM_TYPES` makes it, with what it says of its case."""
    kind = problem_type(type(exc))
    if isinstance(exc, RequestValidationError):
        exc = UnprocessableError([_field_error(e) for e in exc.errors()] or [_NO_FIELD])
    if isinstance(exc, AppError):
        errors: Sequence[FieldError] = getattr(exc, "errors", ())
        return problem(kind, exc.detail, errors=errors, headers=exc.headers, extra=exc.extra)
    if isinstance(exc, core.CartlError):
        return problem(kind, str(exc), extra={"error_type": type(exc).__name__})
    if isinstance(exc, StorageError):
        # Its own words name the bucket and the endpoint: the log has them, the user the cause.
        return problem(
            kind,
            f"the artifact storage {problem_text(exc.problem)}; try again once the operator has "
            "fixed it",
        )
    return problem(kind, _CLIENT_GONE if isinstance(exc, ClientDisconnect) else _UNEXPECTED)


def problem(
    kind: ProblemType | int,
    detail: str,
    *,
    errors: Sequence[FieldError] = (),
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> ProblemResponse:
    """A problem response of ``kind`` (a bare status: the type and title its phrase makes)."""
    if isinstance(kind, int):
        phrase = _phrase(kind)
        kind = ProblemType(kind, phrase.lower().replace(" ", "-"), phrase)
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + kind.slug,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
    }
    if errors:
        # One error per field (a list of a million bad numbers is one problem), at most
        # MAX_FIELD_ERRORS of them: the answer stays small whatever the request held.
        first: dict[str, str] = {}
        for e in errors:
            first.setdefault(e.field[:200], e.message[:500])
        body["errors"] = [
            {"field": f, "message": m} for f, m in list(first.items())[:MAX_FIELD_ERRORS]
        ]
        if len(first) > MAX_FIELD_ERRORS:
            body["errors_omitted"] = len(first) - MAX_FIELD_ERRORS
    body.update(extra or {})
    return ProblemResponse(body, status_code=kind.status, headers=headers or None)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def field_path(loc: Iterable[int | str]) -> str:
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "body"


def _field_error(err: dict[str, Any]) -> FieldError:
    if err.get("type") == "json_invalid":
        # Its location is a character offset, not a field.
        loc = list(err.get("loc", ()))
        where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        reason = (err.get("ctx") or {}).get("error", "JSON decode error")
        return FieldError("body", f"invalid JSON{where}: {reason}")
    return FieldError(field_path(err.get("loc", ())), _message(err))


def _message(err: dict[str, Any]) -> str:
    if err.get("type") == "missing":
        return "required"
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    return str(err.get("msg", "invalid"))


async def _handle(request: Request, exc: Exception) -> ProblemResponse:
    """The one handler of every error in :data:`PROBLEM_TYPES`; one that nothing raised on
    purpose (a bug) is logged with its traceback."""
    if isinstance(exc, StorageError):
        log.error("%s %s: %s", request.method, request.url.path, exc)
    elif not isinstance(exc, _ON_PURPOSE):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_for(exc)


async def _http_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route with this path only; each method is
        # its own route here, so collect them all.
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
    return problem(exc.status_code, detail, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at this path (asked route by route, so nested routers
    count too)."""
    routes = request.app.router.routes
    return [
        method
        for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]


def install_problem_handlers(app: FastAPI) -> None:
    for error in PROBLEM_TYPES:
        app.add_exception_handler(error, _handle)
    app.add_exception_handler(StarletteHTTPException, _http_error)


# --- OpenAPI -----------------------------------------------------------------------------------

#: What the docs show for each status a route may answer: the error that answers it (its type and
#: title come from PROBLEM_TYPES), the default description, and an example detail.
_DOCUMENTED: dict[int, tuple[type[Exception], str, str]] = {
    400: (BadRequestError, "Malformed request.", "the multipart body is malformed"),
    401: (
        UnauthorizedError,
        "Missing, unknown or revoked API key.",
        "missing API key: send the header 'Authorization: Bearer <key>'",
    ),
    404: (
        NotFoundError,
        "No such object (or it belongs to another key's owner).",
        "no job with id 'job_019abc3f2e11c0ffee1234'",
    ),
    408: (
        RequestTimeoutError,
        "The body stalled (nothing arrived for CARTL_BODY_TIMEOUT_S); the connection closes.",
        "the request body stalled: nothing arrived for 30 s (CARTL_BODY_TIMEOUT_S)",
    ),
    409: (
        ConflictError,
        "The object's state forbids this.",
        "dataset ds_019abc3f2e10f6e5d4c3b2 is used by job job_019abc3f2e11c0ffee1234, which is "
        "running; cancel the job or wait for it to finish, then delete again",
    ),
    413: (
        PayloadTooLargeError,
        "The upload is larger than the configured limit.",
        "the upload is larger than the limit",
    ),
    415: (
        UnsupportedMediaTypeError,
        "The body is not multipart/form-data.",
        "send multipart/form-data",
    ),
    422: (
        UnprocessableError,
        "Invalid input; `errors` lists each field.",
        "params.k: must be between 1 and 5",
    ),
    429: (
        TooManyRequestsError,
        "Too many uploads in progress for this key; `Retry-After` says when to try again.",
        "this key already has 4 uploads in progress, the most it may have at once "
        "(CARTL_MAX_UPLOADS_PER_KEY); retry after one finishes",
    ),
    500: (
        StoredArtifactError,
        "A stored file is missing or damaged.",
        "job job_019abc3f2e11c0ffee1234's weights are damaged in the artifact storage (their "
        "sha256 no longer matches the one recorded when they were written); the operator has "
        "been told (server log)",
    ),
    503: (
        ServiceUnavailableError,
        "A dependency is unreachable.",
        "broker: unreachable",
    ),
    507: (
        StorageFullError,
        "The artifact storage is full; nothing was kept.",
        "the artifact storage is full: nothing of this upload was kept; try again once the "
        "operator has freed space",
    ),
}


def problem_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses, with examples.

    ``descriptions`` override the default text, keyed ``s409="..."``.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        error, description, detail = _DOCUMENTED[status]
        kind = PROBLEM_TYPES[error]
        example: dict[str, Any] = {
            "type": PROBLEM_TYPE + kind.slug,
            "title": kind.title,
            "status": kind.status,
            "detail": detail,
        }
        if status == 422:
            example["errors"] = [{"field": "params.k", "message": "must be between 1 and 5"}]
        out[status] = {
            "description": descriptions.get(f"s{status}", description),
            "content": {
                MEDIA_TYPE: {
                    "schema": {"$ref": "#/components/schemas/Problem"},
                    "example": example,
                }
            },
        }
    return out
