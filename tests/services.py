"""Real servers for the service tests: a throw-away Postgres database, Redis, a private
redis-server, and ``celery worker`` processes.

Where a server is missing the tests that need it skip and say why, unless
``CARTL_REQUIRE_SERVICES=1`` (CI sets it), in which case they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# Where the local servers are; any database the URL names works as the admin connection.
POSTGRES_URL = os.environ.get(
    "CARTL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_BASE = os.environ.get("CARTL_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")


def redis_url(db: int) -> str:
    """A Redis database of its own for each suite (api 15, worker 14, e2e 13, bench 12)."""
    return f"{REDIS_BASE}/{db}"


REDIS_URL = redis_url(14)


def unavailable(what: str) -> None:
    if os.environ.get("CARTL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} (CARTL_REQUIRE_SERVICES=1: these tests may not be skipped)")
    pytest.skip(what)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty database; dropped afterwards. Yields its SQLAlchemy URL."""
    import sqlalchemy as sa

    admin = sa.create_engine(
        POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        unavailable(f"Postgres is not reachable at {POSTGRES_URL}: {str(exc).splitlines()[0]}")
    name = f"cartl_test_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def redis_ready(url: str = REDIS_URL) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        unavailable(f"Redis not reachable at {url}: {exc}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own on a free port, to stop and start at will."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            unavailable("redis-server is not installed")
        self.exe = str(exe)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: _connects(self.port), 10, "private redis-server to start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(cond: Callable[[], object], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def service_env(settings: Settings, python_path: tuple[Path, ...] = ()) -> dict[str, str]:
    """The CARTL_* environment that gives a child process ``settings``; ``python_path``: more
    folders to import from (packages a test installs that way)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env.update(
        CARTL_DATA_DIR=str(settings.data_dir),
        CARTL_DATABASE_URL=settings.resolved_database_url,
        CARTL_BROKER_URL=settings.resolved_broker_url,
        CARTL_STORAGE_DIR=str(settings.resolved_storage_dir),
        CARTL_QUEUE=settings.queue,
        CARTL_DEVICE=settings.device,
        CARTL_HEARTBEAT_S=str(settings.heartbeat_s),
        CARTL_STALE_AFTER_S=str(settings.stale_after_s),
        CARTL_SWEEP_INTERVAL_S=str(settings.sweep_interval_s),
        CARTL_PROGRESS_INTERVAL_S=str(settings.progress_interval_s),
        CARTL_MAX_ATTEMPTS=str(settings.max_attempts),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(map(str, (ROOT, *python_path))),
    )
    if settings.storage_url:
        env.update(
            CARTL_STORAGE_URL=settings.storage_url,
            CARTL_STATE_SYNC_S=str(settings.state_sync_s),
            CARTL_STORAGE_PART_BYTES=str(settings.storage_part_bytes),
        )
    if settings.scratch_dir is not None:
        env["CARTL_SCRATCH_DIR"] = str(settings.scratch_dir)
    if settings.job_processes != 1:
        env["CARTL_JOB_PROCESSES"] = str(settings.job_processes)
    return env


class WorkerProcess:
    """``celery -A worker.celery_app worker -Q QUEUE``, exactly as docker compose runs it."""

    def __init__(self, settings: Settings, log: Path, python_path: tuple[Path, ...] = ()) -> None:
        self.settings = settings
        self.log_path = log
        self.python_path = python_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        cmd = [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "-Q", self.settings.queue, "--concurrency", "1", "--loglevel", "INFO",
            "--hostname", f"test-{secrets.token_hex(3)}@%h", "--without-gossip",
            "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=service_env(self.settings, self.python_path),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once: no chance to hand anything back."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def write_npz(path: Path, *, classes: int = 4, n_train: int = 512, n_test: int = 128,
              size: int = 8, seed: int = 0) -> Path:  # fmt: skip
    """A learnable 1-channel dataset: class templates plus noise, uint8 NHWC."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0.2, 0.8, (classes, size, size, 1))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % classes
        x = templates[y] + 0.15 * rng.standard_normal((n, size, size, 1))
        return (np.clip(x, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def write_checkpoint(path: Path, *, classes: int = 3, size: int = 8, seed: int = 0) -> Path:
    """A small-cnn source checkpoint (random weights) for 1-channel ``size`` x ``size`` input."""
    import torch

    from cartl_core import create_model, save_checkpoint

    torch.manual_seed(seed)
    model = create_model("small-cnn", classes, in_channels=1, input_size=size)
    save_checkpoint(model, path, training={"kind": "test"})
    return path


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path`` (a new folder), for full and read-only
    disks; mounting needs root, which CI has: elsewhere the test skips."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    """Turn a :func:`tmpfs` read-only (``"ro"``) or writable again (``"rw"``)."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def processes_of(data_dir: Path) -> list[tuple[int, int, bytes]]:
    """Live processes (not zombies) started with ``CARTL_DATA_DIR=data_dir``: (process id,
    process group, command line) each."""
    wanted = {f"CARTL_DATA_DIR={d}".encode() for d in (data_dir, data_dir.resolve())}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
            env = set((proc / "environ").read_bytes().split(b"\0"))
            cmd = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and wanted & env:
            found.append((int(proc.name), int(fields[2]), cmd))
    return found


class S3Server:
    """moto's standalone S3 API server (``moto_server``), a process of its own over HTTP: the
    same requests, status codes and error bodies a bucket gives, without an account. ``auth``:
    refuse requests whose access key moto's IAM does not know (every key here)."""

    def __init__(self, *, auth: bool = False) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        if not exe.exists():
            unavailable("moto_server is not installed (pip install 'moto[server]')")
        self.exe = str(exe)
        self.port = free_port()
        self.auth = auth
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        env = dict(os.environ)
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.proc = subprocess.Popen(
            [self.exe, "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _connects(self.port), 20, "moto_server to start")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


#: What the tests' S3 clients use: moto takes any key unless started with ``auth``.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "cartl-test",
    "AWS_SECRET_ACCESS_KEY": "cartl-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_client(endpoint: str) -> object:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_ENV["AWS_REGION"],
    )
