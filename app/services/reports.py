"""A job's readable report: the HTML page :mod:`app.report` draws from the job's row.

The row holds all it needs: the audit, the per-epoch history, and in ``metrics`` the provenance,
the transfer source's robustness and the training warnings (see :func:`cartl_core.jobs.run_job`).
A running job's report shows what is there so far.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.db.models import Job, JobStatus
from app.errors import ConflictError
from app.report import render_job_report

__all__ = ["job_report"]


def job_report(job: Job) -> str:
    """The report page of ``job``; a 409 while it has nothing to show (it has not run)."""
    if job.status == JobStatus.queued.value:
        raise ConflictError(f"job {job.id} is queued; its report appears once it runs")
    if job.started_at is None:
        raise ConflictError(
            f"job {job.id} ended {job.status} before it ran; there is nothing to report"
        )
    return render_job_report(
        audit=job.audit,
        history=job.history,
        metrics=job.metrics,
        title=f"cartl {job.kind} job {job.id}",
        facts=_facts(job),
    )


def _facts(job: Job) -> dict[str, Any]:
    params = job.params or {}
    return {
        "job": job.id,
        "kind": job.kind,
        "status": job.status,
        "error": job.error,
        "method": params.get("method"),
        "architecture": params.get("arch"),
        "checkpoint": job.checkpoint_id,
        "dataset": job.dataset_id,
        "weights sha256": job.weights_sha256,
        "created": _time(job.created_at),
        "started": _time(job.started_at),
        "finished": _time(job.finished_at),
    }


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")
