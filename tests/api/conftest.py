"""API tests against a real Postgres (and Redis as the broker).

The session makes its own database, ``cartl_test_<random>``, migrates it with Alembic, and drops
it at the end; every test starts from empty tables (TRUNCATE) and an empty storage folder. Jobs
go to a queue no worker reads, on Redis database 15, which is flushed at the end.

Without Postgres or Redis the tests are skipped, saying why, unless ``CARTL_REQUIRE_SERVICES=1``
(CI), where that is a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db.migrate import upgrade
from app.db.session import make_engine, make_sessionmaker
from app.main import create_app
from app.services.auth import create_key
from app.settings import Settings
from tests.api.helpers import METRICS_TOKEN
from tests.services import postgres_database, redis_url, unavailable

REDIS_URL = redis_url(15)
TABLES = ("jobs", "checkpoints", "datasets", "api_keys")

ClientFactory = Callable[..., TestClient]


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        unavailable(f"Redis is not reachable at {REDIS_URL}: {exc}")
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def db_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db(db_engine: Engine) -> sessionmaker[Session]:
    """A session factory on the test database, whose tables start empty."""
    with db_engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    return make_sessionmaker(db_engine)


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def settings_kwargs(
    tmp_path: Path, database_url: str, broker_url: str, storage_dir: Path
) -> dict[str, Any]:
    return {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "broker_url": broker_url,
        "storage_dir": storage_dir,
        # A queue no worker reads: these jobs are only looked at, never run.
        "queue": "cartl-api-tests",
        "run_sweeper": False,
        "probe_timeout_s": 120.0,
        "max_upload_bytes": 4 * 1024**2,
        "upload_chunk_bytes": 64 * 1024,
        "metrics_token": METRICS_TOKEN,
    }


@pytest.fixture
def make_client(
    settings_kwargs: dict[str, Any], db: sessionmaker[Session]
) -> Iterator[ClientFactory]:
    """``make_client(**setting_overrides)``: a started app on the test database."""
    clients: list[TestClient] = []

    def make(raise_server_exceptions: bool = True, **overrides: Any) -> TestClient:
        settings = Settings(_env_file=None, **{**settings_kwargs, **overrides})
        client = TestClient(create_app(settings), raise_server_exceptions=raise_server_exceptions)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


def _key(db: sessionmaker[Session], name: str) -> dict[str, str]:
    with db() as session, session.begin():
        secret = create_key(session, name)
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def alice(db: sessionmaker[Session]) -> dict[str, str]:
    """Headers carrying a key of owner ``alice``."""
    return _key(db, "alice")


@pytest.fixture
def bob(db: sessionmaker[Session]) -> dict[str, str]:
    return _key(db, "bob")
