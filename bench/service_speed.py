"""Service benchmark: the API under load, queue latency, and memory while a big upload streams.

Runs the real processes the team deployment runs (``uvicorn app.main:app`` and ``celery -A
worker.celery_app worker``) against the local Postgres and Redis, in a throw-away database:

``status``
    ``GET /v1/jobs/{id}`` (key check + one row read) under wrk (a native load generator, two
    threads) with ``--clients`` connections for ``--seconds``: requests per second, p50 and
    p99 latency, on Postgres and on the embedded SQLite database, each against ``GET /healthz``
    (no key, no database) on the same server in the same run. Target: the job read at least
    0.3 of /healthz's rate with p99 under 60 ms.
``queue``
    Time from ``POST /v1/jobs`` returning to the job being ``running`` with an idle worker,
    median and worst of ``--jobs`` jobs, on Redis and on the embedded SQL broker of
    ``cartl serve`` (which polls, once a second by kombu's default).
``serve``
    The same status read on ``cartl serve`` itself: the embedded defaults, the API beside its
    own worker and sweeper, after one finished job; ``--runs`` runs of ``--seconds`` each, every
    run against ``/healthz`` on the same server. Same target.
``upload``
    Resident memory of the API process while a ``--upload-mb`` MB dataset uploads: before,
    peak during the upload, and after (the upload's validation runs in a child process,
    reported on its own line).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

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
def api(
    settings: Settings, tmp: Path, workers: int, loop: str = "asyncio"
) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = service_env(settings)
    subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--log-level", "warning",
           "--no-access-log", "--loop", loop]  # fmt: skip
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


def _wrk(url: str, headers: dict[str, str], clients: int, seconds: float) -> dict[str, float]:
    cmd = ["wrk", "-t2", f"-c{clients}", f"-d{seconds:g}s", "--latency", url]
    for name, value in headers.items():
        cmd[1:1] = ["-H", f"{name}: {value}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"{url}: errors under load:\n{out}")
    found: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            found["rps"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            found[parts[0]] = _seconds(parts[1])
    return found


def _seconds(text: str) -> float:
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"unreadable wrk latency {text!r}")


def status_rows(
    label: str, url: str, job_url: str, headers: dict[str, str], args: argparse.Namespace
) -> list[list[str]]:
    _wrk(f"{url}/healthz", {}, args.clients, 2)  # warm-up: connections, caches
    _wrk(job_url, headers, args.clients, 2)
    floor = _wrk(f"{url}/healthz", {}, args.clients, args.seconds)
    job = _wrk(job_url, headers, args.clients, args.seconds)
    ratio = job["rps"] / floor["rps"]
    met = ratio >= 0.3 and job["99%"] < 0.060
    return [
        [f"GET /healthz ({label})", f"{floor['rps']:.0f} req/s",
         f"p50 {floor['50%'] * 1e3:.1f} ms", f"p99 {floor['99%'] * 1e3:.1f} ms"],
        [f"GET /v1/jobs/{{id}} ({label})", f"{job['rps']:.0f} req/s ({ratio:.2f} of /healthz)",
         f"p50 {job['50%'] * 1e3:.1f} ms",
         f"p99 {job['99%'] * 1e3:.1f} ms ({'target met' if met else 'target missed'})"],
    ]  # fmt: skip


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
    p.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--jobs", type=int, default=5, help="jobs timed from POST to running")
    p.add_argument("--upload-mb", type=int, default=500)
    p.add_argument(
        "--only",
        choices=("status", "serve", "upload", "all"),
        default="all",
        help="upload: the API's memory during an --upload-mb upload to the folder and to a bucket "
        "(moto_server, started here), side by side",
    )
    p.add_argument("--runs", type=int, default=4, help="wrk runs on cartl serve")
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the API's event loop (the compose API and cartl serve run asyncio)",
    )
    p.add_argument("--tmp", type=Path, default=ROOT / "bench" / "results" / "service-tmp")
    args = p.parse_args()
    if shutil.which("wrk") is None and args.only != "upload":
        raise SystemExit("service_speed: needs wrk (apt-get install wrk)")
    args.tmp.mkdir(parents=True, exist_ok=True)
    everything = args.only == "all"
    if args.only == "serve":
        print_rows(serve_rows(args), args)
        return
    if args.only == "upload":
        print_rows(upload_rows(args), args)
        return

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
        with api(settings, args.tmp, args.api_workers, args.loop) as (url, _pid):
            ckpt, ds = upload_inputs(url, key, args.tmp)
            job = post_job(url, key, ckpt, ds)  # stays queued: no worker yet
            rows += status_rows("Postgres", url, f"{url}/v1/jobs/{job['id']}", h, args)
            print(*(" | ".join(r) for r in rows), sep="\n", flush=True)
            if everything:
                worker = WorkerProcess(settings, args.tmp / "worker.log").start()
                try:
                    time.sleep(8)  # worker up: torch imported, pool child forked
                    lat = queue_latency(url, key, ckpt, ds, factory, args.jobs)
                finally:
                    worker.stop()
                rows.append(["POST -> running (Redis)", f"median {statistics.median(lat):.2f} s",
                             f"max {max(lat):.2f} s", f"{args.jobs} jobs"])  # fmt: skip
                print(" | ".join(rows[-1]), flush=True)
        if everything:
            with api(settings, args.tmp, 1) as (url, pid):
                mem = upload_memory(url, key, pid, args.tmp, args.upload_mb)
                rows.append([f"API RSS, {mem['size_mb']:.0f} MB upload",
                             f"before {mem['before']:.0f} MB", f"peak {mem['peak']:.0f} MB",
                             f"after {mem['after']:.0f} MB ({mem['seconds']:.1f} s)"])  # fmt: skip
                rows.append(["validation child (peak RSS)", f"{mem['probe_peak']:.0f} MB", "", ""])
                print(" | ".join(rows[-2]), flush=True)

    # The embedded defaults, as `cartl serve` runs them: SQLite, one API process.
    emb = args.tmp / f"embedded-{secrets.token_hex(3)}"
    emb.mkdir()
    esettings = Settings(data_dir=emb, device="cpu")
    factory = make_sessionmaker(make_engine(esettings.resolved_database_url))
    key = make_key(esettings)
    h = {"Authorization": f"Bearer {key}"}
    with api(esettings, emb, 1, args.loop) as (url, _pid):
        ckpt, ds = upload_inputs(url, key, emb)
        job = post_job(url, key, ckpt, ds)
        rows += status_rows("SQLite", url, f"{url}/v1/jobs/{job['id']}", h, args)
        print(*(" | ".join(r) for r in rows[-2:]), sep="\n", flush=True)
        if everything:
            worker = WorkerProcess(esettings, emb / "worker.log").start()
            try:
                time.sleep(8)
                lat = queue_latency(url, key, ckpt, ds, factory, args.jobs)
            finally:
                worker.stop()
            rows.append(["POST -> running (embedded SQL broker)",
                         f"median {statistics.median(lat):.2f} s", f"max {max(lat):.2f} s",
                         f"{args.jobs} jobs"])  # fmt: skip

    if everything:
        rows += serve_rows(args)
    print_rows(rows, args)


def upload_rows(args: argparse.Namespace) -> list[list[str]]:
    """The API's memory during one large upload, to the folder and to a bucket (multipart parts
    of ``CARTL_STORAGE_PART_BYTES``), on the same file and the same database."""
    from tests.services import S3_ENV, S3Server, s3_client

    rows: list[list[str]] = []
    server = S3Server().start()
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=server.url)
    bucket = f"bench-{secrets.token_hex(3)}"
    cast(Any, s3_client(server.url)).create_bucket(Bucket=bucket)
    try:
        with postgres_database() as db:
            for name, extra in (
                ("folder", {"storage_dir": args.tmp / "artifacts"}),
                ("bucket", {"storage_url": f"s3://{bucket}/bench",
                            "scratch_dir": args.tmp / "scratch"}),
            ):  # fmt: skip
                settings = Settings(data_dir=args.tmp, database_url=db, device="cpu",
                                    broker_url=redis_url(12), **extra)  # fmt: skip
                key = make_key(settings)
                with api(settings, args.tmp, 1) as (url, pid):
                    mem = upload_memory(url, key, pid, args.tmp, args.upload_mb)
                rows.append([f"API RSS, {mem['size_mb']:.0f} MB upload to the {name}",
                             f"before {mem['before']:.0f} MB", f"peak {mem['peak']:.0f} MB",
                             f"after {mem['after']:.0f} MB ({mem['seconds']:.1f} s)"])  # fmt: skip
                print(" | ".join(rows[-1]), flush=True)
    finally:
        server.stop()
    return rows


def print_rows(rows: list[list[str]], args: argparse.Namespace) -> None:
    print()
    print(
        f"cartl service benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
        f"wrk -t2 -c{args.clients} x {args.seconds:.0f} s, uvicorn x{args.api_workers} "
        f"(SQLite and cartl serve: x1), {args.loop} loop"
    )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# ---------------------------------------------------------------- cartl serve itself


def serve_rows(args: argparse.Namespace) -> list[list[str]]:
    """``cartl serve`` as a user starts it (its output to a file), one job run to its end by its
    own worker, then the status read under load ``--runs`` times."""
    import re

    data = args.tmp / f"serve-{secrets.token_hex(3)}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env.update(CARTL_DATA_DIR=str(data), CARTL_DEVICE="cpu", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    rows: list[list[str]] = []
    with process(cmd, env, args.tmp / "serve.log") as _proc:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(url), 90, "cartl serve")
        found = re.search(r"admin API key[^:]*: (\S+)", (args.tmp / "serve.log").read_text())
        if found is None:
            raise RuntimeError("cartl serve printed no admin key")
        key = found.group(1)
        h = {"Authorization": f"Bearer {key}"}
        ckpt, ds = upload_inputs(url, key, data)
        job = post_job(url, key, ckpt, ds)
        job_url = f"{url}/v1/jobs/{job['id']}"

        def done() -> bool:
            return bool(httpx.get(job_url, headers=h).json()["status"] == "succeeded")

        wait_for(done, 180, "the job to succeed on serve's own worker")
        _wrk(f"{url}/healthz", {}, args.clients, 2)
        _wrk(job_url, h, args.clients, 2)
        for run in range(1, args.runs + 1):
            floor = _wrk(f"{url}/healthz", {}, args.clients, args.seconds)
            got = _wrk(job_url, h, args.clients, args.seconds)
            ratio = got["rps"] / floor["rps"]
            met = ratio >= 0.3 and got["99%"] < 0.060
            rows.append([f"cartl serve, run {run}: GET /v1/jobs/{{id}}",
                         f"{got['rps']:.0f} req/s ({ratio:.2f} of /healthz's {floor['rps']:.0f})",
                         f"p50 {got['50%'] * 1e3:.1f} ms",
                         f"p99 {got['99%'] * 1e3:.1f} ms ({'target met' if met else 'missed'};"
                         f" /healthz p99 {floor['99%'] * 1e3:.1f} ms)"])  # fmt: skip
            print(" | ".join(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
