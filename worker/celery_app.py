"""The Celery application: ``celery -A worker.celery_app worker -Q gpu``.

Configuration comes from the ``CARTL_*`` settings when Celery first needs it, not at import; the
configuration itself (:func:`app.services.queue.celery_config`) is shared with the API, which
sends tasks by name and never imports this package.
"""

from __future__ import annotations

from celery import Celery

from app.services.queue import TASK_NAME, celery_config
from app.settings import apply_log_level, get_settings
from app.storage import keep_files_private

__all__ = ["TASK_NAME", "celery_app"]


class _CartlCelery(Celery):  # type: ignore[misc]
    def on_configure(self) -> None:
        # Celery calls this when the configuration is first needed, not at import.
        settings = get_settings()
        # Before any task: the files jobs write (weights, state) are the service user's alone.
        keep_files_private()
        apply_log_level(settings)
        self.conf.update(celery_config(settings))


celery_app = _CartlCelery("cartl", set_as_current=False)
