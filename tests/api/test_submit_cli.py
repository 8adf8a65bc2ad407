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
        ("k", "-p takes NAME=VALUE (e.g. -p k=4); got 'k'"),
    ],
)
def test_a_bad_param_is_named_with_what_to_write(text: str, says: str) -> None:
    with pytest.raises(CartlError, match=re.escape(says)):
        job_params("transfer", [text])


def _cartl(srv: Server | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``cartl ARGS`` as a user runs it against ``srv`` (key and server from the env); with no
    server, against an address where nothing answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env.update(CARTL_SERVER=srv.url if srv else "http://127.0.0.1:9",
               CARTL_API_KEY=srv.key if srv else "cartl_no-server")  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _submit(srv: Server | None, *args: str) -> subprocess.CompletedProcess[str]:
    return _cartl(srv, "submit", *args)


def test_a_value_neither_a_file_nor_an_id_is_no_such_file(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "d.npz", classes=3, n_train=64, n_test=32)
    for args, missing in (
        (["--checkpoint", "nothere.pt", "--dataset", str(data)], "nothere.pt"),
        (["--dataset", str(tmp_path / "none.npz")], str(tmp_path / "none.npz")),
    ):
        done = _submit(None, "transfer", *args)
        # Said before anything is sent: the server's address answers nothing.
        assert (done.returncode, done.stderr) == (2, f"cartl: error: no such file: {missing}\n")


def test_a_param_without_its_value_is_one_line_naming_it() -> None:
    done = _submit(None, "audit", "--dataset", "ds_1", "-p", "epochs", "2")
    assert done.returncode == 2
    assert done.stderr == "cartl submit: error: -p takes NAME=VALUE (e.g. -p k=4); got 'epochs'\n"


def test_a_servers_refusal_is_said_once(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "d.npz", classes=3, n_train=64, n_test=32)
    (tmp_path / "srv").mkdir()
    with live_api(tmp_path / "srv") as srv:
        listed = _cartl(srv, "jobs", "list", "--limit", "1000")
        submitted = _submit(srv, "audit", "--checkpoint", "ckpt_0123", "--dataset", str(data))
    for done, said in ((listed, "limit: "), (submitted, "no checkpoint with id 'ckpt_0123'")):
        assert done.returncode != 0
        error = done.stderr.strip().splitlines()[-1]
        assert error.startswith("cartl: error: HTTP 422: "), done.stderr
        assert error.count(said) == 1, error


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


def test_submit_uploads_the_dataset_with_the_resize_it_names(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "m.safetensors")
    data = write_npz(tmp_path / "d.npz", classes=3, n_train=64, n_test=32)
    # Said before anything is sent: a resize of a dataset already uploaded, or a method alone.
    for extra, said in (
        (["--dataset", "ds_0123", "--dataset-resize", "16"], "-p resize=SIDE"),
        (["--dataset", str(data), "--dataset-resize-method", "area"], "needs --dataset-resize"),
    ):
        done = _submit(None, "audit", "--checkpoint", str(src), *extra)
        assert done.returncode == 2
        assert said in done.stderr
    (tmp_path / "srv").mkdir()
    with live_api(tmp_path / "srv") as srv:
        args = ("audit", "--checkpoint", str(src), "--dataset", str(data), "-p", "limit=8",
                "--dataset-resize", "16", "--dataset-resize-method", "nearest")  # fmt: skip
        runs = [_submit(srv, *args) for _ in range(2)]
        assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
        assert runs[1].stderr.count("was uploaded before") == 2, runs[1].stderr
        (dataset,) = httpx.get(f"{srv.url}/v1/datasets", headers=srv.headers()).json()["items"]
        assert dataset["resize"] == {"size": 16, "method": "nearest"}
        assert dataset["input_shape"] == [1, 16, 16]
