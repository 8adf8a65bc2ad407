"""schemathesis, every check, against a live server: zero failures.

The schema is the contract a client codes against; the fuzzer sends what it allows and what it
does not (wrong types, missing fields, odd encodings, stateful sequences) and checks every answer
against it: no 5xx, documented status codes, content types and headers, bodies that match their
schema, schema-valid input accepted (bar the documented semantic 422s in schemathesis.toml),
invalid input refused. Real ids (a checkpoint, a dataset, a queued job) are supplied so the
operations on one object run past their 404.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.api.live import live_api
from tests.services import ROOT, write_checkpoint, write_npz

pytestmark = pytest.mark.timeout(600)

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    with live_api(tmp_path) as srv:
        auth = srv.headers()
        with httpx.Client(base_url=srv.url, headers=auth, timeout=120) as http:
            src = write_checkpoint(tmp_path / "m.safetensors")
            data = write_npz(tmp_path / "d.npz", classes=3, n_train=64, n_test=32)
            file = {"file": ("m.safetensors", src.read_bytes())}
            ckpt = http.post("/v1/checkpoints", files=file).json()["id"]
            ds = http.post("/v1/datasets", files={"file": ("d.npz", data.read_bytes())}).json()[
                "id"
            ]
            job = http.post(
                "/v1/jobs", json={"kind": "audit", "checkpoint_id": ckpt, "dataset_id": ds}
            ).json()["id"]
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            CONFIG.read_text()
            + f'\n[parameters]\ncheckpoint_id = "{ckpt}"\ndataset_id = "{ds}"\njob_id = "{job}"\n'
        )
        env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
        done = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
             f"{srv.url}/openapi.json", "-H", f"Authorization: Bearer {srv.key}",
             "--checks", "all", "--workers", "1", "--max-examples", "10", "--seed", "1",
             "--suppress-health-check", "all"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=540,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
