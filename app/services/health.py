"""Reachability checks for ``/readyz``: each returns ``"ok"`` or what went wrong, never raises."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading

from kombu.connection import Connection
from sqlalchemy import Engine, text

from app.storage import Storage

__all__ = ["MIN_FREE_BYTES", "check_broker", "check_database", "check_storage"]


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


#: Free space below which the artifact storage counts as full for readiness: less than one
#: ordinary upload or one small model's training state.
MIN_FREE_BYTES = 64 * 1024**2


def check_storage(storage: Storage) -> str:
    """The artifact folder takes a write (a probe file, written, synced and removed) and has
    room: a store that is read-only or full makes every job and upload fail."""
    probe = storage.root / f".ready-{os.getpid()}-{threading.get_ident()}"
    try:
        with probe.open("wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):  # on a read-only store even this fails
            probe.unlink()
        return f"cannot be written ({os.strerror(exc.errno) if exc.errno else 'error'})"
    free = shutil.disk_usage(storage.root).free
    if free < MIN_FREE_BYTES:
        return f"nearly full ({free // 1024**2} MiB free, less than {MIN_FREE_BYTES // 1024**2})"
    return "ok"
