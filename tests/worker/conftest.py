"""The worker tests' fixture: the stack on each broker the service supports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import REDIS_URL, postgres_database, redis_ready
from tests.worker.stack import Stack, fast_settings, make_stack


@pytest.fixture(params=["redis", "embedded"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    if request.param == "redis":
        redis_ready()
        with postgres_database() as url:
            yield from make_stack(fast_settings(tmp_path, url, REDIS_URL), tmp_path)
    else:
        db = f"sqlite:///{tmp_path / 'cartl.sqlite'}"
        yield from make_stack(
            fast_settings(tmp_path, db, f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"), tmp_path
        )
