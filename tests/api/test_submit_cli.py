"""`cartl submit`: parameters as the CLI's own options take them, and a refused job that
uploads nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.cli import job_params
from cartl_core.errors import CartlError
from tests.api.live import Server, live_api
from tests.services import ROOT, write_checkpoint, write_npz


def test_param_values_read_like_cli_options() -> None:
    params = job_params(
        "transfer",
        ["k=4", "method=cartl", "audit-eps=8/255,0.1", "no_audit=true", "audit_alpha=1/255"],
    )
    assert params == {
        "k": 4,
        "method": "cartl",
        "audit_eps": [pytest.approx(8 / 255), 0.1],
        "no_audit": True,
        "audit_alpha": pytest.approx(1 / 255),
    }
    assert job_params("audit", ["eps=[0.1, 0.2]"]) == {"eps": [0.1, 0.2]}
    assert job_params("audit", ["eps=8/255"]) == {"eps": [pytest.approx(8 / 255)]}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("k=four", "-p k: 'four' is not an integer"),
        ("method=best", "-p method: 'best' is not one of standard, neft, cartl, lwf"),
        ("audit_eps=eight", "not a number or a fraction like 8/255"),
        ("lr=nan", "-p lr: 'nan' is not a finite number"),
        ("kk=3", "-p kk: not a parameter of a transfer job; known:"),
        ("k", "write NAME=VALUE"),
    ],
)
def test_a_bad_param_is_named_with_what_to_write(text: str, says: str) -> None:
    with pytest.raises(CartlError, match=re.escape(says)):
        job_params("transfer", [text])


def _submit(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """``cartl submit ARGS`` as a user runs it against ``srv`` (key and server from the env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env.update(CARTL_SERVER=srv.url, CARTL_API_KEY=srv.key)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "submit", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_refused_submit_uploads_nothing_and_says_why_once(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "m.safetensors")
    data = write_npz(tmp_path / "d.npz", classes=3, n_train=64, n_test=32)
    (tmp_path / "srv").mkdir()
    with live_api(tmp_path / "srv") as srv:
        done = _submit(srv, "transfer", "--checkpoint", str(src), "--dataset", str(data),
                       "-p", "k=0")  # fmt: skip
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "k" in lines[0]
        for what in ("checkpoints", "datasets"):
            listed = httpx.get(f"{srv.url}/v1/{what}", headers=srv.headers()).json()
            assert listed["items"] == [], what


def test_a_second_submit_reuses_the_uploads_and_says_so(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "m.safetensors")
    data = write_npz(tmp_path / "d.npz", classes=3, n_train=64, n_test=32)
    (tmp_path / "srv").mkdir()
    with live_api(tmp_path / "srv") as srv:
        args = ("audit", "--checkpoint", str(src), "--dataset", str(data), "-p", "limit=8")
        runs = [_submit(srv, *args) for _ in range(2)]
        assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
        assert runs[0].stderr.count("uploaded ") == 2
        assert runs[1].stderr.count("was uploaded before") == 2, runs[1].stderr
        for what in ("checkpoints", "datasets"):
            listed = httpx.get(f"{srv.url}/v1/{what}", headers=srv.headers()).json()
            assert len(listed["items"]) == 1, what
