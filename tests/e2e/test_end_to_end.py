"""A whole job, as a user runs it, twice: on the embedded defaults (``cartl serve``) and on the
team stack (the docker compose services' own commands, run natively against Postgres and
Redis). Upload a checkpoint and a dataset, run a transfer job, poll, download the weights, load
and audit them locally, and check that the numbers match what the API reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.settings import Settings
from app.storage.s3 import S3Storage
from cartl_core import read_description
from tests.services import (
    ROOT,
    free_port,
    postgres_database,
    processes_of,
    redis_ready,
    redis_url,
    service_env,
    wait_for,
    write_checkpoint,
    write_npz,
)

pytestmark = pytest.mark.timeout(420)

CARTL = [sys.executable, "-m", "app.cli"]
TRANSFER = ["-p", "method=cartl", "-p", "k=2", "-p", "epochs=3", "-p", "batch_size=64",
            "-p", "lr=0.05", "-p", "augment=none", "-p", "audit_steps=5",
            "-p", "audit_attacks=fast"]  # fmt: skip


class Proc:
    """A long-running child whose output goes to a file (read back when something fails)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)


def _cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [*CARTL, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"cartl {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _run_job_as_a_user(url: str, key: str, tmp: Path, env: dict[str, str]) -> None:
    env = {**env, "CARTL_SERVER": url, "CARTL_API_KEY": key}
    src = write_checkpoint(tmp / "source.safetensors")
    data = write_npz(tmp / "target.npz", n_train=512)

    job_id = _cli(
        ["submit", "transfer", "--checkpoint", str(src), "--dataset", str(data), *TRANSFER,
         "--watch"], env,
    ).splitlines()[0]  # fmt: skip
    job = httpx.get(f"{url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()
    assert job["status"] == "succeeded", job
    assert job["progress"]["fraction"] == 1.0
    metrics = httpx.get(
        f"{url}/v1/jobs/{job_id}/metrics", headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]

    out = tmp / "downloaded.safetensors"
    _cli(["jobs", "download", job_id, "-o", str(out)], env)
    description = read_description(out)
    assert description is not None
    assert description["metrics"]["robust_accuracy"] == job["metrics"]["robust_accuracy"]
    assert description["training"]["method"] == "cartl"

    # Locally: the clean accuracy is deterministic and must equal the API's exactly.
    local = json.loads(
        _cli(["audit", "--checkpoint", str(out), "--data", str(data), "--steps", "5",
              "--square-queries", "200", "--json",
              "--device", "cpu"], env)
    )  # fmt: skip
    assert local["clean_accuracy"] == job["metrics"]["clean_accuracy"]

    # An audit job on the server with the same settings and seed gives the local numbers.
    audit_id = _cli(
        ["submit", "audit", "--checkpoint", str(out), "--dataset", str(data), "-p", "steps=5",
         "-p", "square_queries=200",
         "--watch"], env,
    ).splitlines()[0]  # fmt: skip
    audited = httpx.get(
        f"{url}/v1/jobs/{audit_id}", headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert audited["metrics"]["clean_accuracy"] == local["clean_accuracy"]
    assert audited["metrics"]["robust_accuracy"] == local["robust_accuracy"]
    assert 0 <= local["robust_accuracy"] <= local["clean_accuracy"]

    # Plots: one job's curves and audit; two jobs side by side.
    _cli(["jobs", "plot", job_id, "-o", str(tmp / "job.png")], env)
    _cli(["jobs", "plot", job_id, audit_id, "-o", str(tmp / "compare.png")], env)
    for png in ("job.png", "compare.png"):
        assert (tmp / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The readable report: the same page the API serves, with the job's provenance.
    _cli(["jobs", "report", job_id, "-o", str(tmp / "report.html")], env)
    page = (tmp / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert hashlib.sha256(data.read_bytes()).hexdigest() in page


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """``cartl serve`` with nothing configured but its data folder and port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env.update(CARTL_DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    serve = Proc([*CARTL, "serve", "--port", str(port)], env, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url), 90, "cartl serve to answer")
        found = re.search(r"admin API key[^:]*: (\S+)", serve.text())
        assert found, serve.text()
        yield url, found.group(1), env
    except BaseException:
        print(serve.text()[-5000:])
        raise
    finally:
        serve.stop()
    # Stopping `cartl serve` stops the worker it started: nothing outlives it.
    wait_for(lambda: not processes_of(tmp_path / "data"), 60, "serve's worker to stop")


def test_embedded_defaults_end_to_end(
    embedded: tuple[str, str, dict[str, str]], tmp_path: Path
) -> None:
    url, key, env = embedded
    _run_job_as_a_user(url, key, tmp_path, env)
    assert (tmp_path / "data" / "cartl.sqlite").is_file()
    _assert_owner_only(tmp_path / "data")


def _assert_owner_only(data_dir: Path) -> None:
    """What `cartl serve` and its worker made (database, broker, uploads, a job's output) is
    their user's alone: folders 0700, files 0600."""
    modes = {}
    for path in [data_dir, *data_dir.rglob("*")]:
        try:
            modes[path.relative_to(data_dir).as_posix()] = path.lstat().st_mode
        except FileNotFoundError:
            continue  # a temporary file that went meanwhile
    names = {name.rpartition("/")[2] for name in modes}
    made = {"cartl.sqlite", "cartl.sqlite-wal", "cartl.sqlite-shm", "broker.sqlite"}
    assert made | {"weights.safetensors"} <= names, sorted(modes)
    assert any(name.startswith("artifacts/checkpoints/") for name in modes), sorted(modes)
    loose = {
        name: oct(stat.S_IMODE(mode))
        for name, mode in modes.items()
        if stat.S_IMODE(mode) != (0o700 if stat.S_ISDIR(mode) else 0o600)
    }
    assert not loose, loose


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return cmd if isinstance(cmd, list) else cmd.split()


def test_compose_services_run_natively_end_to_end(tmp_path: Path, s3_endpoint: str) -> None:
    """The compose file's migrate, storage-init, api and worker commands, against local Postgres
    and Redis and an S3 server (moto_server, standing in for the compose file's MinIO)."""
    redis_ready(redis_url(13))
    compose = _compose()
    services = compose["services"]
    assert compose["x-cartl-env"]["CARTL_STORAGE_URL"].endswith("-s3://cartl/artifacts}")
    bucket = f"cartl-e2e-{secrets.token_hex(4)}"
    with postgres_database() as db:
        port = free_port()
        settings = Settings(
            data_dir=tmp_path,
            database_url=db,
            broker_url=redis_url(13),
            storage_dir=tmp_path / "artifacts",
            storage_url=f"s3://{bucket}/artifacts",
            scratch_dir=tmp_path / "scratch",
            device="cpu",
        )
        env = service_env(settings)
        for init in ("migrate", "storage-init"):  # the second makes the bucket
            done = subprocess.run(
                _command(services[init]), env=env, cwd=ROOT, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
        api_cmd = [str(port) if part == "8000" else part for part in _command(services["api"])]
        assert "uvicorn" in api_cmd[0]
        assert str(port) in api_cmd
        procs = [
            Proc(api_cmd, env, tmp_path / "api.log"),
            Proc(_command(services["worker"]), env, tmp_path / "worker.log"),
        ]
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _healthy(url), 60, "the api service to answer")
            ready = httpx.get(f"{url}/readyz", timeout=10)
            assert ready.status_code == 200, ready.text
            # The compose api serves the dashboard too (tests/ui drives it in a browser).
            ui = httpx.get(f"{url}/ui", timeout=10)
            assert ui.status_code == 200
            assert "app.js" in ui.text
            key = _cli(["keys", "create", "--name", "compose-e2e"], env).strip()
            _run_job_as_a_user(url, key, tmp_path, env)
            # Everything went to the bucket; nothing of an artifact stayed on this machine.
            stored = S3Storage(settings.storage_url or "")
            assert stored.folders("jobs")
            assert stored.folders("datasets")
            assert not (tmp_path / "artifacts").exists()
            # The scratch folder holds no job's files; the worker's input cache stays.
            assert [p.name for p in (tmp_path / "scratch").iterdir()] == ["cartl-inputs"]
        except BaseException:
            for p in procs:
                print(p.log.name, p.text()[-4000:])
            raise
        finally:
            for p in procs:
                p.stop()
            time.sleep(0.5)
