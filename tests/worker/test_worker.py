"""The worker with real parts: a real broker (Redis, and the embedded SQL transport that
``cartl serve`` uses), a real ``celery worker`` process, a real database.

The same redelivery tests run on both brokers: a worker SIGKILLed mid-job, then a new worker,
and the job finishes from its last saved epoch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from app.db.base import new_id
from app.db.models import Job, JobStatus
from app.services.queue import Send, enqueue_job
from app.services.recovery import Sweeper, local_worker_gone, requeue_dead_local, sweep
from app.storage import LocalStorage
from tests.services import PrivateRedis, wait_for
from tests.worker.stack import (
    Stack,
    add_inputs,
    add_job,
    fast_settings,
    make_stack,
    request_cancel,
)

pytestmark = pytest.mark.timeout(240)


def test_transfer_job_runs_to_completion(stack: Stack) -> None:
    ckpt, ds = add_inputs(stack)
    job_id = add_job(stack, ckpt, ds)
    stack.worker()
    assert enqueue_job(stack.factory, stack.settings, job_id) is Send.sent
    job = stack.wait_status(job_id, JobStatus.succeeded, JobStatus.failed)
    assert job.status == "succeeded", job.error
    assert job.attempts == 1
    assert [h["epoch"] for h in job.history] == [1, 2, 3]
    # The robust trace: in every epoch's record and in the progress a polling client reads.
    assert all(0 <= h["trace_robust_accuracy"] <= h["trace_clean_accuracy"] for h in job.history)
    assert "trace_robust_accuracy" in job.progress["metrics"]
    assert job.metrics is not None
    assert isinstance(job.metrics["warnings"], list)
    assert 0 <= job.metrics["robust_accuracy"] <= job.metrics["clean_accuracy"]
    assert job.audit is not None
    assert job.audit["ensemble"] == "fast"
    assert any(a["name"] == "pgd-5" and a["role"] == "named" for a in job.audit["attacks"])
    weights = LocalStorage(stack.settings.resolved_storage_dir).path(str(job.weights_key))
    assert weights.is_file()
    assert weights.stat().st_size == job.weights_size
    assert not weights.with_name("state.pt").exists()

    from cartl_core import read_description

    description = read_description(weights)
    assert description is not None
    assert description["training"]["method"] == "cartl"
    assert description["metrics"]["robust_accuracy"] == job.metrics["robust_accuracy"]


def test_worker_killed_mid_job_is_redelivered_and_resumes(stack: Stack) -> None:
    ckpt, ds = add_inputs(stack)
    job_id = add_job(stack, ckpt, ds, epochs=12, method="neft")
    first = stack.worker()
    assert enqueue_job(stack.factory, stack.settings, job_id) is Send.sent
    # Started after the send: its first sweep runs at once and would send the job itself.
    sweeper = Sweeper(stack.settings, stack.factory).start()
    try:
        wait_for(lambda: len(stack.job(job_id).history) >= 2, 120, "two finished epochs")
        before = {h["epoch"]: h for h in stack.job(job_id).history}
        first.kill()
        assert stack.job(job_id).status == "running"  # nobody knows yet that it is lost

        stack.worker()
        job = stack.wait_status(job_id, JobStatus.succeeded, JobStatus.failed, timeout=180)
    finally:
        sweeper.stop()
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert [h["epoch"] for h in job.history] == list(range(1, 13))
    # Epochs saved before the kill were not run again: their records are the saved ones.
    saved = [e for e in before if e < max(before)]
    assert saved, before
    for epoch in saved:
        assert job.history[epoch - 1] == before[epoch]


def test_a_restart_requeues_its_dead_workers_jobs_at_once(tmp_path: Path) -> None:
    """What `cartl serve` does on start: a job held by a worker process of this machine that no
    longer exists resumes now, not after stale_after_s (600 s here)."""
    db = f"sqlite:///{tmp_path / 'cartl.sqlite'}"
    settings = fast_settings(
        tmp_path, db, f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}", stale_after_s=600.0
    )
    with contextlib.contextmanager(make_stack)(settings, tmp_path) as st:
        ckpt, ds = add_inputs(st)
        job_id = add_job(st, ckpt, ds, epochs=8, method="neft")
        first = st.worker()
        assert enqueue_job(st.factory, st.settings, job_id) is Send.sent
        wait_for(lambda: len(st.job(job_id).history) >= 2, 120, "two finished epochs")
        first.kill()
        # SIGKILL is delivered at once, but a busy machine may take a moment to end the process:
        # `cartl serve` restarts after its old processes are gone.
        holder = st.job(job_id).worker
        wait_for(lambda: local_worker_gone(holder), 30, "the killed worker's process to end")
        assert st.job(job_id).status == "running"
        assert sweep(st.factory, st.settings).requeued == 0  # the heartbeat is not stale yet
        t0 = time.monotonic()
        assert requeue_dead_local(st.factory) == [job_id]
        assert requeue_dead_local(st.factory) == []  # once only
        st.worker()
        assert sweep(st.factory, st.settings).sent == 1
        job = st.wait_status(job_id, JobStatus.succeeded, JobStatus.failed, timeout=180)
        assert job.status == "succeeded", job.error
        assert job.attempts == 2
        assert [h["epoch"] for h in job.history] == list(range(1, 9))
        assert time.monotonic() - t0 < 120


def test_pool_child_killed_is_retried_at_once(stack: Stack, tmp_path: Path) -> None:
    """The out-of-memory case: only the process running the job dies. Celery hands the message
    back (reject on worker lost) and the job is retried without waiting for a stale heartbeat."""
    st = Stack(
        stack.settings.model_copy(update={"stale_after_s": 3600.0}),
        stack.factory,
        tmp_path,
        stack.workers,
    )
    ckpt, ds = add_inputs(st)
    job_id = add_job(st, ckpt, ds, epochs=12)
    st.worker()
    assert enqueue_job(st.factory, st.settings, job_id) is Send.sent
    wait_for(lambda: len(st.job(job_id).history) >= 2, 120, "two finished epochs")
    holder = st.job(job_id).worker
    assert holder is not None
    os.kill(int(holder.rpartition(":")[2]), signal.SIGKILL)

    job = st.wait_status(job_id, JobStatus.succeeded, JobStatus.failed, timeout=120)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert [h["epoch"] for h in job.history] == list(range(1, 13))


def test_cancel_stops_a_running_job_at_the_next_batch(stack: Stack) -> None:
    ckpt, ds = add_inputs(stack)
    job_id = add_job(stack, ckpt, ds, epochs=50)
    stack.worker()
    assert enqueue_job(stack.factory, stack.settings, job_id) is Send.sent
    wait_for(lambda: stack.job(job_id).progress.get("epoch", 0) >= 1, 120, "the job to start")
    request_cancel(stack, job_id)
    job = stack.wait_status(job_id, JobStatus.cancelled, JobStatus.succeeded, JobStatus.failed)
    assert job.status == "cancelled"
    assert job.finished_at is not None
    assert len(job.history) < 50


def test_cancel_reaches_the_job_within_seconds_not_a_heartbeat(tmp_path: Path) -> None:
    """Heartbeats 60 s apart: only the cancel poll (CARTL_CANCEL_POLL_S, 1 s) can be that fast."""
    db = f"sqlite:///{tmp_path / 'cartl.sqlite'}"
    settings = fast_settings(
        tmp_path, db, f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
        heartbeat_s=60.0, stale_after_s=600.0,
    )  # fmt: skip
    with contextlib.contextmanager(make_stack)(settings, tmp_path) as st:
        ckpt, ds = add_inputs(st)
        job_id = add_job(st, ckpt, ds, epochs=50)
        st.worker()
        assert enqueue_job(st.factory, st.settings, job_id) is Send.sent
        wait_for(lambda: st.job(job_id).progress.get("epoch", 0) >= 1, 120, "the job to start")
        request_cancel(st, job_id)
        t0 = time.monotonic()
        job = st.wait_status(job_id, JobStatus.cancelled, JobStatus.succeeded, timeout=30)
        assert job.status == "cancelled"
        assert time.monotonic() - t0 < 5


def test_an_audit_shows_progress_inside_its_attack_and_its_cancel_bites(tmp_path: Path) -> None:
    """A long Square (a tiny radius: nothing breaks, every query is spent) reports which attack
    runs, how far it is within its one batch and the audit's ETA, then stops within seconds of
    a cancel, though its batch would take many minutes."""
    db = f"sqlite:///{tmp_path / 'cartl.sqlite'}"
    settings = fast_settings(tmp_path, db, f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    with contextlib.contextmanager(make_stack)(settings, tmp_path) as st:
        ckpt, ds = add_inputs(st, classes=4)  # audited on the dataset's own classes
        job_id = new_id("job")
        params = {"eps": [1e-4], "attacks": "square", "square_queries": 1_000_000,
                  "batch_size": 512}  # fmt: skip
        with st.factory() as s, s.begin():
            s.add(Job(id=job_id, owner="alice", kind="audit", checkpoint_id=ckpt,
                      dataset_id=ds, params=params))  # fmt: skip
        st.worker()
        assert enqueue_job(st.factory, st.settings, job_id) is Send.sent

        def inside_square() -> bool:
            p = st.job(job_id).progress
            attack, fraction = str(p.get("attack", "")), float(p.get("audit_fraction") or 0)
            return attack.startswith("square") and fraction > 0

        wait_for(inside_square, 120, "the audit to report progress inside Square")
        progress = st.job(job_id).progress
        assert progress["stage"] == "audit"
        assert progress["audit_done"] == 0  # one batch, not finished: yet the fraction moves
        assert progress["audit_attack"] == 1  # of the plan: Square, PGD-20, FGSM, the checks
        assert progress["audit_attacks"] >= 3
        assert progress["audit_estimate_s"] > progress["eta_s"] > 0
        request_cancel(st, job_id)
        t0 = time.monotonic()
        job = st.wait_status(job_id, JobStatus.cancelled, JobStatus.succeeded, timeout=30)
        assert job.status == "cancelled"
        assert time.monotonic() - t0 < 10


def test_a_job_that_fails_records_a_readable_error(stack: Stack) -> None:
    ckpt, ds = add_inputs(stack)
    job_id = add_job(stack, ckpt, ds, k=4)
    LocalStorage(stack.settings.resolved_storage_dir).path(f"datasets/{ds}/target.npz").write_bytes(
        b"not an npz"
    )
    stack.worker()
    assert enqueue_job(stack.factory, stack.settings, job_id) is Send.sent
    job = stack.wait_status(job_id, JobStatus.failed, JobStatus.succeeded)
    assert job.status == "failed"
    assert job.error
    assert "npz" in job.error
    assert "Traceback" not in job.error
    assert job.finished_at is not None


def test_jobs_created_while_the_broker_is_down_all_run_once_it_is_back(
    tmp_path: Path,
) -> None:
    redis = PrivateRedis()  # not started: the broker is down
    db = f"sqlite:///{tmp_path / 'cartl.sqlite'}"
    for st in make_stack(fast_settings(tmp_path, db, redis.url), tmp_path):
        ckpt, ds = add_inputs(st)
        jobs = [add_job(st, ckpt, ds, epochs=1) for _ in range(3)]
        assert all(enqueue_job(st.factory, st.settings, j) is Send.broker_down for j in jobs)
        assert all(st.job(j).status == "queued" and st.job(j).enqueued_at is None for j in jobs)
        assert sweep(st.factory, st.settings).sent == 0  # still down: nothing lost either

        redis.start()
        try:
            st.worker()
            sweeper = Sweeper(st.settings, st.factory).start()
            try:
                for j in jobs:
                    job = st.wait_status(j, JobStatus.succeeded, JobStatus.failed)
                    assert job.status == "succeeded", job.error
                    assert job.attempts == 1
            finally:
                sweeper.stop()
        finally:
            for w in st.workers:
                w.stop()
            redis.stop()


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_compare_job_runs_to_completion(stack: Stack) -> None:
    from app.services.jobs import candidate_key
    from cartl_core import read_description

    ckpt, ds = add_inputs(stack)
    job_id = new_id("job")
    params = {"eps": 0.1, "methods": ["standard", "cartl"], "max_candidates": 2, "k": [2],
              "epochs": 1, "batch_size": 64, "augment": "none",
              "audit_attacks": "fast"}  # fmt: skip
    with stack.factory() as s, s.begin():
        s.add(
            Job(id=job_id, owner="alice", kind="compare", checkpoint_id=ckpt, dataset_id=ds,
                params=params)
        )  # fmt: skip
    stack.worker()
    assert enqueue_job(stack.factory, stack.settings, job_id) is Send.sent
    job = stack.wait_status(job_id, JobStatus.succeeded, JobStatus.failed)
    assert job.status == "succeeded", job.error
    assert (job.progress["candidate"], job.progress["candidates"]) == (2, 2)
    assert job.progress["estimate"]["candidates"] == 2
    assert job.metrics is not None
    rows = job.metrics["candidates"]
    names = ["standard-k2-source-stats", "cartl-k2-b0.4-source-stats"]
    assert [r["name"] for r in rows] == names
    storage = LocalStorage(stack.settings.resolved_storage_dir)
    for row in rows:
        assert "path" not in row  # no file names of the worker's disk in the API
        assert row["weights"] == f"/v1/jobs/{job_id}/weights?candidate={row['name']}"
        assert storage.exists(candidate_key(job_id, row["name"]))
    chosen = job.metrics["chosen"]
    assert chosen["name"] in names
    assert job.audit is not None
    assert job.audit["ensemble"] == "fast"
    assert job.metrics["robust_accuracy"] == job.audit["robust_accuracy"]
    assert "val_accuracy" in job.history[-1]
    description = read_description(storage.path(str(job.weights_key)))
    assert description is not None
    assert description["training"]["compare_result"]["chosen"]["name"] == chosen["name"]
