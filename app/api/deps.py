"""Request dependencies: settings, a database session per request, storage, the caller's owner
(found by the key check in :mod:`app.api.guards`).

Everything comes from ``app.state``, filled in by the lifespan (:mod:`app.main`), and from the
request's state; nothing here reads the environment or makes an engine at import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from app.api.guards import OWNER
from app.api.limits import UploadSlots
from app.errors import UnsupportedMediaTypeError
from app.services.ids import ID_PATTERN
from app.settings import Settings
from app.storage import Storage

__all__ = [
    "CursorQuery",
    "EnqueueDep",
    "Enqueuer",
    "LimitQuery",
    "OwnerDep",
    "SessionDep",
    "SessionFactoryDep",
    "SettingsDep",
    "StorageDep",
    "get_enqueuer",
]

#: Sends a committed job to the broker: ``(session_factory, settings, job_id) -> sent``.
Enqueuer = Callable[[sessionmaker[Session], Settings, str], object]


# The ones below only read app.state: async, so they run inline instead of each taking a trip
# through the thread pool (a sync dependency costs one, which the hot GETs felt).
async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


def get_session(request: Request) -> Iterator[Session]:
    """Commit when the endpoint returns, roll back if it raises, before the response is sent."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def get_enqueuer() -> Enqueuer:
    # Imported on first use: the queue module pulls in Celery, which the rest of the API does
    # not need (and tests may swap this dependency for their own sender).
    from app.services.queue import enqueue_job

    return enqueue_job


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
StorageDep = Annotated[Storage, Depends(get_storage)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
EnqueueDep = Annotated[Enqueuer, Depends(get_enqueuer)]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `cartl keys create --name NAME`.",
)


async def get_owner(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The name of the caller's key: the owner of what it makes, and the filter on what it sees.

    The key was checked before the request got here, by the one check every ``/v1`` request
    passes (:mod:`app.api.guards`), which left its owner in the request's state; the bearer
    scheme is declared here for the OpenAPI document only.
    """
    owner: str = getattr(request.state, OWNER)
    return owner


OwnerDep = Annotated[str, Depends(get_owner)]


async def get_upload_owner(request: Request, owner: OwnerDep) -> AsyncIterator[str]:
    """The caller's owner name for an upload, holding one of the key's upload slots until the
    endpoint returns."""
    settings: Settings = request.app.state.settings
    slots: UploadSlots = request.app.state.upload_slots
    with slots.hold(owner, settings.max_uploads_per_key, retry_after_s=5):
        yield owner


UploadOwnerDep = Annotated[str, Depends(get_upload_owner, scope="function")]

LimitQuery = Annotated[int, Query(ge=1, le=100, description="Items per page.")]
CursorQuery = Annotated[
    str | None,
    Query(
        pattern=ID_PATTERN,
        description="`next_cursor` of the previous page: the id of its last item (any id-shaped "
        "value works and means the items created before it).",
    ),
]


def require_json_body(request: Request) -> None:
    """415 for a body that is not JSON (a wrong key was a 401 before: :mod:`app.api.guards`)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise UnsupportedMediaTypeError(
            "send the body as JSON with 'Content-Type: application/json' (got "
            f"{media or 'no Content-Type'})"
        )
