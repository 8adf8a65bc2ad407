"""Reachability checks for ``/readyz``: each returns ``"ok"`` or what went wrong, never raises."""

from __future__ import annotations

from kombu.connection import Connection
from sqlalchemy import Engine, text

__all__ = ["check_broker", "check_database"]


def check_database(engine: Engine) -> str:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"


def check_broker(url: str, timeout_s: float) -> str:
    try:
        with Connection(url, connect_timeout=timeout_s) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s
            )
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"
