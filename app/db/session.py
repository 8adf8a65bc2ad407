"""One engine per process, made after any fork (API lifespan, Celery ``worker_process_init``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.exc import DatabaseError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from app.errors import exception_chain

__all__ = [
    "DamagedDatabaseError",
    "check_integrity",
    "database_problem",
    "make_async_engine",
    "make_engine",
    "make_sessionmaker",
    "rows_changed",
    "transaction",
]


class DamagedDatabaseError(RuntimeError):
    """The SQLite file fails its integrity check: serving from it could lose or invent rows."""


#: Connections each process keeps open, and no more: a request beyond them waits for one to be
#: returned (it waits up to 30 s) rather than opening and closing a connection of its own, which
#: under load cost more than the queries (SQLite: every open runs the pragmas below and touches
#: the WAL index; Postgres: a new backend process).
POOL_SIZE = 10


def make_engine(url: str, **kwargs: Any) -> Engine:
    pool = {"pool_size": POOL_SIZE, "max_overflow": 0, **kwargs}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


def make_async_engine(url: str) -> AsyncEngine | None:
    """An asyncio engine on the same Postgres database (psycopg's async mode), for the single
    reads the API answers on its event loop (never for writes); None for SQLite, whose reads
    are local and quick enough to run inline (see :mod:`app.api.routes.jobs`)."""
    if not url.startswith("postgresql"):
        return None
    # Autocommit: a single read needs no transaction, and without one a poll is one round trip
    # instead of three (BEGIN, the query, ROLLBACK when the connection goes back to the pool).
    # No pre-ping either (one more round trip per poll): the reader retries once instead.
    return create_async_engine(
        url,
        pool_size=POOL_SIZE,
        max_overflow=0,
        pool_pre_ping=False,
        isolation_level="AUTOCOMMIT",
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # API, worker and sweeper share one file: WAL lets readers run beside the one writer, and
    # busy_timeout makes a writer wait for the lock instead of failing at once.
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk (WAL synced) before it returns, so a job that was reported as
    # succeeded is still there after a crash or power loss; WAL's NORMAL default may drop it.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


def rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE touched (what conditional updates decide on)."""
    return int(cast("CursorResult[Any]", result).rowcount)


#: SQLSTATEs that say the database cannot take writes: disk full, out of memory or quota; a
#: read-only transaction (a standby, ``default_transaction_read_only``).
_PG_FULL = {"53100", "53200", "53400"}
_PG_READ_ONLY = {"25006"}


def database_problem(exc: BaseException) -> str | None:
    """``"full"``, ``"unwritable"`` or None: what a failed statement says about the database
    (SQLite's and Postgres's own words for a full disk or a read-only database)."""
    for seen in exception_chain(exc):
        orig = getattr(seen, "orig", None)
        state = getattr(orig, "sqlstate", None)
        if state in _PG_FULL:
            return "full"
        if state in _PG_READ_ONLY:
            return "unwritable"
        text = str(orig if orig is not None else seen)
        if "database or disk is full" in text or "No space left on device" in text:
            return "full"
        if "readonly database" in text or "Read-only file system" in text:
            return "unwritable"
    return None


def check_integrity(engine: Engine) -> None:
    """SQLite's ``quick_check`` at start: a damaged file is refused with what to do, instead of
    served (rows silently missing). Postgres checks its own pages and WAL; nothing to do there."""
    if engine.dialect.name != "sqlite":
        return
    try:
        with engine.connect() as conn:
            found = [str(row[0]) for row in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
    except DatabaseError as exc:
        # Damage in the header or the schema fails before the check can say anything.
        found = [str(exc.orig)]
    if found != ["ok"]:
        where = engine.url.database or "the database"
        problems = "; ".join(found[:3]) + ("; ..." if len(found) > 3 else "")
        raise DamagedDatabaseError(
            f"the SQLite database {where} is damaged (quick_check: {problems}); refusing to "
            "serve from it. Restore it from a backup, or move it aside to start with an empty "
            "one (its jobs' files in the artifact folder are then no longer listed)"
        )
