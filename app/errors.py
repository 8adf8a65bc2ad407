"""Errors the service raises on purpose; each becomes one ``application/problem+json`` response.

Services raise these (they know nothing of HTTP); :mod:`app.api.problems` renders them (RFC 9457:
``type``, ``title``, ``status``, ``detail``, and ``errors`` for per-field problems), with the
status, type and title that its table ``PROBLEM_TYPES`` gives each class. Each class below is
one kind of refusal, all direct subclasses of :class:`AppError`.

Every message says what to fix; none carries a traceback or an internal path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_FIELD_ERRORS",
    "AppError",
    "BadRequestError",
    "ConflictError",
    "FieldError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RequestTimeoutError",
    "ServiceUnavailableError",
    "StorageFullError",
    "StoredArtifactError",
    "TooManyRequestsError",
    "UnauthorizedError",
    "UnprocessableError",
    "UnsupportedMediaTypeError",
    "exception_chain",
]


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or during, outermost first: libraries wrap the error
    that says what went wrong (a full disk, a read-only database) in their own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


#: Most per-field errors one answer lists; the detail gives the count when there were more.
MAX_FIELD_ERRORS = 20


@dataclass(frozen=True)
class FieldError:
    """One invalid input: ``field`` is a dotted path such as ``params.k`` or ``file``."""

    field: str
    message: str


class AppError(Exception):
    """Base of the errors below; carries the detail, any response headers and extra members."""

    def __init__(
        self,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class BadRequestError(AppError):
    """A malformed request, such as a broken multipart body."""


class UnauthorizedError(AppError):
    """No API key, or an unknown or revoked one."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class NotFoundError(AppError):
    """No such object, or another owner's (which must look the same)."""


class ConflictError(AppError):
    """The object's state forbids this (in use, finished, ...)."""


class PayloadTooLargeError(AppError):
    """A body past its size limit."""


class RequestTimeoutError(AppError):
    """A body that stalled past CARTL_BODY_TIMEOUT_S."""

    def __init__(self, detail: str) -> None:
        # The rest of the body may still be on its way: the connection cannot be reused.
        super().__init__(detail, headers={"Connection": "close"})


class TooManyRequestsError(AppError):
    """Past a per-key limit; says when to try again."""

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class UnsupportedMediaTypeError(AppError):
    """A body of the wrong media type."""


class UnprocessableError(AppError):
    """Well-formed but invalid input: one :class:`FieldError` per field."""

    def __init__(self, errors: Sequence[FieldError], detail: str | None = None) -> None:
        if not errors:
            raise ValueError("UnprocessableError needs at least one FieldError")
        self.errors = list(errors)
        first = self.errors[0]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(detail or f"{first.field}: {first.message}{more}")

    @classmethod
    def one(cls, field: str, message: str) -> UnprocessableError:
        return cls([FieldError(field, message)])


class StoredArtifactError(AppError):
    """A stored file is missing or fails its recorded checksum: the server's fault, not the
    client's, and no retry mends it; the detail names the object, never a server path."""


class StorageFullError(AppError):
    """The artifact storage is full; nothing of the request was kept."""


class ServiceUnavailableError(AppError):
    """The database, broker or storage is unusable."""
