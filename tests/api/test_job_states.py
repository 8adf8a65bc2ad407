"""The job state machine (app/services/job_states.py) on the real database: each transition
wins once, only from the state it leaves, and a worker that lost its job cannot write to it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import new_id, utcnow
from app.db.models import Job, JobStatus
from app.services import job_states


def _job(db: sessionmaker[Session], **values: Any) -> str:
    job_id = new_id("job")
    with db() as s, s.begin():
        row = {"status": JobStatus.queued.value, "progress": {}, "history": [], **values}
        s.add(Job(id=job_id, owner="o", kind="audit", params={}, **row))
    return job_id


def _get(db: sessionmaker[Session], job_id: str) -> Job:
    with db() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _do(db: sessionmaker[Session], step: Any, *args: Any, **kwargs: Any) -> Any:
    with db() as s, s.begin():
        return step(s, *args, **kwargs)


def test_a_queued_job_is_claimed_once_and_counts_an_attempt(db: sessionmaker[Session]) -> None:
    job_id = _job(db)
    assert _do(db, job_states.claim, job_id, "host:1", stale_after_s=60)
    assert not _do(db, job_states.claim, job_id, "host:2", stale_after_s=60)
    job = _get(db, job_id)
    assert (job.status, job.worker, job.attempts) == ("running", "host:1", 1)
    assert job.started_at is not None


def test_a_lost_worker_s_job_is_taken_over_by_stale_heartbeat_or_dead_holder(
    db: sessionmaker[Session],
) -> None:
    job_id = _job(db)
    assert _do(db, job_states.claim, job_id, "host:1", stale_after_s=60)
    # Fresh heartbeat: not lost, unless the caller knows the holder's process is gone.
    assert not _do(db, job_states.claim, job_id, "host:2", stale_after_s=60)
    assert not _do(db, job_states.claim, job_id, "host:2", stale_after_s=60, dead_holder="x:9")
    assert _do(db, job_states.claim, job_id, "host:2", stale_after_s=60, dead_holder="host:1")
    with db() as s, s.begin():
        old = utcnow() - timedelta(seconds=120)
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=old))
    assert _do(db, job_states.claim, job_id, "host:3", stale_after_s=60)
    assert (_get(db, job_id).worker, _get(db, job_id).attempts) == ("host:3", 3)


def test_only_the_holder_writes_and_finishes(db: sessionmaker[Session]) -> None:
    job_id = _job(db)
    _do(db, job_states.claim, job_id, "host:1", stale_after_s=60)
    assert not _do(db, job_states.record_progress, job_id, "host:2", {"stage": "x"})
    assert not _do(db, job_states.record_epoch, job_id, "host:2", {"epoch": 1})
    assert not _do(db, job_states.heartbeat, job_id, "host:2")
    assert not _do(db, job_states.finish, job_id, "host:2", JobStatus.succeeded)
    assert _do(db, job_states.record_progress, job_id, "host:1", {"stage": "train"})
    assert _do(db, job_states.record_epoch, job_id, "host:1", {"epoch": 1, "loss": 2.0})
    assert _do(db, job_states.record_epoch, job_id, "host:1", {"epoch": 2, "loss": 1.0})
    # An epoch re-run (after a resume) replaces its record and what followed it.
    assert _do(db, job_states.record_epoch, job_id, "host:1", {"epoch": 2, "loss": 0.5})
    assert _get(db, job_id).history == [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 0.5}]
    assert _do(db, job_states.finish, job_id, "host:1", JobStatus.succeeded, error=None)
    job = _get(db, job_id)
    assert (job.status, job.progress) == ("succeeded", {"stage": "train"})
    assert job.finished_at is not None
    # Finished is final: no second finish, no claim, no cancel.
    assert not _do(db, job_states.finish, job_id, "host:1", JobStatus.failed)
    assert not _do(db, job_states.claim, job_id, "host:1", stale_after_s=0, dead_holder="host:1")
    assert _do(db, job_states.cancel, job_id) is None


def test_finish_refuses_a_status_that_is_not_an_end(db: sessionmaker[Session]) -> None:
    job_id = _job(db)
    with pytest.raises(ValueError, match="not an end"):
        _do(db, job_states.finish, job_id, "host:1", JobStatus.queued)


def test_cancel_ends_a_queued_job_and_asks_a_running_one(db: sessionmaker[Session]) -> None:
    queued, running = _job(db), _job(db)
    _do(db, job_states.claim, running, "host:1", stale_after_s=60)
    assert _do(db, job_states.cancel, queued) == "cancelled"
    assert _get(db, queued).status == "cancelled"
    assert not _do(db, job_states.claim, queued, "host:1", stale_after_s=60)
    assert _do(db, job_states.cancel, running) == "requested"
    assert _do(db, job_states.is_cancel_requested, running)
    assert _get(db, running).status == "running"
    assert _do(db, job_states.finish, running, "host:1", JobStatus.cancelled)


def test_a_requeued_job_with_a_cancel_request_is_settled_not_run(
    db: sessionmaker[Session],
) -> None:
    job_id = _job(db, cancel_requested=True)
    assert not _do(db, job_states.claim, job_id, "host:1", stale_after_s=60)
    assert _do(db, job_states.settle_cancelled, job_id)
    assert _get(db, job_id).status == "cancelled"


def test_requeue_needs_evidence_and_locks_the_old_worker_out(db: sessionmaker[Session]) -> None:
    job_id = _job(db)
    _do(db, job_states.claim, job_id, "host:1", stale_after_s=60)
    with pytest.raises(ValueError, match="evidence"):
        _do(db, job_states.requeue, job_id, "lost")
    assert not _do(db, job_states.requeue, job_id, "lost", stale_after_s=60)  # fresh heartbeat
    assert not _do(db, job_states.requeue, job_id, "lost", worker="host:2")  # not the holder
    assert _do(db, job_states.requeue, job_id, "lost", worker="host:1")
    job = _get(db, job_id)
    assert (job.status, job.worker, job.enqueued_at, job.progress) == (
        "queued",
        None,
        None,
        {"stage": "lost"},
    )
    assert not _do(db, job_states.record_progress, job_id, "host:1", {"stage": "late"})
    assert not _do(db, job_states.finish, job_id, "host:1", JobStatus.succeeded)
    assert _do(db, job_states.lost_jobs, 60) == []


def test_a_job_is_sent_once_and_released_when_the_broker_is_down(
    db: sessionmaker[Session],
) -> None:
    job_id = _job(db)
    assert _do(db, job_states.claim_send, job_id)
    assert not _do(db, job_states.claim_send, job_id)
    assert _do(db, job_states.release_send, job_id)
    assert _do(db, job_states.claim_send, job_id)
    cancelled = _job(db)
    _do(db, job_states.cancel, cancelled)
    assert not _do(db, job_states.claim_send, cancelled)
