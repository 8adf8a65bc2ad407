"""The Alembic history builds exactly the schema the models describe, on SQLite and Postgres,
and goes down again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.db import models  # noqa: F401  (the tables)
from app.db.base import Base
from app.db.migrate import alembic_config, upgrade
from app.db.session import make_engine
from tests.services import postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.sqlite'}"
    else:
        with postgres_database() as url:
            yield url


def test_migrations_match_the_models_and_downgrade(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            drift = compare_metadata(ctx, Base.metadata)
        assert drift == [], f"models and migrations differ: {drift}"

        command.downgrade(alembic_config(database_url), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(database_url)  # and up again: the history is repeatable
        assert {"jobs", "checkpoints", "datasets", "api_keys"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()
