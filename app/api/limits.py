"""Per-key limits held in the API process: how many uploads one key may stream at once.

An upload occupies the process for as long as its client takes to send it and its file takes to
probe (a child process of up to a few GB): one key flooding uploads must not take that from
everyone else. The count is per API process; with several processes, the limit is per process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from app.errors import TooManyRequestsError

__all__ = ["UploadSlots"]


class UploadSlots:
    """Counts each key's uploads in progress. Used from the event loop only, so no lock."""

    def __init__(self) -> None:
        self.active: Counter[str] = Counter()

    @contextmanager
    def hold(self, owner: str, limit: int, retry_after_s: int) -> Iterator[None]:
        if self.active[owner] >= limit:
            raise TooManyRequestsError(
                f"this key already has {limit} uploads in progress, the most it may have at "
                f"once (CARTL_MAX_UPLOADS_PER_KEY); retry after one finishes",
                retry_after_s=retry_after_s,
            )
        self.active[owner] += 1
        try:
            yield
        finally:
            self.active[owner] -= 1
            if not self.active[owner]:
                del self.active[owner]
