"""One error shape for every failure: ``application/problem+json`` (RFC 9457).

Handlers for the app's error tree (:mod:`app.errors`), for request validation (pydantic errors
reshaped to ``{field, message}`` with dotted paths such as ``params.k``), for Starlette's HTTP
errors (unknown route, wrong method), and a last one for anything unexpected: a 500 that says
nothing of the cause, whose traceback goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from app.errors import MAX_FIELD_ERRORS, AppError, FieldError, UnauthorizedError
from app.services.auth import authenticate, bearer_secret

__all__ = [
    "PROBLEM_TYPE",
    "ProblemResponse",
    "install_problem_handlers",
    "problem",
    "problem_responses",
]

log = logging.getLogger(__name__)

PROBLEM_TYPE = "urn:cartl:problem:"
MEDIA_TYPE = "application/problem+json"

# Where the value sat: dropped from field paths, which then read like the JSON the client sent.
_LOCATIONS = {"body", "query", "path", "header", "cookie"}


class ProblemResponse(JSONResponse):
    media_type = MEDIA_TYPE


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: Sequence[FieldError] = (),
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> ProblemResponse:
    phrase = _phrase(status)
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + (slug or phrase.lower().replace(" ", "-")),
        "title": title or phrase,
        "status": status,
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
    return ProblemResponse(body, status_code=status, headers=headers)


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


async def _app_error(_request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, AppError)
    errors: Sequence[FieldError] = getattr(exc, "errors", ())
    return problem(
        exc.status,
        exc.detail,
        slug=exc.slug,
        title=exc.title,
        errors=errors,
        headers=exc.headers or None,
        extra=exc.extra,
    )


def _key_refusal(request: Request) -> ProblemResponse | None:
    """The 401 a route would give this request's key, or None for a valid key."""
    secret = bearer_secret(request.headers.get("authorization", ""))
    try:
        with request.app.state.session_factory() as session:
            authenticate(session, secret)
    except UnauthorizedError as exc:
        return problem(exc.status, exc.detail, slug=exc.slug, headers=exc.headers)
    return None


async def _validation_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    if any(e.get("type") == "json_invalid" for e in exc.errors()):
        # FastAPI decodes a JSON body before any dependency runs, so the key check comes here:
        # an unauthenticated caller learns nothing about how its body was parsed.
        refusal = await run_in_threadpool(_key_refusal, request)
        if refusal is not None:
            return refusal
    errors = [_field_error(e) for e in exc.errors()]
    if not errors:
        errors = [FieldError("body", "invalid request")]
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return problem(
        422,
        f"{first.field}: {first.message}{more}",
        slug="validation-error",
        title="Validation Error",
        errors=errors,
    )


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
    return problem(exc.status_code, detail, headers=headers or None)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at this path (asked route by route, so nested routers
    count too)."""
    routes = request.app.router.routes
    return [
        method
        for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]


async def _client_disconnect(_request: Request, _exc: Exception) -> ProblemResponse:
    # Nobody will read it; answering keeps the server from logging an internal error.
    return problem(400, "the client went away before the request was read")


async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "an internal error occurred; it has been logged", slug="internal-error")


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected)


# --- OpenAPI -----------------------------------------------------------------------------------

_EXAMPLES: dict[int, tuple[str, str, str]] = {
    400: ("bad-request", "Bad Request", "the multipart body is malformed"),
    401: (
        "unauthorized",
        "Unauthorized",
        "missing API key: send the header 'Authorization: Bearer <key>'",
    ),
    404: ("not-found", "Not Found", "no job with id 'job_019abc3f2e11c0ffee1234'"),
    408: (
        "request-timeout",
        "Request Timeout",
        "the request body stalled: nothing arrived for 30 s (CARTL_BODY_TIMEOUT_S)",
    ),
    409: (
        "conflict",
        "Conflict",
        "dataset ds_019abc3f2e10f6e5d4c3b2 is used by job job_019abc3f2e11c0ffee1234, which is "
        "running; cancel the job or wait for it to finish, then delete again",
    ),
    413: ("payload-too-large", "Content Too Large", "the upload is larger than the limit"),
    415: ("unsupported-media-type", "Unsupported Media Type", "send multipart/form-data"),
    422: ("validation-error", "Validation Error", "params.k: must be between 1 and 5"),
    429: (
        "too-many-requests",
        "Too Many Requests",
        "this key already has 4 uploads in progress, the most it may have at once "
        "(CARTL_MAX_UPLOADS_PER_KEY); retry after one finishes",
    ),
    500: (
        "artifact-unavailable",
        "Stored Artifact Unavailable",
        "job job_019abc3f2e11c0ffee1234's weights are damaged in the artifact storage (their "
        "sha256 no longer matches the one recorded when they were written); the operator has "
        "been told (server log)",
    ),
    503: ("service-unavailable", "Service Unavailable", "broker: unreachable"),
    507: (
        "storage-full",
        "Insufficient Storage",
        "the artifact storage is full: nothing of this upload was kept; try again once the "
        "operator has freed space",
    ),
}

_DESCRIPTIONS = {
    400: "Malformed request.",
    401: "Missing, unknown or revoked API key.",
    404: "No such object (or it belongs to another key's owner).",
    408: "The body stalled (nothing arrived for CARTL_BODY_TIMEOUT_S); the connection closes.",
    409: "The object's state forbids this.",
    413: "The upload is larger than the configured limit.",
    415: "The body is not multipart/form-data.",
    422: "Invalid input; `errors` lists each field.",
    429: "Too many uploads in progress for this key; `Retry-After` says when to try again.",
    500: "A stored file is missing or damaged.",
    503: "A dependency is unreachable.",
    507: "The artifact storage is full; nothing was kept.",
}


def problem_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses, with examples.

    ``descriptions`` override the default text, keyed ``s409="..."``.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        slug, title, detail = _EXAMPLES[status]
        example: dict[str, Any] = {
            "type": PROBLEM_TYPE + slug,
            "title": title,
            "status": status,
            "detail": detail,
        }
        if status == 422:
            example["errors"] = [{"field": "params.k", "message": "must be between 1 and 5"}]
        out[status] = {
            "description": descriptions.get(f"s{status}", _DESCRIPTIONS[status]),
            "content": {
                MEDIA_TYPE: {
                    "schema": {"$ref": "#/components/schemas/Problem"},
                    "example": example,
                }
            },
        }
    return out
