"""A transfer job on two processes (``CARTL_JOB_PROCESSES=2``) in a real ``celery worker``: the
job's progress and records come from it as from one process, and its weights are those of the
same job on one process (gloo on the CPU here; NCCL over the worker's GPUs on a GPU machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from app.db.models import JobStatus
from app.services.queue import Send, enqueue_job
from app.storage import LocalStorage
from cartl_core.jobs import run_job
from tests.worker.stack import add_inputs, add_job, embedded_stack

pytestmark = pytest.mark.timeout(300)

PARAMS: dict[str, Any] = {"method": "neft", "k": 2, "epochs": 3, "batch_size": 64, "lr": 0.05,
          "augment": "none", "bn": "trainable", "no_audit": True, "trace_samples": 0}  # fmt: skip


def test_a_transfer_job_on_two_processes_is_the_job_on_one(tmp_path: Path) -> None:
    with embedded_stack(tmp_path, job_processes=2) as stack:
        ckpt, ds = add_inputs(stack)
        job_id = add_job(stack, ckpt, ds, **PARAMS)
        stack.worker()
        assert enqueue_job(stack.factory, stack.settings, job_id) is Send.sent
        job = stack.wait_status(job_id, JobStatus.succeeded, JobStatus.failed, timeout=240)
        assert job.status == "succeeded", job.error
        assert [h["epoch"] for h in job.history] == [1, 2, 3]
        assert job.progress["fraction"] == 1.0
        storage = LocalStorage(stack.settings.resolved_storage_dir)
        parallel = load_file(storage.path(str(job.weights_key)))

        with stack.factory() as s:
            from app.db.models import Checkpoint, DatasetRow

            ckpt_row, ds_row = s.get(Checkpoint, ckpt), s.get(DatasetRow, ds)
            assert ckpt_row is not None
            assert ds_row is not None
        alone = tmp_path / "alone.safetensors"
        outcome = run_job("transfer", PARAMS, dataset_path=storage.path(ds_row.storage_key),
                          checkpoint_path=storage.path(ckpt_row.storage_key), out_path=alone,
                          device="cpu")  # fmt: skip
        one = load_file(alone)
        assert parallel.keys() == one.keys()
        for name in one:
            torch.testing.assert_close(parallel[name], one[name], atol=1e-5, rtol=0, msg=name)
        history = [{k: v for k, v in h.items() if "seconds" not in k} for h in job.history]
        expected = [{k: v for k, v in h.items() if "seconds" not in k} for h in outcome.history]
        for got, want in zip(history, expected, strict=True):
            assert got.keys() == want.keys()
            for key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
