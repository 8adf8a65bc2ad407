"""Celery tasks. Thin: the message carries the job id, :mod:`worker.runner` does the work.

Before a message costs a pool process (a fresh one per job, for the GPU memory it gives back),
the worker's main process asks the database whether its turn has anything to run
(:func:`worker.runner.turn_has_work`). A message of a cancelled or finished job, with nothing
else waiting, then ends in milliseconds; without this check each cost a new process (seconds,
importing torch), so one owner's thousand cancelled jobs held everyone's next job back.
"""

from __future__ import annotations

import logging

from celery.worker.request import Request
from celery.worker.state import task_ready

from worker.celery_app import TASK_NAME, celery_app

__all__ = ["run_job"]

log = logging.getLogger(__name__)


class _TurnRequest(Request):  # type: ignore[misc]
    """Celery asks ``revoked()`` in the main process just before it hands a request to the
    pool; a turn with nothing to run answers like a revoked task (acknowledged, not run)."""

    _turn_checked = False

    def revoked(self) -> bool:
        if super().revoked():
            return True
        if self._turn_checked:
            return False
        self._turn_checked = True
        from worker.runner import turn_has_work

        job_id = self.args[0] if self.args else None
        if not isinstance(job_id, str) or turn_has_work(job_id):
            return False
        log.info("message for job %s: no job waits; acknowledged without a process", job_id)
        task_ready(self)
        self.acknowledge()
        self._already_revoked = True
        return True


@celery_app.task(  # type: ignore[untyped-decorator]
    name=TASK_NAME,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    Request=_TurnRequest,
)
def run_job(job_id: str) -> str:
    from worker.runner import execute

    return execute(job_id, hard_stop=True)
