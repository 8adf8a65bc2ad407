"""A job's states, as the database stores them and the API shows them.

Plain values with no database or web import, so the schemas, the services, the worker and the
client share one list. The transitions between them are :mod:`app.services.job_states`'.
"""

from __future__ import annotations

import enum

from app.shared import FINISHED

__all__ = ["JobStatus"]


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED
