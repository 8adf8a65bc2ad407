"""The gate every ``/v1`` request passes before any route runs: plain ASGI middleware.

- The API key is checked here, and only here, before the body is read or parsed: a request
  without a live key is a 401 however large its body (an anonymous upload is refused unread, and
  a client that sends malformed JSON with a wrong key learns about the key first). The key's
  owner goes into the request's state, where :data:`app.api.deps.OwnerDep` hands it to the
  routes. A key seen valid in the last ``key_cache_s`` seconds is not looked up again (a revoked
  key is refused by every process within that time); others are checked in a short session of
  their own, in a worker thread, so no request holds a connection for its key check.
- A JSON request body (every ``/v1`` request with a body, except the multipart uploads, which
  stream under their own limits) is read here in full, up to ``max_json_bytes`` (413 beyond, from
  the ``Content-Length`` alone when it says so), with ``body_timeout_s`` for each chunk (408 for a
  stalled body), then handed on.

Refusals are rendered as every error is (:func:`app.api.problems.problem_for`).
"""

from __future__ import annotations

import asyncio

from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import Headers, State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.limits import KeyCache
from app.api.problems import problem_for
from app.errors import AppError, PayloadTooLargeError, RequestTimeoutError, UnauthorizedError
from app.services.auth import MISSING_KEY, authenticate, bearer_secret
from app.settings import Settings

__all__ = ["OWNER", "RequestGuardMiddleware"]

#: The key in the request's state (``request.state.owner``) that holds the caller's owner name.
OWNER = "owner"

# Multipart uploads stream to storage under max_upload_bytes (app.api.uploads).
_UPLOADS = {("POST", "/v1/checkpoints"), ("POST", "/v1/datasets")}
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


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
            owner = await _owner(headers, scope["app"].state)
            if method in _BODY_METHODS and (method, path) not in _UPLOADS:
                receive = await _buffered(receive, headers, self.settings(scope))
        except AppError as refused:
            await problem_for(refused)(scope, receive, send)
            return
        scope.setdefault("state", {})[OWNER] = owner
        await self.app(scope, receive, send)


async def _owner(headers: Headers, state: State) -> str:
    """The owner name of the request's key; :class:`UnauthorizedError` for no live key."""
    secret = bearer_secret(headers.get("authorization", ""))
    if secret is None:
        raise UnauthorizedError(MISSING_KEY)
    factory: sessionmaker[Session] = state.session_factory
    cache: KeyCache = state.key_cache

    def look_up() -> str:
        with factory() as session:
            return authenticate(session, secret).name

    return await cache.owner_of(secret, look_up)


async def _buffered(receive: Receive, headers: Headers, settings: Settings) -> Receive:
    """The whole body, read under the size and time limits, replayed to the app."""
    limit = settings.max_json_bytes
    too_large = PayloadTooLargeError(
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
            raise RequestTimeoutError(
                f"the request body stalled: nothing arrived for {settings.body_timeout_s:g} s "
                "(CARTL_BODY_TIMEOUT_S)"
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
