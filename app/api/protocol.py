"""The HTTP/1.1 connection protocol the API is served with: uvicorn's httptools protocol plus
limits on each request's head (its request line and headers).

uvicorn times out only an idle keep-alive connection, and only until its first byte arrives; a
connection that opens and sends nothing, or part of a head and then nothing or a byte now and
then (slowloris), is held for ever, and enough of them use up the process's file descriptors.
httptools also buffers a head of any size. Here, per connection:

- every head must be complete within ``header_timeout_s`` of the connection opening or of the
  previous response, or the connection is closed (408 first if part of a head came);
- a head still incomplete after ``max_header_bytes`` is refused with 431 (what one connection
  buffers is bounded by that plus one read);
- at most ``max_waiting_connections`` connections wait for a head at once: one more closes the
  one that has waited longest, so idle sockets cost a bounded number of descriptors and a flood
  of them cannot lock a newcomer out (it sends its head in milliseconds and is served).

``uvicorn.Config(limit_concurrency=...)`` would not help: it answers 503 to every request while
the idle sockets are held, and closes none of them. Requests past their head are the
application's business (``body_timeout_s``, ``max_uploads_per_key``).

``uvicorn app.main:app --http app.api.protocol:HTTPProtocol`` (docker-compose.yml) and ``cartl
serve`` use it, on the process's ``CARTL_*`` settings.
"""

from __future__ import annotations

import asyncio
import weakref

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.settings import get_settings

__all__ = ["HTTPProtocol"]

_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)

# Each server's connections that wait for a head, oldest first (dicts keep insertion order).
_waiting: weakref.WeakKeyDictionary[ServerState, dict[HTTPProtocol, None]] = (
    weakref.WeakKeyDictionary()
)


class HTTPProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, object],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self._head_timeout = settings.header_timeout_s
        self._head_limit = settings.max_header_bytes
        self._max_waiting = settings.max_waiting_connections
        self._waiting = _waiting.setdefault(server_state, {})
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            self._head_bytes += len(data)
        super().data_received(data)  # on_headers_complete runs in here once the head is in
        if self._deadline is not None and self._head_bytes > self._head_limit:
            self._refuse(_TOO_LARGE)

    def on_headers_complete(self) -> None:
        self._head_done()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Not while a pipelined request (its head already in) is running or queued.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._head_done()
        self._head_bytes = 0
        self._deadline = self.loop.call_later(self._head_timeout, self._head_timed_out)
        self._waiting[self] = None
        if len(self._waiting) > self._max_waiting:
            next(iter(self._waiting))._refuse(b"")

    def _head_done(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting.pop(self, None)

    def _head_timed_out(self) -> None:
        self._refuse(_TIMEOUT if self._head_bytes else b"")

    def _refuse(self, answer: bytes) -> None:
        self._head_done()
        if not self.transport.is_closing():
            if answer:
                self.transport.write(answer)
            self.transport.close()
