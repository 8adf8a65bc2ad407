"""Reachability checks for ``/readyz``: each returns ``"ok"`` or what went wrong, never raises."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kombu.connection import Connection
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from app.db.session import database_problem
from app.storage import MIN_FREE_BYTES, Storage

__all__ = ["MIN_FREE_BYTES", "check_broker", "check_database", "check_storage"]


def check_database(engine: Engine) -> str:
    """The database answers and takes a committed write (a no-op update of Alembic's version
    row, so nothing is added), and SQLite's disk has room: a database that is read-only, full or
    not migrated would fail every job."""
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
    except SQLAlchemyError as exc:
        problem = database_problem(exc) or _sqlite_read_only(engine)
        if problem is not None:
            return f"cannot be written ({'full' if problem == 'full' else 'read-only'})"
        if isinstance(exc, ProgrammingError | OperationalError) and "alembic_version" in str(exc):
            return "not migrated (run cartl db upgrade)"
        return f"unreachable ({type(exc).__name__})"
    folder = _sqlite_folder(engine)
    if folder is not None:
        free = shutil.disk_usage(folder).free
        if free < MIN_FREE_BYTES:
            return (
                f"nearly full ({free // 1024**2} MiB free, less than {MIN_FREE_BYTES // 1024**2})"
            )
    return "ok"


def _sqlite_folder(engine: Engine) -> Path | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database).resolve().parent


def _sqlite_read_only(engine: Engine) -> str | None:
    """SQLite in WAL mode cannot even open a database on a read-only mount ("unable to open
    database file"): the mount's flags tell that case from a missing file."""
    folder = _sqlite_folder(engine)
    try:
        read_only = folder is not None and bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return None
    return "unwritable" if read_only else None


def check_broker(url: str, timeout_s: float) -> str:
    try:
        with Connection(url, connect_timeout=timeout_s) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s
            )
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"


def check_storage(storage: Storage) -> str:
    """The artifact storage takes a write (a probe, written and removed) and, a folder, has
    room: a store that is read-only, full or unreachable makes every job and upload fail."""
    try:
        return storage.check()
    except Exception as exc:
        return f"cannot be checked ({type(exc).__name__})"
