"""The Celery worker that ``cartl serve`` runs itself: started as a subprocess in its own
session, on the server's settings and embedded broker, and stopped (its whole process group) when
the server stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

__all__ = ["start_worker", "stop_worker"]


def start_worker(settings: Any) -> subprocess.Popen[bytes]:
    """The same ``celery worker`` a team deployment runs, on the embedded broker."""
    env = dict(os.environ)
    env.update(
        CARTL_DATA_DIR=str(settings.data_dir.resolve()),
        CARTL_DATABASE_URL=settings.resolved_database_url,
        CARTL_BROKER_URL=settings.resolved_broker_url,
        CARTL_STORAGE_DIR=str(settings.resolved_storage_dir),
    )
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
           "-Q", settings.queue, "--concurrency", "1", "--loglevel", "INFO",
           "--without-gossip", "--without-mingle"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the worker's process group (a warm shutdown); SIGKILL if it outlasts 30 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
