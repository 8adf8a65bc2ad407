"""``cartl serve`` as a process, crashed on purpose: its worker never outlives it, a restart
never runs two workers, and a job asked to cancel before a crash ends cancelled without holding
back the jobs requeued with it."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.db.migrate import upgrade
from app.db.models import JobStatus
from tests.services import ROOT, WorkerProcess, free_port, processes_of, wait_for
from tests.worker.stack import Stack, add_inputs, add_job, fast_settings, make_stack

pytestmark = pytest.mark.timeout(300)


@dataclass
class Serve:
    """``cartl serve`` on a data folder, started and restarted by the test."""

    data: Path
    tmp: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.tmp / f"serve{self.runs}.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
        env.update(
            CARTL_DATA_DIR=str(self.data), CARTL_DEVICE="cpu", CARTL_HEARTBEAT_S="0.3",
            CARTL_SWEEP_INTERVAL_S="0.5", CARTL_PROGRESS_INTERVAL_S="0.2",
            OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
        )  # fmt: skip
        return env

    def start(self, wait: bool = True) -> Serve:
        before = self.worker_pid()  # a killed server's file stays until the next one starts
        self.runs += 1
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                env=self.env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if wait:
            wait_for(self.healthy, 90, f"cartl serve to answer; log:\n{self.text()}")
            wait_for(lambda: self.worker_pid() not in (None, before), 30, "serve's worker to start")
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def worker_pid(self) -> int | None:
        try:
            return int((self.data / "worker.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def key(self) -> str:
        found = re.search(r"admin API key[^:]*: (\S+)", (self.tmp / "serve1.log").read_text())
        assert found
        return found.group(1)

    def kill(self) -> None:
        """SIGKILL the server process alone: not its worker, which is in its own group."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def _group_alive(pgid: int) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _gone(pgid: int) -> Callable[[], bool]:
    return lambda: not _group_alive(pgid)


def _serving_workers(data: Path) -> list[int]:
    """Live ``worker.embedded`` main processes (each leads its own group) on ``data``."""
    found = processes_of(data)
    return [pid for pid, pgid, cmd in found if b"worker.embedded" in cmd and pid == pgid]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    server = Serve(tmp_path / "data", tmp_path)
    try:
        yield server
    finally:
        server.stop()
        for pid in _serving_workers(server.data):
            os.killpg(pid, signal.SIGKILL)


def test_the_worker_dies_with_its_server_and_a_restart_ends_a_leftover(serve: Serve) -> None:
    serve.start()
    first = serve.worker_pid()
    assert first is not None
    assert _serving_workers(serve.data) == [first]
    serve.kill()
    wait_for(lambda: not _group_alive(first), 10, "the worker to end with its server")

    # A worker that could not notice (stopped, here) is ended by the next start.
    serve.start()
    second = serve.worker_pid()
    assert second is not None
    assert second != first
    os.killpg(second, signal.SIGSTOP)
    serve.kill()
    assert _group_alive(second)
    serve.start()
    assert f"ended the worker (process {second})" in serve.text()
    assert not _group_alive(second)
    third = serve.worker_pid()
    assert _serving_workers(serve.data) == [third]

    # A second server on the same folder is refused, in one line, and ends nothing.
    other = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())],
        env=serve.env(), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert other.returncode != 0
    assert "another `cartl serve`" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert _serving_workers(serve.data) == [third]


def test_a_cancel_asked_before_a_crash_ends_cancelled_and_recovery_goes_on(
    serve: Serve, tmp_path: Path
) -> None:
    """Two jobs run (one on serve's worker, one on a second worker); the first is asked to
    cancel while neither worker can act on it; then everything is killed and serve restarts.
    The first ends cancelled at once; the second is sent again and finishes from its last
    epoch. (The requeued, cancel-requested job used to stay queued for ever and stop every
    sweep at itself, so the second was never sent again.)"""
    serve.start()
    settings = fast_settings(
        serve.data, f"sqlite:///{(serve.data / 'cartl.sqlite').resolve()}",
        f"sqla+sqlite:///{(serve.data / 'broker.sqlite').resolve()}", queue="gpu",
    )  # fmt: skip
    upgrade(settings.resolved_database_url)
    for st in make_stack(settings, tmp_path):
        try:
            _crash_after_cancel(serve, st)
        except AssertionError:
            print(serve.text()[-4000:], *(w.log() for w in st.workers), sep="\n")
            raise


def _freeze(groups: tuple[int, ...], database: Path) -> None:
    """SIGSTOP the process groups at a moment none of them holds the database's write lock.

    A process stopped inside a write transaction keeps SQLite's lock, so every later write would
    wait out the busy timeout: a crash (SIGKILL) releases it, a freeze does not. The freeze
    stands in for a worker that cannot act, not for one that blocks the database."""
    for _ in range(100):
        for pgid in groups:
            os.killpg(pgid, signal.SIGSTOP)
        if _writable(database):
            return
        for pgid in groups:
            os.killpg(pgid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the workers held the database's write lock at every try")


def _writable(database: Path) -> bool:
    connection = sqlite3.connect(database, timeout=0.5)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


def _crash_after_cancel(serve: Serve, st: Stack) -> None:
    ckpt, ds = add_inputs(st)
    # The admin key's own jobs, so it may cancel them.
    # The first runs far longer than the test: it ends only by its cancel.
    first = add_job(st, ckpt, ds, owner="admin", epochs=5000, method="neft")
    second = add_job(st, ckpt, ds, owner="admin", epochs=30, method="neft")
    # Only once serve's worker has declared the queue: kombu's SQL transport fails a worker that
    # declares a new queue at the same moment as another (a unique-name race on its table).
    wait_for(lambda: len(st.job(first).history) >= 1, 180, "the first job to run an epoch")
    extra = WorkerProcess(st.settings, st.tmp / "extra-worker.log").start()
    st.workers.append(extra)
    wait_for(
        lambda: all(len(st.job(j).history) >= 1 for j in (first, second)),
        180,
        "both jobs to finish an epoch",
    )

    serve_worker, extra_worker = serve.worker_pid(), extra.proc.pid if extra.proc else None
    assert serve_worker is not None
    assert extra_worker is not None
    groups = (serve_worker, extra_worker)
    _freeze(groups, serve.data / "cartl.sqlite")
    answer = httpx.post(
        f"{serve.url}/v1/jobs/{first}/cancel",
        headers={"Authorization": f"Bearer {serve.key()}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["cancel_requested"] is True
    done_before = len(st.job(second).history)
    assert st.job(second).status == "running"  # caught mid-run, as the crash must find it
    serve.kill()
    extra.kill()
    wait_for(_gone(groups[1]), 20, "the second worker to be gone")

    # Serve's own worker, stopped, could not see its server die: the restart ends it.
    serve.start()
    assert not _group_alive(groups[0])
    job = st.wait_status(first, JobStatus.cancelled, JobStatus.succeeded, timeout=30)
    assert job.status == "cancelled"
    job = st.wait_status(second, JobStatus.succeeded, JobStatus.failed, timeout=180)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert [h["epoch"] for h in job.history] == list(range(1, 31))
    assert done_before >= 1
