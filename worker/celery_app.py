"""The Celery application: ``celery -A worker.celery_app worker -Q gpu``.

Configuration comes from the ``CARTL_*`` settings when Celery first needs it, not at import.
Delivery is at-least-once: a message is acknowledged only after its task returns
(``acks_late``), a worker that dies mid-task hands the message back
(``task_reject_on_worker_lost``), and each worker process takes one message at a time and one
job per child process, so a finished job's GPU memory goes back with the process. The database
claim in :mod:`worker.runner` makes a redelivered message harmless.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from app.settings import Settings, apply_log_level, get_settings

__all__ = ["TASK_NAME", "celery_app", "celery_config", "sender_for"]

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


class _CartlCelery(Celery):  # type: ignore[misc]
    def on_configure(self) -> None:
        # Celery calls this when the configuration is first needed, not at import.
        settings = get_settings()
        apply_log_level(settings)
        self.conf.update(celery_config(settings))


celery_app = _CartlCelery("cartl", set_as_current=False)


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
