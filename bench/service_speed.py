"""Service benchmark: the API under load, queue latency, and memory while a big upload streams.

Runs the real processes the team deployment runs (``uvicorn app.main:app`` and ``celery -A
worker.celery_app worker``) against the local Postgres and Redis, in a throw-away database:

``status``
    ``GET /v1/jobs/{id}`` (key check + one row read) with ``--clients`` concurrent clients for
    ``--seconds``: requests per second, p50 and p99 latency. Reference row in the same run:
    ``GET /healthz`` (no key, no database), the framework's floor on this machine.
``queue``
    Time from ``POST /v1/jobs`` returning to the job being ``running`` with an idle worker,
    median and worst of ``--jobs`` jobs, on Redis and on the embedded SQL broker of
    ``cartl serve`` (which polls, once a second by kombu's default).
``upload``
    Resident memory of the API process while a ``--upload-mb`` MB dataset uploads: before,
    peak during the upload, and after (the upload's validation runs in a child process,
    reported on its own line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.settings import Settings  # noqa: E402
from tests.services import (  # noqa: E402
    free_port,
    postgres_database,
    redis_url,
    service_env,
    wait_for,
    write_checkpoint,
    write_npz,
)

PG = "postgresql+psycopg://postgres@127.0.0.1:5432"


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def api(settings: Settings, tmp: Path, workers: int) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = service_env(settings)
    subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--log-level", "warning",
           "--no-access-log"]  # fmt: skip
    with process(cmd, env, tmp / "api.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(url), 60, "the API")
        yield url, proc.pid


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def make_key(settings: Settings) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", "bench"],
        env=service_env(settings), check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip()


def upload_inputs(url: str, key: str, tmp: Path) -> tuple[str, str]:
    h = {"Authorization": f"Bearer {key}"}
    src = write_checkpoint(tmp / "source.safetensors")
    data = write_npz(tmp / "target.npz", classes=3, n_train=256, n_test=64)
    with src.open("rb") as f:
        ckpt = httpx.post(f"{url}/v1/checkpoints", headers=h, files={"file": f}, timeout=120)
    with data.open("rb") as f:
        ds = httpx.post(f"{url}/v1/datasets", headers=h, files={"file": f}, timeout=120)
    ckpt.raise_for_status()
    ds.raise_for_status()
    return ckpt.json()["id"], ds.json()["id"]


def post_job(url: str, key: str, ckpt: str, ds: str, **params: Any) -> dict[str, Any]:
    body = {"kind": "audit", "checkpoint_id": ckpt, "dataset_id": ds,
            "params": {"steps": 1, "limit": 8, **params}}  # fmt: skip
    r = httpx.post(f"{url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"})
    r.raise_for_status()
    job: dict[str, Any] = r.json()
    return job


# ---------------------------------------------------------------- status requests under load


async def _hammer(url: str, headers: dict[str, str], clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as http:
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                r = await http.get(url)
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: HTTP {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def load_row(name: str, url: str, headers: dict[str, str], args: argparse.Namespace) -> list[str]:
    asyncio.run(_hammer(url, headers, args.clients, 2.0))  # warm-up: connections, caches
    lat = asyncio.run(_hammer(url, headers, args.clients, args.seconds))
    q = statistics.quantiles(lat, n=100)
    return [name, f"{len(lat) / args.seconds:.0f} req/s", f"p50 {q[49] * 1e3:.1f} ms",
            f"p99 {q[98] * 1e3:.1f} ms"]  # fmt: skip


# ---------------------------------------------------------------- POST -> running


def queue_latency(url: str, key: str, ckpt: str, ds: str, factory: Any, n: int) -> list[float]:
    from app.db.models import Job

    out = []
    for _ in range(n):
        job = post_job(url, key, ckpt, ds)
        posted = time.time()
        started: list[float] = []

        def running(job_id: str = job["id"], started: list[float] = started) -> bool:
            with factory() as s:
                row = s.get(Job, job_id)
                if row is not None and row.started_at is not None:
                    started.append(row.started_at.timestamp())
                    return True
            return False

        wait_for(running, 120, "the job to start", every=0.01)
        out.append(started[0] - posted)
        wait_for(partial(_finished, factory, job["id"]), 120, "the job to end", every=0.05)
        time.sleep(1.0)  # the worker's next child process is up and idle again
    return out


def _finished(factory: Any, job_id: str) -> bool:
    from app.db.models import Job

    with factory() as s:
        row = s.get(Job, job_id)
        return row is not None and row.finished_at is not None


# ---------------------------------------------------------------- memory during an upload


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _children_rss(pid: int) -> float:
    total = 0.0
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in child.read_text().split():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total = max(total, _rss_mb(int(c)))
    return total


def upload_memory(url: str, key: str, pid: int, tmp: Path, mb: int) -> dict[str, float]:
    n = mb * 1024**2 // (32 * 32 * 3)
    path = tmp / "big.npz"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    np.savez(path, x_train=x, y_train=y, x_test=x[:1000], y_test=y[:1000])
    del x
    size_mb = path.stat().st_size / 1024**2
    before = _rss_mb(pid)
    peak, peak_child, stop = before, 0.0, threading.Event()

    def sample() -> None:
        nonlocal peak, peak_child
        while not stop.is_set():
            peak = max(peak, _rss_mb(pid))
            peak_child = max(peak_child, _children_rss(pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.perf_counter()
    with path.open("rb") as f:
        r = httpx.post(f"{url}/v1/datasets", files={"file": ("big.npz", f)},
                       headers={"Authorization": f"Bearer {key}"}, timeout=600)  # fmt: skip
    seconds = time.perf_counter() - t0
    stop.set()
    t.join()
    r.raise_for_status()
    path.unlink()
    return {"size_mb": size_mb, "before": before, "peak": peak, "after": _rss_mb(pid),
            "probe_peak": peak_child, "seconds": seconds}  # fmt: skip


# ---------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    p.add_argument("--jobs", type=int, default=5, help="jobs timed from POST to running")
    p.add_argument("--upload-mb", type=int, default=500)
    p.add_argument("--tmp", type=Path, default=ROOT / "bench" / "results" / "service-tmp")
    args = p.parse_args()
    args.tmp.mkdir(parents=True, exist_ok=True)

    from app.db.session import make_engine, make_sessionmaker
    from tests.services import WorkerProcess

    rows: list[list[str]] = []
    with postgres_database() as db:
        settings = Settings(data_dir=args.tmp, database_url=db, broker_url=redis_url(12),
                            storage_dir=args.tmp / "artifacts", device="cpu",
                            queue=f"bench-{secrets.token_hex(3)}")  # fmt: skip
        factory = make_sessionmaker(make_engine(db))
        key = make_key(settings)
        h = {"Authorization": f"Bearer {key}"}
        with api(settings, args.tmp, args.api_workers) as (url, _pid):
            ckpt, ds = upload_inputs(url, key, args.tmp)
            job = post_job(url, key, ckpt, ds)  # stays queued: no worker yet
            rows.append(load_row("GET /healthz (floor)", f"{url}/healthz", {}, args))
            rows.append(load_row("GET /v1/jobs/{id}", f"{url}/v1/jobs/{job['id']}", h, args))
            print(*(" | ".join(r) for r in rows), sep="\n", flush=True)

            worker = WorkerProcess(settings, args.tmp / "worker.log").start()
            try:
                time.sleep(8)  # worker up: torch imported, pool child forked
                lat = queue_latency(url, key, ckpt, ds, factory, args.jobs)
            finally:
                worker.stop()
            rows.append(["POST -> running (Redis)", f"median {statistics.median(lat):.2f} s",
                         f"max {max(lat):.2f} s", f"{args.jobs} jobs"])  # fmt: skip
            print(" | ".join(rows[-1]), flush=True)
        with api(settings, args.tmp, 1) as (url, pid):
            mem = upload_memory(url, key, pid, args.tmp, args.upload_mb)
            rows.append([f"API RSS, {mem['size_mb']:.0f} MB upload",
                         f"before {mem['before']:.0f} MB", f"peak {mem['peak']:.0f} MB",
                         f"after {mem['after']:.0f} MB ({mem['seconds']:.1f} s)"])  # fmt: skip
            rows.append(["validation child (peak RSS)", f"{mem['probe_peak']:.0f} MB", "", ""])
            print(" | ".join(rows[-2]), flush=True)

    emb = args.tmp / "embedded"
    emb.mkdir(exist_ok=True)
    esettings = Settings(data_dir=emb, device="cpu")
    factory = make_sessionmaker(make_engine(esettings.resolved_database_url))
    key = make_key(esettings)
    with api(esettings, emb, 1) as (url, _pid):
        ckpt, ds = upload_inputs(url, key, emb)
        worker = WorkerProcess(esettings, emb / "worker.log").start()
        try:
            time.sleep(8)
            lat = queue_latency(url, key, ckpt, ds, factory, args.jobs)
        finally:
            worker.stop()
    median = statistics.median(lat)
    rows.append(["POST -> running (embedded SQL broker)", f"median {median:.2f} s",
                 f"max {max(lat):.2f} s", f"{args.jobs} jobs"])  # fmt: skip

    print()
    print(
        f"cartl service benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
        f"{args.clients} clients x {args.seconds:.0f} s, uvicorn x{args.api_workers}"
    )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
