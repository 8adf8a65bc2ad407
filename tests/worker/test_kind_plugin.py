"""A job kind installed as a package of its own (an entry point in ``cartl.job_kinds``) is run by
a real worker process, which learns of it from the registry alone."""

from __future__ import annotations

from pathlib import Path

from app.db.models import JobStatus
from app.services.queue import Send, enqueue_job
from tests.worker.stack import add_inputs, add_job, embedded_stack

#: The toy kind's module and its dist-info (name, version, entry point), as pip installs them.
PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def test_a_worker_runs_a_kind_found_through_its_entry_point(tmp_path: Path) -> None:
    with embedded_stack(tmp_path) as stack:
        ckpt, ds = add_inputs(stack, classes=4)
        job_id = add_job(stack, ckpt, ds, kind="clean-accuracy", limit=40)
        stack.worker(python_path=(PLUGINS,))
        assert enqueue_job(stack.factory, stack.settings, job_id) is Send.sent
        job = stack.wait_status(job_id, JobStatus.succeeded, JobStatus.failed)
        assert job.status == "succeeded", job.error
        assert job.metrics is not None
        assert job.metrics["samples"] == 40
        assert 0.0 <= job.metrics["clean_accuracy"] <= 1.0
        assert job.metrics["provenance"]["kind"] == "clean-accuracy"
        assert job.weights_key is None
        assert job.progress["stage"] == "done"
