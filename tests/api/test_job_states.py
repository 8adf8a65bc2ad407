"""The job state machine (app/services/job_states.py) on the real database: each transition
wins once, only from the state it leaves, and a worker that lost its job cannot write to it."""

from __future__ import annotations

from datetime import datetime, timedelta
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
        row = {"status": JobStatus.queued.value, "progress": {}, "history": [], "owner": "o"}
        s.add(Job(id=job_id, kind="audit", params={}, **{**row, **values}))
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
    assert _do(db, job_states.requeue, job_id, "lost", stale_after_s=60) is None  # fresh beat
    assert _do(db, job_states.requeue, job_id, "lost", worker="host:2") is None  # not the holder
    assert _do(db, job_states.requeue, job_id, "lost", worker="host:1") == "queued"
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


def test_a_lost_job_whose_cancel_was_asked_for_ends_cancelled_not_queued(
    db: sessionmaker[Session],
) -> None:
    """The probe's stuck job: cancel asked, then its worker died. Requeued, it could never be
    sent (claim_send skips a cancel request) nor claimed, and stayed queued for ever."""
    job_id = _job(db)
    _do(db, job_states.claim, job_id, "host:1", stale_after_s=60)
    assert _do(db, job_states.cancel, job_id) == "requested"
    assert _do(db, job_states.requeue, job_id, "lost", worker="host:1") == "cancelled"
    job = _get(db, job_id)
    assert (job.status, job.worker) == ("cancelled", None)
    assert job.finished_at is not None
    assert _do(db, job_states.requeue, job_id, "lost", worker="host:1") is None


def test_every_queued_job_with_a_cancel_request_is_settled(db: sessionmaker[Session]) -> None:
    stuck = [_job(db, cancel_requested=True) for _ in range(2)]
    waiting = _job(db)
    assert sorted(_do(db, job_states.settle_all_cancelled)) == sorted(stuck)
    assert [_get(db, j).status for j in stuck] == ["cancelled", "cancelled"]
    assert _get(db, waiting).status == "queued"


def _at(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=1000 - seconds)


def test_next_job_is_fair_across_owners_not_first_come(db: sessionmaker[Session]) -> None:
    """Owner a queued 5 jobs before b's one; a's first has just finished. The free worker takes
    b's job, though a's are older; then a's, in their own order."""
    a_jobs = [_job(db, owner="a", created_at=_at(i)) for i in range(5)]
    _do(db, job_states.claim, a_jobs[0], "host:1", stale_after_s=60)
    b_job = _job(db, owner="b", created_at=_at(10))
    # While a's first job runs, b (nothing running) is first.
    assert _do(db, job_states.next_job) == b_job
    _do(db, job_states.finish, a_jobs[0], "host:1", JobStatus.succeeded)
    # a's job ended after b submitted: b has waited longer.
    assert _do(db, job_states.next_job) == b_job
    _do(db, job_states.claim, b_job, "host:1", stale_after_s=60)
    assert _do(db, job_states.next_job) == a_jobs[1]
    # A cancel request takes a job out of the running.
    _do(db, job_states.cancel, a_jobs[1])
    assert _do(db, job_states.next_job) == a_jobs[2]


def test_next_job_serves_who_waited_longest_and_respects_the_running_cap(
    db: sessionmaker[Session],
) -> None:
    # c ran a job long ago and has waited since _at(100); d submitted at _at(500).
    old = _job(db, owner="c", created_at=_at(0))
    _do(db, job_states.claim, old, "host:1", stale_after_s=60)
    _do(db, job_states.finish, old, "host:1", JobStatus.succeeded)
    with db() as s, s.begin():
        s.execute(update(Job).where(Job.id == old).values(started_at=_at(1), finished_at=_at(2)))
    c_job = _job(db, owner="c", created_at=_at(100))
    d_job = _job(db, owner="d", created_at=_at(500))
    assert _do(db, job_states.next_job) == c_job
    # With one job running, c waits behind d, and past the cap c is not chosen at all.
    _do(db, job_states.claim, c_job, "host:1", stale_after_s=60)
    c_next = _job(db, owner="c", created_at=_at(101))
    assert _do(db, job_states.next_job) == d_job
    _do(db, job_states.claim, d_job, "host:2", stale_after_s=60)
    assert _do(db, job_states.next_job, max_running_per_owner=1) is None
    assert _do(db, job_states.next_job) == c_next
    assert _do(db, job_states.has_waiting)


def test_a_dropped_turn_leaves_no_waiting_job_without_a_message(
    db: sessionmaker[Session],
) -> None:
    """Only an owner at the running cap waits: the turn is dropped, and that owner's newest
    sent job is made unsent, for the sweeper to send again once a turn can take it."""
    running = _job(db, owner="c")
    _do(db, job_states.claim, running, "host:1", stale_after_s=60)
    older, newer = _job(db, owner="c"), _job(db, owner="c")
    assert _do(db, job_states.claim_send, older)
    assert _do(db, job_states.claim_send, newer)
    assert _do(db, job_states.next_job, max_running_per_owner=1) is None
    _do(db, job_states.drop_turn)
    assert _get(db, newer).enqueued_at is None
    assert _get(db, older).enqueued_at is not None
    # Nothing waits: a dropped turn changes nothing.
    _do(db, job_states.cancel, older)
    _do(db, job_states.cancel, newer)
    _do(db, job_states.drop_turn)
    assert _get(db, older).status == "cancelled"
