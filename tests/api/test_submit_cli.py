"""`cartl submit`: parameters as the CLI's own options take them, and a refused job that
uploads nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from app.cli import _param
from tests.api.live import live_api
from tests.services import ROOT, write_checkpoint, write_npz


def test_param_values_read_like_cli_options() -> None:
    assert _param("k=4") == ("k", 4)
    assert _param("method=cartl") == ("method", "cartl")
    assert _param("eps=8/255") == ("eps", "8/255")
    assert _param("audit-eps=8/255,0.1") == ("audit_eps", ["8/255", 0.1])
    assert _param("eps=[0.1, 0.2]") == ("eps", [0.1, 0.2])


def test_a_refused_submit_uploads_nothing_and_says_why_once(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "m.safetensors")
    data = write_npz(tmp_path / "d.npz", classes=3, n_train=64, n_test=32)
    (tmp_path / "srv").mkdir()
    with live_api(tmp_path / "srv") as srv:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
        env.update(CARTL_SERVER=srv.url, CARTL_API_KEY=srv.key)
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "submit", "transfer", "--checkpoint", str(src),
             "--dataset", str(data), "-p", "k=0"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "k" in lines[0]
        for what in ("checkpoints", "datasets"):
            listed = httpx.get(f"{srv.url}/v1/{what}", headers=srv.headers()).json()
            assert listed["items"] == [], what
