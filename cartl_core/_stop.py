"""Stopping a long run from outside: a cancelled job, a user's Ctrl-C handler, a time limit.

Every long loop of the library asks :func:`check_stop` once per step; :func:`stop_when` says
whom it asks. No torch here: the archive reader, which the API's upload check uses, asks too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from cartl_core.errors import CancelledError

__all__ = ["StopFn", "check_stop", "stop_when"]

#: Asked between steps of a long run: true stops it with :class:`CancelledError`.
StopFn = Callable[[], bool]

_SHOULD_STOP: ContextVar[StopFn | None] = ContextVar("cartl_should_stop", default=None)


@contextlib.contextmanager
def stop_when(should_stop: StopFn | None) -> Iterator[None]:
    """Within this block every long loop of the library asks ``should_stop`` at each step: a
    training batch, an attack's step, restart or query, a batch of a clean pass or of the
    trace, a file of a dataset being decoded. True ends the run with :class:`CancelledError`
    within one step, however many steps were asked for.

    A context variable rather than a parameter threaded through every attack: the loops that
    need it are many levels below the functions a caller holds, and each check costs one
    lookup. Nested blocks stop when either function says so.
    """
    if should_stop is None:
        yield
        return
    outer = _SHOULD_STOP.get()
    inner = should_stop
    token = _SHOULD_STOP.set(inner if outer is None else lambda: outer() or inner())
    try:
        yield
    finally:
        _SHOULD_STOP.reset(token)


def check_stop(where: str) -> None:
    """Raise :class:`CancelledError` if the enclosing :func:`stop_when` asks to stop."""
    should_stop = _SHOULD_STOP.get()
    if should_stop is not None and should_stop():
        raise CancelledError(f"stopped during {where}")
