"""The migrations ship in the wheel: a normal (non-editable) install upgrades a database without
the source checkout, and the checkout's ``alembic.ini`` still works for developers."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from app.db import models  # noqa: F401  (the tables)
from app.db.base import Base

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "migrations"
# What the wheel is built from: the project metadata and the packages it names.
SOURCES = ("pyproject.toml", "README.md", "app", "cartl_core", "worker", "migrations")


def _pip(*args: str, timeout: float = 120) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the project, built offline from a copy of the sources.

    A copy, so that the build's ``build/`` and ``*.egg-info`` (and stale files a previous build
    left there) are not in the checkout.
    """
    src = tmp_path_factory.mktemp("src")
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=junk)
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(src))
    (built,) = out.glob("cartl-*.whl")
    return built


@pytest.mark.timeout(120)
def test_the_wheel_ships_the_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    versions = sorted(p.name for p in (MIGRATIONS / "versions").glob("*.py"))
    assert any(v != "__init__.py" for v in versions)
    expected = {
        "migrations/__init__.py",
        "migrations/env.py",
        "migrations/script.py.mako",
        *(f"migrations/versions/{v}" for v in versions),
    }
    assert expected <= names, f"missing from {wheel.name}: {sorted(expected - names)}"


@pytest.mark.timeout(120)
def test_an_installed_wheel_upgrades_a_fresh_database(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel))
    work = tmp_path / "cwd"  # neither the checkout nor the install: nothing importable from here
    work.mkdir()
    db = tmp_path / "fresh.sqlite"
    script = textwrap.dedent(
        f"""
        import json, sys
        import app, migrations
        from app.db.migrate import migrations_dir, upgrade
        upgrade({f"sqlite:///{db}"!r})
        print(json.dumps({{
            "app": app.__file__,
            "migrations": migrations.__file__,
            "script_location": str(migrations_dir()),
            "path": sys.path,
        }}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARTL_", "PYTHON", "ALEMBIC"))}
    env["PYTHONPATH"] = str(target)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    where = json.loads(proc.stdout.strip().splitlines()[-1])
    installed = target.resolve()
    for key in ("app", "migrations", "script_location"):
        assert Path(where[key]).resolve().is_relative_to(installed), (key, where)
    assert str(ROOT) not in where["path"]

    assert set(Base.metadata.tables) | {"alembic_version"} <= _tables(db)


@pytest.mark.timeout(120)
def test_the_checkout_alembic_ini_still_works(tmp_path: Path) -> None:
    """Developers run plain ``alembic`` in the checkout (the URL from CARTL_DATABASE_URL)."""
    alembic = Path(sys.executable).with_name("alembic")
    if not alembic.exists():
        pytest.skip("no alembic script beside the interpreter")
    db = tmp_path / "dev.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env["CARTL_DATABASE_URL"] = f"sqlite:///{db}"
    proc = subprocess.run(
        [str(alembic), "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(Base.metadata.tables) | {"alembic_version"} <= _tables(db)


@pytest.mark.timeout(120)
def test_the_wheel_ships_the_dashboard(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    expected = {f"app/ui/{p.name}" for p in (ROOT / "app" / "ui").iterdir() if p.is_file()}
    assert {"app/ui/index.html", "app/ui/app.js"} <= expected
    assert expected <= names, f"missing from {wheel.name}: {sorted(expected - names)}"
