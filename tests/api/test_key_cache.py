"""The API key cache: one lookup per key however many requests ask at once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from app.api.limits import KeyCache
from app.errors import UnauthorizedError

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_concurrent_requests_share_one_lookup_and_then_the_cache() -> None:
    cache = KeyCache(ttl_s=60)
    calls: list[int] = []
    lock = threading.Lock()

    def lookup() -> str:
        with lock:
            calls.append(1)
        time.sleep(0.05)
        return "alice"

    async def burst() -> list[str]:
        return await asyncio.gather(*(cache.owner_of("k1", lookup) for _ in range(50)))

    assert _run(burst()) == ["alice"] * 50
    assert len(calls) == 1
    assert _run(burst()) == ["alice"] * 50  # cached now
    assert len(calls) == 1


def test_a_refused_key_fails_every_waiter_and_is_not_cached() -> None:
    cache = KeyCache(ttl_s=60)
    calls: list[int] = []

    def lookup() -> str:
        calls.append(1)
        time.sleep(0.02)
        raise UnauthorizedError("the API key is not valid")

    async def burst() -> list[object]:
        return await asyncio.gather(
            *(cache.owner_of("bad", lookup) for _ in range(10)), return_exceptions=True
        )

    results = _run(burst())
    assert all(isinstance(r, UnauthorizedError) for r in results)
    assert len(calls) == 1
    with pytest.raises(UnauthorizedError):
        _run(cache.owner_of("bad", lookup))
    assert len(calls) == 2


def test_an_expired_entry_is_looked_up_again() -> None:
    cache = KeyCache(ttl_s=0.05)
    owners = iter(["alice", "alice-renamed"])
    assert _run(cache.owner_of("k", lambda: next(owners))) == "alice"
    time.sleep(0.1)
    assert _run(cache.owner_of("k", lambda: next(owners))) == "alice-renamed"
