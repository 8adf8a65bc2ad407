"""Nothing lost, whatever the broker does: a periodic sweep over the jobs table.

* A job still ``queued`` with no ``enqueued_at`` was never handed to the broker (it was down when
  the job was created, or the send failed): send it now.
* Artifact folders with no row are removed, rows with no file reported
  (:func:`reconcile_storage`, every ``reconcile_interval_s``).
* A ``running`` job whose heartbeat is older than ``stale_after_s`` lost its worker (killed, out
  of memory, machine gone) and the broker may never hand its message back (Redis waits for the
  visibility timeout; kombu's SQL and file transports forget unacknowledged messages): put it
  back to ``queued`` and send it again. The retry resumes from the last saved epoch. A lost job
  whose cancel had been asked for ends ``cancelled`` instead, as does any queued job with a
  cancel request: no job outlives its cancel.
* A job that cannot be sent (cancelled or taken meanwhile) is skipped; only a broker that is
  down ends a sweep early.

Every change is a transition of :mod:`app.services.job_states` (a conditional update), so any
number of sweepers (API replicas, ``cartl serve``) can run at once. The worker's claim caps the
attempts. The sweeper lives with the API, which runs it; workers only run jobs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Checkpoint, DatasetRow, Job, JobStatus
from app.services import job_states
from app.services.queue import Send, enqueue_job
from app.settings import Settings
from app.storage import Storage, open_storage

__all__ = [
    "Reconciled",
    "SweepResult",
    "Sweeper",
    "local_worker_gone",
    "reconcile_storage",
    "requeue_dead_local",
    "sweep",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    requeued: int
    sent: int
    cancelled: int = 0


def sweep(factory: sessionmaker[Session], settings: Settings) -> SweepResult:
    requeued, cancelled = [], []
    with factory() as s, s.begin():
        for job_id in job_states.lost_jobs(s, settings.stale_after_s):
            outcome = job_states.requeue(
                s,
                job_id,
                "requeued: the worker running it was lost",
                stale_after_s=settings.stale_after_s,
            )
            if outcome == "queued":
                requeued.append(job_id)
            elif outcome == "cancelled":
                cancelled.append(job_id)
        cancelled += job_states.settle_all_cancelled(s)
        unsent = s.scalars(
            select(Job.id)
            .where(Job.status == JobStatus.queued.value, Job.enqueued_at.is_(None))
            .order_by(Job.id)
            .limit(1000)
        ).all()
    # Logged once the transaction has committed: a requeue that rolled back did not happen.
    for job_id in requeued:
        log.warning(
            "job %s: worker lost (no heartbeat for %g s); requeued", job_id, settings.stale_after_s
        )
    for job_id in cancelled:
        log.info("job %s: cancel requested and no worker runs it; cancelled", job_id)
    sent = 0
    for job_id in unsent:
        send = enqueue_job(factory, settings, job_id)
        if send is Send.broker_down:
            break  # try the rest on the next sweep
        sent += send is Send.sent
    return SweepResult(len(requeued), sent, len(cancelled))


def requeue_dead_local(factory: sessionmaker[Session]) -> list[str]:
    """Running jobs whose worker was a process on this machine that no longer exists, put back
    to ``queued`` at once (the next sweep sends them; one with a cancel request ends
    ``cancelled``, and is not in the list): what ``cartl serve`` does when it starts,
    instead of waiting ``stale_after_s`` for their heartbeat to go stale. Only for workers on
    this host, whose process ids can be checked; a reused id just leaves the job to the sweep."""
    prefix = f"{socket.gethostname()}:"
    with factory() as s, s.begin():
        held = s.execute(
            select(Job.id, Job.worker).where(
                Job.status == JobStatus.running.value, Job.worker.startswith(prefix)
            )
        ).all()
        requeued = []
        for job_id, worker in held:
            if not local_worker_gone(worker):
                continue
            outcome = job_states.requeue(
                s, job_id, "requeued: its worker stopped with the server", worker=worker
            )
            if outcome is not None:
                requeued.append((job_id, worker, outcome))
    for job_id, worker, outcome in requeued:
        log.warning("job %s: its worker %s is gone; %s", job_id, worker, outcome)
    return [job_id for job_id, _, outcome in requeued if outcome == "queued"]


def local_worker_gone(worker: str | None) -> bool:
    """Whether ``worker`` ("host:pid") was a process on this machine that no longer exists.
    False when it runs elsewhere or cannot be judged (the heartbeat decides then)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    try:
        # A killed worker's pool child lingers as a zombie until it is reaped: dead all the same.
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


#: An artifact folder younger than this may belong to an upload still streaming or a job still
#: starting (its row is written after its first file): never taken for an orphan.
ORPHAN_GRACE_S = 3600.0


@dataclass(frozen=True)
class Reconciled:
    removed: list[str]
    missing: list[str]


def reconcile_storage(
    factory: sessionmaker[Session], storage: Storage, grace_s: float = ORPHAN_GRACE_S
) -> Reconciled:
    """Artifact storage against the database, both ways.

    * A folder ``checkpoints/ID``, ``datasets/ID`` or ``jobs/ID`` whose row does not exist (a
      crash between writing a file and committing its row; a row lost with a damaged database)
      and that is older than ``grace_s`` is removed: nothing refers to it any more.
    * A checkpoint or dataset row whose file is gone (a delete that removed the file, then
      could not remove the row) is reported, not removed: a person decides about rows.
    """
    models: dict[str, type[Checkpoint] | type[DatasetRow] | type[Job]] = {
        "checkpoints": Checkpoint,
        "datasets": DatasetRow,
        "jobs": Job,
    }
    removed: list[str] = []
    now = time.time()
    for folder, model in models.items():
        old = [name for name, when in storage.folders(folder).items() if now - when > grace_s]
        if not old:
            continue
        with factory() as s:
            known = set(s.scalars(select(model.id).where(model.id.in_(old))))
        for name in sorted(set(old) - known):
            storage.delete_prefix(f"{folder}/{name}")
            removed.append(f"{folder}/{name}")
    # Parts of uploads a killed process began: invisible, but they take space.
    storage.abort_stale_uploads(grace_s)
    missing: list[str] = []
    with factory() as s:
        for upload_model in (Checkpoint, DatasetRow):
            for object_id, key in s.execute(select(upload_model.id, upload_model.storage_key)):
                if not storage.exists(key):
                    missing.append(object_id)
    for key in removed:
        log.warning("storage: %s had no row in the database; removed", key)
    for object_id in missing:
        log.error("storage: %s has a row but its file is gone; delete it again", object_id)
    return Reconciled(removed, missing)


class Sweeper:
    """Runs :func:`sweep` every ``settings.sweep_interval_s`` in a daemon thread (the first time
    at once)."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.factory = factory
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cartl-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        wait = 0.0
        next_reconcile = time.monotonic()  # at start too: a crash is when orphans appear
        while not self._stop.wait(wait):
            wait = self.settings.sweep_interval_s
            try:
                result = sweep(self.factory, self.settings)
                if result.requeued or result.sent or result.cancelled:
                    log.info(
                        "sweep: %d requeued, %d sent, %d cancelled",
                        result.requeued,
                        result.sent,
                        result.cancelled,
                    )
            except Exception:
                log.warning("sweep failed; trying again later", exc_info=True)
            interval = self.settings.reconcile_interval_s
            if interval and time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + interval
                try:
                    reconcile_storage(self.factory, open_storage(self.settings))
                except Exception:
                    log.warning("storage reconciliation failed; trying again later", exc_info=True)
