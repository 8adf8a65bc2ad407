"""The Celery worker that ``cartl serve`` runs itself, and the rule that there is one per data
folder.

* The worker is a subprocess in its own session (so its whole process group can be stopped),
  on the server's settings and embedded broker: :mod:`worker.embedded` around the same
  ``celery worker`` a team deployment runs.
* It dies with its server, however the server ends: it holds the read end of a pipe whose only
  write end is the server's, and the end of file the server's death brings ends its process
  group at once (a parent-death signal would reach only its main process, and not on macOS).
* ``cartl serve`` holds a lock on its data folder while it runs (a second server on the same
  folder is refused), and a restart ends a worker an earlier server left behind before it starts
  its own (``worker.pid`` names it, with its start time, so a reused process id is never hit).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from cartl_core.errors import CartlError

__all__ = ["end_leftover_worker", "lock_data_dir", "start_worker", "stop_worker"]

_PIDFILE = "worker.pid"
_LOCKFILE = "serve.lock"


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold ``data_dir``'s serve lock for this process's life (the returned file keeps it; the
    kernel drops it when the process ends, however it ends)."""
    path = data_dir / _LOCKFILE
    lock = path.open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise CartlError(
            f"another `cartl serve` (process {holder}) is using the data folder "
            f"{data_dir.resolve()}; stop it, or give this one its own CARTL_DATA_DIR"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def start_worker(settings: Any) -> subprocess.Popen[bytes]:
    """The same ``celery worker`` a team deployment runs, on the embedded broker, watching this
    process through a pipe."""
    env = dict(os.environ)
    env.update(
        CARTL_DATA_DIR=str(settings.data_dir.resolve()),
        CARTL_DATABASE_URL=settings.resolved_database_url,
        CARTL_BROKER_URL=settings.resolved_broker_url,
        CARTL_STORAGE_DIR=str(settings.resolved_storage_dir),
    )
    watch, alive = os.pipe()  # both ends are not inherited unless passed
    cmd = [sys.executable, "-m", "worker.embedded", "--parent-fd", str(watch),
           "-Q", settings.queue, "--concurrency", "1", "--loglevel", "INFO",
           "--without-gossip", "--without-mingle"]  # fmt: skip
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, pass_fds=(watch,))
    finally:
        os.close(watch)
    # The write end stays open, unused, for as long as this process lives.
    proc._cartl_alive = alive  # type: ignore[attr-defined]
    _write_pidfile(settings.data_dir, proc.pid)
    return proc


def stop_worker(proc: subprocess.Popen[bytes], data_dir: Path | None = None) -> None:
    """SIGTERM to the worker's process group (a warm shutdown); SIGKILL if it outlasts 30 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    with contextlib.suppress(OSError, AttributeError):
        os.close(proc._cartl_alive)  # type: ignore[attr-defined]
    if data_dir is not None:
        (data_dir / _PIDFILE).unlink(missing_ok=True)


def end_leftover_worker(data_dir: Path, timeout: float = 10.0) -> int | None:
    """End the worker an earlier ``cartl serve`` of ``data_dir`` left running (its process
    group, at once: its jobs resume from their last epoch); its process id, or None if there
    was none. Call it with the data folder's lock held."""
    path = data_dir / _PIDFILE
    try:
        pid_text, started = path.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if _start_time(pid) != started:
        path.unlink(missing_ok=True)
        return None  # gone, and the id may belong to another process now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    path.unlink(missing_ok=True)
    return pid


def _write_pidfile(data_dir: Path, pid: int) -> None:
    started = _start_time(pid)
    if started is not None:
        (data_dir / _PIDFILE).write_text(f"{pid} {started}\n")


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), which with the id names one
    process for good; None if it does not exist or the system cannot say (no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    # Field 22 of proc(5); the split starts at field 3 (state). A zombie is no process.
    return None if fields[0] == "Z" else fields[19]


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
