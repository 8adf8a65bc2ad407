"""`cartl keys create|list|revoke` on the embedded database, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.services import ROOT


def _cartl(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env["CARTL_DATA_DIR"] = str(tmp)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_create_list_revoke(tmp_path: Path) -> None:
    made = _cartl(tmp_path, "create", "--name", "alice")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("cartl_")
    assert "\n" not in secret  # the key alone, ready for $(...)

    listed = _cartl(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    assert "alice" in listed.stdout
    assert secret not in listed.stdout  # never shown again
    key_id = listed.stdout.split()[0]

    assert _cartl(tmp_path, "revoke", key_id).returncode == 0
    assert "revoked" in _cartl(tmp_path, "list").stdout


def test_bad_input_is_one_line_and_non_zero(tmp_path: Path) -> None:
    for args in (("revoke", "key_nope"), ("create", "--name", " ")):
        done = _cartl(tmp_path, *args)
        assert done.returncode == 2, done
        assert done.stderr.count("\n") == 1
        assert "Traceback" not in done.stderr
