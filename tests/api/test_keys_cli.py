"""`cartl keys create|list|revoke` on the embedded database, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import ROOT


def _cartl(tmp: Path, *args: str, command: str = "keys") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env["CARTL_DATA_DIR"] = str(tmp)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", command, *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An embedded deployment's data folder, as `cartl serve` (or `cartl db upgrade`) makes it."""
    assert _cartl(tmp_path, "upgrade", command="db").returncode == 0
    return tmp_path


def test_keys_refuse_a_folder_with_no_database(tmp_path: Path) -> None:
    elsewhere = tmp_path / "not-the-server"
    done = _cartl(elsewhere, "create", "--name", "alice")
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1
    assert "no CARTL database in" in done.stderr
    assert str(elsewhere) in done.stderr
    assert not elsewhere.exists()  # nothing made behind the operator's back


def test_create_list_revoke(data_dir: Path) -> None:
    made = _cartl(data_dir, "create", "--name", "alice")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("cartl_")
    assert "\n" not in secret  # the key alone, ready for $(...)

    listed = _cartl(data_dir, "list")
    assert listed.returncode == 0, listed.stderr
    assert "alice" in listed.stdout
    assert secret not in listed.stdout  # never shown again
    key_id = listed.stdout.split()[0]

    assert _cartl(data_dir, "revoke", key_id).returncode == 0
    assert "revoked" in _cartl(data_dir, "list").stdout


def test_bad_input_is_one_line_and_non_zero(data_dir: Path) -> None:
    for args in (("revoke", "key_nope"), ("create", "--name", " ")):
        done = _cartl(data_dir, *args)
        assert done.returncode == 2, done
        assert done.stderr.count("\n") == 1
        assert "Traceback" not in done.stderr
