"""Errors the service raises on purpose; each becomes one ``application/problem+json`` response.

Services raise these (they know nothing of HTTP frameworks); :mod:`app.api.problems` renders them
(RFC 9457: ``type``, ``title``, ``status``, ``detail``, and ``errors`` for per-field problems)::

    AppError                         500  base; never raised itself
    ├── BadRequestError              400  a malformed request (e.g. a broken multipart body)
    ├── UnauthorizedError            401  no API key, or an unknown or revoked one
    ├── NotFoundError                404  no such object, or another owner's
    ├── RequestTimeoutError          408  a body that stalled past CARTL_BODY_TIMEOUT_S
    ├── ConflictError                409  the object's state forbids it (in use, finished, ...)
    ├── PayloadTooLargeError         413  an upload past the size limit
    ├── UnsupportedMediaTypeError    415  a body of the wrong media type
    ├── UnprocessableError           422  well-formed but invalid: lists ``FieldError``s
    ├── TooManyRequestsError         429  past a per-key limit; carries Retry-After
    ├── StoredArtifactError          500  a stored file missing or failing its checksum
    ├── ServiceUnavailableError      503  the database, broker or storage is unusable
    └── StorageFullError             507  the artifact storage is full

Every message says what to fix; none carries a traceback or an internal path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal-error"

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
    status = 400
    title = "Bad Request"
    slug = "bad-request"


class UnauthorizedError(AppError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class NotFoundError(AppError):
    status = 404
    title = "Not Found"
    slug = "not-found"


class ConflictError(AppError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class PayloadTooLargeError(AppError):
    status = 413
    title = "Content Too Large"
    slug = "payload-too-large"


class RequestTimeoutError(AppError):
    status = 408
    title = "Request Timeout"
    slug = "request-timeout"

    def __init__(self, detail: str) -> None:
        # The rest of the body may still be on its way: the connection cannot be reused.
        super().__init__(detail, headers={"Connection": "close"})


class TooManyRequestsError(AppError):
    status = 429
    title = "Too Many Requests"
    slug = "too-many-requests"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class UnsupportedMediaTypeError(AppError):
    status = 415
    title = "Unsupported Media Type"
    slug = "unsupported-media-type"


class UnprocessableError(AppError):
    status = 422
    title = "Validation Error"
    slug = "validation-error"

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

    status = 500
    title = "Stored Artifact Unavailable"
    slug = "artifact-unavailable"


class StorageFullError(AppError):
    status = 507
    title = "Insufficient Storage"
    slug = "storage-full"


class ServiceUnavailableError(AppError):
    status = 503
    title = "Service Unavailable"
    slug = "service-unavailable"
