"""The job state machine: every change of a job's status, side by side.

::

    queued --claim--> running --finish--> succeeded | failed | cancelled
      |  ^               |
      |  +---requeue-----+   (its worker was lost: stale heartbeat, or a dead process here)
      |                  +---requeue--> cancelled  (lost, and its cancel had been asked for)
      +--cancel--> cancelled

    queued, unsent --claim_send--> queued, sent  (--release_send--> unsent: the broker was down)
    running --request_cancel--> running with cancel_requested (the worker stops at its next batch)

Which queued job a free worker takes is :func:`next_job`'s choice: fair across owners, not
first come first served (see there).

Each transition is one conditional ``UPDATE ... WHERE`` on the state it leaves, so the API, any
number of workers and sweepers can race on a job and exactly one wins; the functions return
whether this caller won. They only execute statements: the caller's transaction commits (the
request's session in the API, a ``with factory() as s, s.begin()`` block in the worker and the
sweeper).

A worker's own writes (heartbeat, progress, history, finish) match ``worker == this worker``
as well, so a worker that lost its job to a requeue can no longer write to it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Update, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Job, JobStatus
from app.db.session import rows_changed
from app.shared import FINISHED

__all__ = [
    "cancel",
    "claim",
    "claim_send",
    "drop_turn",
    "finish",
    "has_waiting",
    "heartbeat",
    "is_cancel_requested",
    "lost_jobs",
    "next_job",
    "record_epoch",
    "record_progress",
    "release_send",
    "release_sent",
    "requeue",
    "settle_all_cancelled",
    "settle_cancelled",
]

_QUEUED, _RUNNING = JobStatus.queued.value, JobStatus.running.value


def _changed(session: Session, statement: Update) -> bool:
    return rows_changed(session.execute(statement)) > 0


def _held_by(job_id: str, worker: str) -> tuple[ColumnElement[bool], ...]:
    return (Job.id == job_id, Job.status == _RUNNING, Job.worker == worker)


# ---------------------------------------------------------------------------- the API


def cancel(session: Session, job_id: str) -> str | None:
    """A queued job ends ``cancelled`` now ("cancelled"); a running one is asked to stop
    ("requested"); None when it has already finished."""
    now = utcnow()
    queued = update(Job).where(Job.id == job_id, Job.status == _QUEUED)
    if _changed(
        session,
        queued.values(status=JobStatus.cancelled.value, cancel_requested=True, finished_at=now),
    ):
        return "cancelled"
    running = update(Job).where(Job.id == job_id, Job.status == _RUNNING)
    if _changed(session, running.values(cancel_requested=True)):
        return "requested"
    return None


# ---------------------------------------------------------------------------- sending


def claim_send(session: Session, job_id: str) -> bool:
    """Mark a queued, unsent job as sent before sending it: two senders (API replicas, the
    sweeper) then do not both send it in the common case (a duplicate would still be harmless:
    the worker's claim runs it once)."""
    return _changed(
        session,
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == _QUEUED,
            Job.enqueued_at.is_(None),
            Job.cancel_requested.is_(False),
        )
        .values(enqueued_at=utcnow()),
    )


def release_sent(session: Session) -> str | None:
    """A worker drops a message because every waiting job's owner is at their running cap: the
    newest sent waiting job is made unsent again, so the sweeper sends a message for it later
    and no waiting job is left without one."""
    job_id = session.scalar(
        select(Job.id)
        .where(Job.status == _QUEUED, Job.cancel_requested.is_(False), Job.enqueued_at.is_not(None))
        .order_by(Job.enqueued_at.desc())
        .limit(1)
    )
    return job_id if job_id is not None and release_send(session, job_id) else None


def release_send(session: Session, job_id: str) -> bool:
    """The send failed: the job is unsent again, for the sweeper to send later."""
    return _changed(
        session,
        update(Job).where(Job.id == job_id, Job.status == _QUEUED).values(enqueued_at=None),
    )


# ---------------------------------------------------------------------------- the worker


def claim(
    session: Session,
    job_id: str,
    worker: str,
    *,
    stale_after_s: float,
    dead_holder: str | None = None,
) -> bool:
    """Start (or take over) ``job_id`` on ``worker``: a queued job, or a running one whose
    worker was lost (heartbeat older than ``stale_after_s``, or still held by ``dead_holder``, a
    process on this machine that no longer exists). Counts an attempt; never claims a job asked
    to cancel."""
    now = utcnow()
    stale = now - timedelta(seconds=stale_after_s)
    lost = (Job.status == _RUNNING) & (Job.heartbeat_at < stale)
    if dead_holder is not None:
        lost = lost | ((Job.status == _RUNNING) & (Job.worker == dead_holder))
    return _changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.cancel_requested.is_(False), or_(Job.status == _QUEUED, lost))
        .values(
            status=_RUNNING,
            attempts=Job.attempts + 1,
            worker=worker,
            heartbeat_at=now,
            started_at=func.coalesce(Job.started_at, now),
            error=None,
            progress={"stage": "starting"},
        ),
    )


def settle_cancelled(session: Session, job_id: str) -> bool:
    """A queued job with a cancel request that no one ended (a cancel that raced a requeue)
    ends ``cancelled`` when a worker meets it."""
    return _changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == _QUEUED, Job.cancel_requested.is_(True))
        .values(status=JobStatus.cancelled.value, finished_at=utcnow()),
    )


def heartbeat(session: Session, job_id: str, worker: str) -> bool:
    return _changed(
        session, update(Job).where(*_held_by(job_id, worker)).values(heartbeat_at=utcnow())
    )


def record_progress(session: Session, job_id: str, worker: str, progress: dict[str, Any]) -> bool:
    return _changed(
        session,
        update(Job)
        .where(*_held_by(job_id, worker))
        .values(progress=progress, heartbeat_at=utcnow()),
    )


def record_epoch(session: Session, job_id: str, worker: str, record: dict[str, Any]) -> bool:
    """Append an epoch to the job's history; an epoch re-run after a lost worker replaces its
    earlier record and what came after it."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status != _RUNNING or job.worker != worker:
        return False
    kept = [h for h in job.history if h.get("epoch", 0) < record.get("epoch", 0)]
    job.history = [*kept, record]
    session.flush()
    return True


def is_cancel_requested(session: Session, job_id: str) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish(session: Session, job_id: str, worker: str, status: JobStatus, **values: Any) -> bool:
    """End a running job held by ``worker`` as ``status`` (succeeded, failed or cancelled)."""
    if status not in FINISHED:
        raise ValueError(f"finish ends a job; {status.value} is not an end")
    now = utcnow()
    return _changed(
        session,
        update(Job)
        .where(*_held_by(job_id, worker))
        .values(status=status.value, finished_at=now, heartbeat_at=now, **values),
    )


# ---------------------------------------------------------------------------- recovery


def lost_jobs(session: Session, stale_after_s: float, *, job_id: str | None = None) -> list[str]:
    """Running jobs (or only ``job_id``) whose heartbeat is older than ``stale_after_s``."""
    stale = utcnow() - timedelta(seconds=stale_after_s)
    query = select(Job.id).where(Job.status == _RUNNING, Job.heartbeat_at < stale)
    if job_id is not None:
        query = query.where(Job.id == job_id)
    return list(session.scalars(query))


def requeue(
    session: Session,
    job_id: str,
    reason: str,
    *,
    stale_after_s: float | None = None,
    worker: str | None = None,
) -> str | None:
    """Put a running job whose worker was lost back to ``queued``, unsent (the sweeper sends
    it; the retry resumes from its last saved epoch): "queued". A job whose cancel had been
    asked for ends ``cancelled`` instead ("cancelled"): running it again would only be stopped.
    None when the caller lost the race or its evidence does not hold.

    The condition is the caller's evidence that the worker is lost: a heartbeat older than
    ``stale_after_s``, or ``worker`` (a dead process) still being the holder."""
    where = [Job.id == job_id, Job.status == _RUNNING]
    if stale_after_s is not None:
        where.append(Job.heartbeat_at < utcnow() - timedelta(seconds=stale_after_s))
    if worker is not None:
        where.append(Job.worker == worker)
    if len(where) == 2:
        raise ValueError("requeue needs evidence that the worker was lost")
    if _changed(
        session,
        update(Job)
        .where(*where, Job.cancel_requested.is_(True))
        .values(
            status=JobStatus.cancelled.value,
            finished_at=utcnow(),
            worker=None,
            progress={"stage": "cancelled", "detail": reason},
        ),
    ):
        return "cancelled"
    if _changed(
        session,
        update(Job)
        .where(*where, Job.cancel_requested.is_(False))
        .values(status=_QUEUED, enqueued_at=None, worker=None, progress={"stage": reason}),
    ):
        return "queued"
    return None


def settle_all_cancelled(session: Session) -> list[str]:
    """Every queued job with a cancel request ends ``cancelled`` (:func:`settle_cancelled` for
    all of them: what the sweeper does, so none waits for a worker to meet it)."""
    stuck = list(
        session.scalars(select(Job.id).where(Job.status == _QUEUED, Job.cancel_requested.is_(True)))
    )
    return [job_id for job_id in stuck if settle_cancelled(session, job_id)]


# ---------------------------------------------------------------------------- dispatch


def next_job(session: Session, *, max_running_per_owner: int = 0) -> str | None:
    """The queued job a free worker should take: fair across owners, not the oldest job.

    Among the owners with a job waiting (queued, no cancel request) and fewer than
    ``max_running_per_owner`` running (0: no cap), the one with the fewest running jobs wins;
    among equals, the one who has waited longest, that is whose wait started earliest. An
    owner's wait starts when their oldest waiting job was submitted, or when one of their jobs
    last started or ended if that came later: an owner whose job just finished queues behind one
    who submitted meanwhile, so one owner's 50 jobs hold another's back by one job at most. The
    owner's oldest waiting job is the answer. None when no job waits (or every waiting owner is
    at the cap).

    Three small queries per waiting owner, each answered from an index (``owner, started_at``,
    ``owner, finished_at``, ``status``): cheap next to the job it starts.
    """
    waiting = session.execute(
        select(Job.owner, func.min(Job.created_at), func.min(Job.id))
        .where(Job.status == _QUEUED, Job.cancel_requested.is_(False))
        .group_by(Job.owner)
    ).all()
    if not waiting:
        return None
    running = dict(
        session.execute(
            select(Job.owner, func.count())
            .where(Job.status == _RUNNING, Job.owner.in_([w[0] for w in waiting]))
            .group_by(Job.owner)
        ).all()
    )
    best: tuple[int, Any, str] | None = None
    chosen = None
    for owner, oldest, _first in waiting:
        busy = int(running.get(owner, 0))
        if max_running_per_owner and busy >= max_running_per_owner:
            continue
        served = [
            session.scalar(select(func.max(column)).where(Job.owner == owner))
            for column in (Job.started_at, Job.finished_at)
        ]
        since = max([oldest, *(t for t in served if t is not None)])
        key = (busy, since, owner)
        if best is None or key < best:
            best, chosen = key, owner
    if chosen is None:
        return None
    return session.scalar(
        select(Job.id)
        .where(Job.owner == chosen, Job.status == _QUEUED, Job.cancel_requested.is_(False))
        .order_by(Job.created_at, Job.id)
        .limit(1)
    )


def drop_turn(session: Session) -> None:
    """A worker's turn found no job it may run: if jobs wait all the same (their owners are at
    the running cap), one of them is made unsent (:func:`release_sent`), so the sweeper sends a
    message for it and no waiting job is left without one."""
    if has_waiting(session):
        release_sent(session)


def has_waiting(session: Session) -> bool:
    """Whether any job waits to be run (queued, no cancel request)."""
    return (
        session.scalar(
            select(Job.id).where(Job.status == _QUEUED, Job.cancel_requested.is_(False)).limit(1)
        )
        is not None
    )
