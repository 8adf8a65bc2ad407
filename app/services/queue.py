"""Putting jobs on the broker. A job row is committed first, then its id is sent; when the broker
is unreachable the job stays ``queued`` with no ``enqueued_at``, and the sweeper sends it later."""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.models import Job, JobStatus
from app.db.session import rows_changed
from app.settings import Settings

__all__ = ["enqueue_job"]

log = logging.getLogger(__name__)


def enqueue_job(factory: sessionmaker[Session], settings: Settings, job_id: str) -> bool:
    """Send ``job_id`` once: True if this call sent it, False if the broker is down or the job is
    no longer waiting to be sent (another sender won, or it was cancelled)."""
    from worker.celery_app import TASK_NAME, sender_for

    # Claiming the send first keeps two sweepers (API replicas, the API and `cartl serve`) from
    # sending the same job twice in the common case; a duplicate would still be harmless.
    with factory() as session, session.begin():
        claimed = rows_changed(
            session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.status == JobStatus.queued.value,
                    Job.enqueued_at.is_(None),
                    Job.cancel_requested.is_(False),
                )
                .values(enqueued_at=utcnow())
            )
        )
    if not claimed:
        return False
    try:
        _check_reachable(settings.resolved_broker_url)
        sender_for(settings).send_task(TASK_NAME, args=[job_id], queue=settings.queue, retry=False)
    except Exception as exc:  # kombu raises several types for "broker unreachable"
        log.warning(
            "job %s: broker unreachable (%s); it stays queued and is sent later", job_id, exc
        )
        with factory() as session, session.begin():
            session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=None))
        return False
    log.info("job %s: enqueued on %s", job_id, settings.queue)
    return True


def _check_reachable(url: str, timeout: float = 1.0) -> None:
    """Fail in a second when a network broker does not answer: its client retries with backoff
    for several seconds first, which would hold the sweeper (and tests) for nothing."""
    parts = urlsplit(url)
    if parts.scheme in _NETWORK_PORTS:
        port = parts.port or _NETWORK_PORTS[parts.scheme]
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            pass


_NETWORK_PORTS = {"redis": 6379, "rediss": 6380, "amqp": 5672, "amqps": 5671, "pyamqp": 5672}
