"""Workers on two "machines" that share only the database, the broker and a bucket (moto_server
over HTTP): each has its own data folder and scratch folder, as two hosts would. A job SIGKILLed
on one resumes on the other from the state it copied to the bucket, and ends with the weights an
uninterrupted run gives."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from app.db.base import new_id
from app.db.models import JobStatus
from app.services.queue import Send, enqueue_job
from app.services.recovery import Sweeper
from app.storage import open_storage
from tests.services import REDIS_URL, postgres_database, redis_ready, wait_for
from tests.worker.stack import Stack, add_inputs, add_job, fast_settings, make_stack

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def machines(tmp_path: Path, bucket: str) -> Iterator[tuple[Stack, Stack]]:
    """Two stacks on one database, broker queue and bucket; folders of their own."""
    redis_ready()
    queue = f"test-{new_id('q')}"
    with ExitStack() as stack, postgres_database() as url:
        pair = []
        for name in ("a", "b"):
            home = tmp_path / name
            home.mkdir()
            settings = fast_settings(home, url, REDIS_URL, queue=queue, storage_url=bucket,
                                     scratch_dir=home / "scratch", state_sync_s=0.1)  # fmt: skip
            pair.append(stack.enter_context(_stack(settings, home)))
        yield pair[0], pair[1]


_stack = contextmanager(make_stack)


def _weights(st: Stack, key: str, tmp: Path) -> dict[str, torch.Tensor]:
    path = open_storage(st.settings).fetch(key, tmp / key.replace("/", "_"))
    return load_file(path)


def test_a_job_killed_on_one_machine_resumes_on_another_with_the_same_weights(
    machines: tuple[Stack, Stack], tmp_path: Path
) -> None:
    a, b = machines
    ckpt, ds = add_inputs(a)
    params: dict[str, Any] = {"epochs": 10, "method": "neft"}
    job_id = add_job(a, ckpt, ds, **params)
    first = a.worker()
    assert enqueue_job(a.factory, a.settings, job_id) is Send.sent
    storage = open_storage(a.settings)
    state_key = f"jobs/{job_id}/state.pt"
    sweeper = Sweeper(a.settings, a.factory).start()
    try:
        wait_for(
            lambda: len(a.job(job_id).history) >= 3 and storage.exists(state_key),
            120,
            "three epochs, and the state in the bucket",
        )
        before = a.job(job_id).history
        first.kill()
        assert a.job(job_id).status == "running"
        second = b.worker()
        job = b.wait_status(job_id, JobStatus.succeeded, JobStatus.failed, timeout=180)
    finally:
        sweeper.stop()
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert [h["epoch"] for h in job.history] == list(range(1, 11))
    # It resumed from what machine A copied: A's first epoch was not run again.
    assert "resumes from" in second.log()
    assert job.history[0] == before[0]
    assert not storage.exists(state_key)  # a finished job's state goes

    reference = add_job(b, ckpt, ds, **params)
    assert enqueue_job(b.factory, b.settings, reference) is Send.sent
    uninterrupted = b.wait_status(reference, JobStatus.succeeded, JobStatus.failed)
    assert uninterrupted.status == "succeeded", uninterrupted.error
    assert uninterrupted.attempts == 1
    # B downloaded the dataset and the checkpoint once, for the resumed attempt; the second job
    # of the same inputs took them from B's input cache.
    assert second.log().count("from this machine's input cache") == 2

    resumed = _weights(b, str(job.weights_key), tmp_path)
    whole = _weights(b, str(uninterrupted.weights_key), tmp_path)
    assert resumed.keys() == whole.keys()
    for name, tensor in whole.items():
        assert torch.equal(resumed[name], tensor), name
    assert job.metrics is not None
    assert uninterrupted.metrics is not None
    assert job.metrics["robust_accuracy"] == uninterrupted.metrics["robust_accuracy"]

    # Nothing of an artifact in either machine's data folder; B's scratch folder holds no job's
    # files, only the input cache with the two inputs.
    for home in (tmp_path / "a", tmp_path / "b"):
        assert not (home / "artifacts").exists()
    scratch = tmp_path / "b" / "scratch"
    assert [p.name for p in scratch.iterdir()] == ["cartl-inputs"]
    assert len([p for p in (scratch / "cartl-inputs").glob("*/*") if p.is_file()]) == 2


def test_a_job_whose_bucket_is_gone_fails_saying_so(tmp_path: Path, bucket: str) -> None:
    """The inputs were stored; then the worker's bucket is missing (deleted, or a wrong
    CARTL_STORAGE_URL on that machine): the job fails at once with the storage named as the
    cause, not a stack trace, and is not retried into the same wall."""
    redis_ready()
    with postgres_database() as url:
        settings = fast_settings(tmp_path, url, REDIS_URL, storage_url=bucket)
        with _stack(settings, tmp_path) as st:
            ckpt, ds = add_inputs(st)
            job_id = add_job(st, ckpt, ds)
            st.settings = fast_settings(
                tmp_path, url, REDIS_URL, queue=settings.queue,
                storage_url="s3://cartl-bucket-that-is-not-there/cartl",
            )  # fmt: skip
            st.worker()
            assert enqueue_job(st.factory, st.settings, job_id) is Send.sent
            job = st.wait_status(job_id, JobStatus.succeeded, JobStatus.failed)
    assert job.status == "failed"
    assert job.attempts == 1
    assert job.error is not None
    assert "the artifact storage has no such bucket" in job.error
    assert "Traceback" not in job.error


def test_a_retry_here_removes_what_a_killed_attempt_left_and_brings_back_its_state(
    bucket: str, tmp_path: Path
) -> None:
    from app.storage.s3 import S3Storage
    from worker.workspace import open_workspace

    storage = S3Storage(bucket)
    scratch = tmp_path / "scratch"
    left = scratch / "cartl-job_x-abc123"
    (left / "jobs" / "job_x").mkdir(parents=True)
    (left / "jobs" / "job_x" / "state.pt").write_bytes(b"stale")
    src = tmp_path / "state.pt"
    src.write_bytes(b"epoch 3")
    storage.put_file("jobs/job_x/state.pt", src)

    with open_workspace(storage, "job_x", scratch, sync_s=60) as ws:
        assert not left.exists()
        assert ws.local("jobs/job_x/state.pt").read_bytes() == b"epoch 3"
        ws.local("jobs/job_x/state.pt").write_bytes(b"epoch 4")
        ws.sync()
    fetched = storage.fetch("jobs/job_x/state.pt", tmp_path / "back.pt")
    assert fetched.read_bytes() == b"epoch 4"
    assert list(scratch.iterdir()) == []


def test_a_job_removes_the_scratch_folders_that_killed_jobs_left(
    bucket: str, tmp_path: Path
) -> None:
    """The folder of a job SIGKILLed here that resumed on another machine goes when the next job
    starts here; a live job's folder and other programs' folders stay."""
    import os
    import signal
    import subprocess
    import sys

    from app.storage.s3 import S3Storage
    from worker.workspace import _hold, open_workspace

    scratch = tmp_path / "scratch"
    killed, live, foreign = (scratch / n for n in ("cartl-job_k-1", "cartl-job_l-2", "cartl-x-y"))
    for folder in (killed, live, foreign):
        (folder / "jobs").mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from worker.workspace import _hold; _hold(Path(sys.argv[1])); print('held', flush=True); "
         "time.sleep(600)", str(killed)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    fd = _hold(live)  # a job running in this process
    try:
        with open_workspace(S3Storage(bucket), "job_n", scratch, sync_s=60):
            # While its process lives, the killed job's folder is a live one.
            assert killed.exists()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        with open_workspace(S3Storage(bucket), "job_m", scratch, sync_s=60):
            assert not killed.exists()
            assert live.exists()
            assert foreign.exists()
    finally:
        os.close(fd)
        holder.kill()
        holder.wait()
        holder.stdout.close()
