"""Celery tasks. Thin: the message carries the job id, :mod:`worker.runner` does the work."""

from __future__ import annotations

from worker.celery_app import TASK_NAME, celery_app

__all__ = ["run_job"]


@celery_app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)  # type: ignore[untyped-decorator]
def run_job(job_id: str) -> str:
    from worker.runner import execute

    return execute(job_id)
