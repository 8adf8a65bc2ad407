"""Who runs next, with a real broker and a real worker: fair across owners, and a message with
nothing to run costs the worker a database query, not a process."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.db.models import Job, JobStatus
from app.services import job_states
from app.services.queue import Send, enqueue_job
from app.storage import LocalStorage
from tests.services import ROOT, service_env, wait_for
from tests.worker.stack import (
    Stack,
    add_audit_job,
    add_inputs,
    embedded_stack,
    request_cancel,
)

pytestmark = pytest.mark.timeout(300)

SKIPPED = re.compile(r"acknowledged without a process")


def _skips(st: Stack) -> int:
    return sum(len(SKIPPED.findall(w.log_path.read_text(errors="replace"))) for w in st.workers)


def test_one_owner_s_fifty_jobs_hold_another_s_back_by_one_at_most(stack: Stack) -> None:
    """Owner a queues 50 jobs, then b queues one: b's starts after at most one of a's (first
    come, first served would run all 50 first). Then a cancels the rest: each of their 49
    messages is dropped by the worker's main process in milliseconds (it took a fresh process,
    about 3.4 s, each), and c's job, queued behind all of them, runs at once."""
    ckpt, ds = add_inputs(stack, classes=4)
    a_jobs = [add_audit_job(stack, ckpt, ds, "a") for _ in range(50)]
    stack.worker()
    assert all(enqueue_job(stack.factory, stack.settings, j) is Send.sent for j in a_jobs)
    wait_for(lambda: stack.job(a_jobs[0]).status != "queued", 120, "a's first job to start")

    b_job = add_audit_job(stack, ckpt, ds, "b")
    assert enqueue_job(stack.factory, stack.settings, b_job) is Send.sent
    b = stack.wait_status(b_job, JobStatus.succeeded, JobStatus.failed)
    assert b.status == "succeeded", b.error
    assert b.started_at is not None
    with stack.factory() as s:
        a_started = [
            job.started_at
            for job in s.query(Job).filter(Job.owner == "a", Job.started_at.is_not(None))
        ]
    ahead = [t for t in a_started if t is not None and b.created_at < t < b.started_at]
    assert len(ahead) <= 1, f"{len(ahead)} of a's jobs started while b's waited"

    with stack.factory() as s, s.begin():
        for job_id in a_jobs:
            job_states.cancel(s, job_id)  # what POST /v1/jobs/{id}/cancel does
    c_job = add_audit_job(stack, ckpt, ds, "c")
    assert enqueue_job(stack.factory, stack.settings, c_job) is Send.sent
    c = stack.wait_status(c_job, JobStatus.succeeded, JobStatus.failed)
    assert c.status == "succeeded", c.error
    # Every message left is one of a's cancelled jobs: dropped without a process (each took a
    # fresh one, about 3.4 s, before: 45 would have taken two and a half minutes).
    t0 = time.monotonic()
    wait_for(lambda: _skips(stack) >= 45, 60, "45 cancelled jobs' messages to be dropped")
    took = time.monotonic() - t0
    print(f"45 messages of cancelled jobs dropped {took:.2f} s after c's job ended")
    assert took < 10
    with stack.factory() as s:
        ran = s.query(Job).filter(Job.owner == "a", Job.attempts > 0).count()
    assert ran <= 3, f"{ran} of a's cancelled jobs were run"


STUCK_JOB = """
import sys, time
from app.settings import Settings
from worker import runner

class Stuck(runner._Run):
    def _run(self, job):  # a step that never reaches a stop check
        time.sleep(600)
        return "succeeded"

runner._Run = Stuck
settings = Settings.model_validate_json(sys.argv[2])
print(runner.execute(sys.argv[1], settings, hard_stop=True))
"""


def test_a_job_stuck_in_one_long_step_is_ended_after_the_grace(tmp_path: Path) -> None:
    """The last resort behind the stop checks: a job that does not stop within
    ``cancel_grace_s`` of its cancel is recorded cancelled, its files removed, and its process
    ended (in a Celery pool process, Celery then replaces it)."""
    with embedded_stack(tmp_path, cancel_grace_s=2.0, cancel_poll_s=0.2) as st:
        ckpt, ds = add_inputs(st, classes=4)
        job_id = add_audit_job(st, ckpt, ds, "a")
        state = LocalStorage(st.settings.resolved_storage_dir).path(f"jobs/{job_id}/state.pt")
        state.parent.mkdir(parents=True)
        state.write_bytes(b"resumable state")
        proc = subprocess.Popen(
            [sys.executable, "-c", STUCK_JOB, job_id, st.settings.model_dump_json()],
            cwd=ROOT, env=service_env(st.settings),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(lambda: st.job(job_id).status == "running", 60, "the job to start")
            request_cancel(st, job_id)
            t0 = time.monotonic()
            out, _ = proc.communicate(timeout=30)
        finally:
            proc.kill()
        waited = time.monotonic() - t0
        assert proc.returncode == 75, out
        assert 2.0 <= waited < 6.0
        job = st.job(job_id)
        assert job.status == "cancelled"
        assert job.finished_at is not None
        assert not state.exists()
        assert b"still running 2 s after its cancel" in out
