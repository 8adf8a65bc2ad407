"""The embedded SQLite database: durable commits, and a damaged file refused at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.db.migrate import upgrade
from app.db.session import DamagedDatabaseError, check_integrity, make_engine
from tests.services import ROOT


def _damage(path: Path) -> None:
    """Overwrite the middle of the file (table pages, not the header) with garbage."""
    data = bytearray(path.read_bytes())
    assert len(data) > 4 * 4096, "expected a database of several pages"
    for i in range(2 * 4096, len(data) - 4096, 512):
        data[i : i + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))


def _database(tmp_path: Path) -> Path:
    path = tmp_path / "cartl.sqlite"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        for i in range(300):
            conn.execute(
                sa.text("INSERT INTO api_keys (id, name, key_hash, admin, created_at) "
                        "VALUES (:id, 'x', :h, 0, CURRENT_TIMESTAMP)"),
                {"id": f"key_{i:05d}", "h": f"{i:064x}"},
            )  # fmt: skip
    # Into the main file, so the damage below hits the rows.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def test_a_healthy_database_passes_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    path = _database(tmp_path)
    engine = make_engine(f"sqlite:///{path}")
    check_integrity(engine)
    engine.dispose()
    _damage(path)
    engine = make_engine(f"sqlite:///{path}")
    with pytest.raises(DamagedDatabaseError, match=r"is damaged .*Restore it from a backup"):
        check_integrity(engine)
    engine.dispose()


def test_cartl_serve_refuses_a_damaged_database_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = _database(data)
    _damage(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env["CARTL_DATA_DIR"] = str(data)
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", "1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("cartl: error: the SQLite database")
    assert "damaged" in lines[0]
