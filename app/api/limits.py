"""Per-key limits held in the API process: how many uploads one key may stream at once.

An upload occupies the process for as long as its client takes to send it and its file takes to
probe (a child process of up to a few GB): one key flooding uploads must not take that from
everyone else. The count is per API process; with several processes, the limit is per process.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio.to_thread

from app.errors import TooManyRequestsError
from app.services.auth import hash_key

__all__ = ["KeyCache", "UploadSlots"]


class UploadSlots:
    """Counts each key's uploads in progress. Used from the event loop only, so no lock."""

    def __init__(self) -> None:
        self.active: Counter[str] = Counter()

    @contextmanager
    def hold(self, owner: str, limit: int, retry_after_s: int) -> Iterator[None]:
        if self.active[owner] >= limit:
            raise TooManyRequestsError(
                f"this key already has {limit} uploads in progress, the most it may have at "
                f"once (CARTL_MAX_UPLOADS_PER_KEY); retry after one finishes",
                retry_after_s=retry_after_s,
            )
        self.active[owner] += 1
        try:
            yield
        finally:
            self.active[owner] -= 1
            if not self.active[owner]:
                del self.active[owner]


class KeyCache:
    """Keys recently found valid, by the hash of their secret: owner name and when to look
    again. Only valid keys are kept (a wrong key is checked every time), at most ``size``.

    :meth:`owner_of` looks a key up once however many requests ask at the same moment: when an
    entry expires under load, the requests in flight with that key (dozens, for a polling
    client pool) share one database lookup instead of each sending one through the thread pool,
    which stalled every request of the process for tens of milliseconds every ``ttl_s``.
    """

    def __init__(self, ttl_s: float, size: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._valid: dict[str, tuple[str, float]] = {}
        self._pending: dict[str, asyncio.Future[str]] = {}

    async def owner_of(self, secret: str, lookup: Callable[[], str]) -> str:
        """The owner of ``secret``, from the cache or from ``lookup`` (run in a thread; an
        exception, such as a refused key, reaches every request waiting on it)."""
        owner = self.get(secret)
        if owner is not None:
            return owner
        if self.ttl_s <= 0:
            return await anyio.to_thread.run_sync(lookup)
        digest = hash_key(secret)
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._look_up(digest, secret, lookup))
            self._pending[digest] = pending
        # Shielded: one waiter's request being cancelled must not cancel the others' lookup.
        return await asyncio.shield(pending)

    async def _look_up(self, digest: str, secret: str, lookup: Callable[[], str]) -> str:
        try:
            owner = await anyio.to_thread.run_sync(lookup)
            self.put(secret, owner)
            return owner
        finally:
            del self._pending[digest]

    def get(self, secret: str) -> str | None:
        if self.ttl_s <= 0:
            return None
        found = self._valid.get(hash_key(secret))
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def put(self, secret: str, owner: str) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._valid) >= self.size:
            self._valid.clear()  # simplest bound; a burst of new keys costs a lookup each
        self._valid[hash_key(secret)] = (owner, time.monotonic() + self.ttl_s)
