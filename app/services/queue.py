"""Putting jobs on the broker, and the broker's Celery configuration.

A job row is committed first, then its id is sent by task name (:data:`TASK_NAME`): the API never
imports the worker. When the broker is unreachable the job stays ``queued`` with no
``enqueued_at``, and the sweeper (:mod:`app.services.recovery`) sends it later.

Delivery is at-least-once: a message is acknowledged only after its task returns
(``acks_late``), a worker that dies mid-task hands the message back
(``task_reject_on_worker_lost``), and each worker process takes one message at a time and one
job per child process, so a finished job's GPU memory goes back with the process. The worker's
claim (:func:`app.services.job_states.claim`) makes a redelivered message harmless.
"""

from __future__ import annotations

import enum
import logging
import socket
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu.exceptions import KombuError
from sqlalchemy.orm import Session, sessionmaker

from app.services import job_states
from app.settings import Settings

__all__ = ["TASK_NAME", "Send", "broker_errors", "celery_config", "enqueue_job", "sender_for"]

log = logging.getLogger(__name__)

TASK_NAME = "cartl.run_job"


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue,
        "task_routes": {TASK_NAME: {"queue": settings.queue}},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 1,
        "worker_hijack_root_logger": False,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_transport_options": _transport_options(settings.resolved_broker_url),
        "imports": ["worker.tasks"],
    }


def _transport_options(url: str) -> dict[str, Any]:
    if url.startswith(("redis://", "rediss://")):
        # Redis hands an unacknowledged message to another worker after this long; a job that
        # is still running then keeps its claim (fresh heartbeat), so the duplicate just ends.
        return {"visibility_timeout": 6 * 3600}
    return {}


class Send(enum.Enum):
    """What :func:`enqueue_job` did. Only ``broker_down`` says anything about the broker."""

    sent = "sent"
    not_waiting = "not waiting"  # another sender won, or it was cancelled or claimed meanwhile
    broker_down = "broker down"


def enqueue_job(factory: sessionmaker[Session], settings: Settings, job_id: str) -> Send:
    """Send ``job_id`` once."""
    with factory() as session, session.begin():
        claimed = job_states.claim_send(session, job_id)
    if not claimed:
        return Send.not_waiting
    sender = sender_for(settings)
    try:
        _check_reachable(settings.resolved_broker_url)
        sender.send_task(TASK_NAME, args=[job_id], queue=settings.queue, retry=False)
    except broker_errors(sender) as exc:
        log.warning(
            "job %s: broker unreachable (%s); it stays queued and is sent later", job_id, exc
        )
        with factory() as session, session.begin():
            job_states.release_send(session, job_id)
        return Send.broker_down
    log.info("job %s: enqueued on %s", job_id, settings.queue)
    return Send.sent


def _check_reachable(url: str, timeout: float = 1.0) -> None:
    """Fail in a second when a network broker does not answer: its client retries with backoff
    for several seconds first, which would hold the sweeper (and tests) for nothing."""
    parts = urlsplit(url)
    if parts.scheme in _NETWORK_PORTS:
        port = parts.port or _NETWORK_PORTS[parts.scheme]
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            pass


_NETWORK_PORTS = {"redis": 6379, "rediss": 6380, "amqp": 5672, "amqps": 5671, "pyamqp": 5672}


@lru_cache(maxsize=8)
def _sender(broker_url: str, queue: str) -> Celery:
    settings = Settings(broker_url=broker_url, queue=queue)
    app = Celery("cartl-sender", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    return app


def sender_for(settings: Settings) -> Celery:
    """A Celery app that only sends, for ``settings``' broker (the API and the sweeper)."""
    return _sender(settings.resolved_broker_url, settings.queue)


@lru_cache(maxsize=8)
def _errors_of(sender: Celery) -> tuple[type[BaseException], ...]:
    connection = sender.connection_for_write()  # lazy: this does not connect
    return (OSError, KombuError, *connection.connection_errors, *connection.channel_errors)


def broker_errors(sender: Celery) -> tuple[type[BaseException], ...]:
    """What a send can raise when the broker is down or refuses: socket errors, kombu's own,
    and the errors the broker's transport declares (redis's, SQLAlchemy's for the embedded
    broker, amqp's). Anything else is a bug and is not caught."""
    return _errors_of(sender)
