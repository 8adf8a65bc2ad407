"""Refusals that cost nothing, made before any route runs: plain ASGI middleware.

- A ``/v1`` request without a bearer key is a 401 before its body is read or parsed (a client
  that sends malformed JSON without a key learns about the key first, and an anonymous client
  cannot make the server parse anything).
- A JSON request body (every ``/v1`` request with a body, except the multipart uploads, which
  stream under their own limits) is read here in full, up to ``max_json_bytes`` (413 beyond, from
  the ``Content-Length`` alone when it says so), with ``body_timeout_s`` for each chunk (408 for a
  stalled body), then handed on.

The key's validity needs the database and is the routes' business (``app.api.deps``).
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem
from app.services.auth import MISSING_KEY, bearer_secret
from app.settings import Settings

__all__ = ["RequestGuardMiddleware"]

# Multipart uploads stream to storage under max_upload_bytes (app.api.uploads).
_UPLOADS = {("POST", "/v1/checkpoints"), ("POST", "/v1/datasets")}
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class _RefusedError(Exception):
    def __init__(self, status: int, slug: str, title: str, detail: str, **headers: str) -> None:
        super().__init__(detail)
        self.status, self.slug, self.title, self.detail = status, slug, title, detail
        # Keyword names cannot hold "-": WWW_Authenticate is the header WWW-Authenticate.
        self.headers = {k.replace("_", "-"): v for k, v in headers.items()}


class RequestGuardMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self.app = app
        self._settings = settings

    def settings(self, scope: Scope) -> Settings:
        if self._settings is not None:
            return self._settings
        settings: Settings = scope["app"].state.settings
        return settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method, path = scope["method"], scope["path"].rstrip("/")
        try:
            _require_bearer(headers)
            if method in _BODY_METHODS and (method, path) not in _UPLOADS:
                receive = await _buffered(receive, headers, self.settings(scope))
        except _RefusedError as r:
            answer = problem(r.status, r.detail, slug=r.slug, title=r.title, headers=r.headers)
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _require_bearer(headers: Headers) -> None:
    if bearer_secret(headers.get("authorization", "")) is None:
        raise _RefusedError(
            401, "unauthorized", "Unauthorized", MISSING_KEY, WWW_Authenticate="Bearer"
        )


async def _buffered(receive: Receive, headers: Headers, settings: Settings) -> Receive:
    """The whole body, read under the size and time limits, replayed to the app."""
    limit = settings.max_json_bytes
    too_large = _RefusedError(
        413,
        "payload-too-large",
        "Content Too Large",
        f"the request body is larger than {limit} bytes, the limit for JSON requests "
        "(CARTL_MAX_JSON_BYTES)",
    )
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        try:
            message = await asyncio.wait_for(receive(), settings.body_timeout_s)
        except TimeoutError:
            raise _RefusedError(
                408,
                "request-timeout",
                "Request Timeout",
                f"the request body stalled: nothing arrived for {settings.body_timeout_s:g} s "
                "(CARTL_BODY_TIMEOUT_S)",
                Connection="close",
            ) from None
        if message["type"] == "http.disconnect":
            return _replay(b"", receive, disconnected=True)
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise too_large
        chunks.append(body)
        more = bool(message.get("more_body", False))
    return _replay(b"".join(chunks), receive)


def _replay(body: bytes, receive: Receive, disconnected: bool = False) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if disconnected:
            return {"type": "http.disconnect"}
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
