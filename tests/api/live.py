"""A real API server for tests: ``uvicorn app.main:app`` on a free port with the deployment's
connection protocol, on a fresh Postgres database (migrated) and Redis, with two keys; no worker
reads its queue."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.db.migrate import upgrade
from app.db.session import make_engine, make_sessionmaker
from app.services.auth import create_key
from app.settings import Settings
from tests.services import (
    ROOT,
    free_port,
    postgres_database,
    redis_ready,
    redis_url,
    service_env,
    wait_for,
)


@dataclass(frozen=True)
class Server:
    port: int
    key: str
    other_key: str
    log: Path
    database_url: str
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@contextmanager
def live_api(tmp: Path, **env: str) -> Iterator[Server]:
    """The server, with ``env`` (``CARTL_*`` settings) on top of the test services' own."""
    redis_ready(redis_url(15))
    with postgres_database() as db:
        upgrade(db)
        engine = make_engine(db)
        with make_sessionmaker(engine)() as session, session.begin():
            key = create_key(session, "alice")
            other_key = create_key(session, "bob")
        engine.dispose()
        settings = Settings(
            _env_file=None,
            data_dir=tmp,
            database_url=db,
            broker_url=redis_url(15),
            queue="cartl-live-tests",  # no worker reads it
        )
        full_env = {**service_env(settings), "CARTL_RUN_SWEEPER": "false", **env}
        port = free_port()
        log = tmp / "api.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
                 "--http", "app.api.protocol:HTTPProtocol"],
                env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        srv = Server(port, key, other_key, log, db, proc.pid)
        try:
            wait_for(lambda: _healthy(srv), 60, "uvicorn to answer")
            yield srv
        finally:
            proc.terminate()
            proc.wait(30)


def _healthy(srv: Server) -> bool:
    try:
        return httpx.get(f"{srv.url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
