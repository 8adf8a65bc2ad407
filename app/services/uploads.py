"""Uploaded files, one resource of two kinds (checkpoints and datasets): upload, list, get, delete.

What sets a kind apart is declared once, in its :class:`UploadKind` (``app.services.checkpoints``,
``app.services.datasets``): its table and id prefix, the form fields it takes, how its file is
validated and what of that is recorded. The rest is here, the same for both.

The web layer knows how to read a request; the services only see a :data:`Receiver`, a callable
that streams the upload's file part to storage under a key the service chooses (from the
sanitised file name) and returns what it wrote plus the small form fields. The flow is then:
receive, probe in a child process, insert the row and commit; on any failure (a bad file, a
timeout, the client going away, the database) the object's folder is deleted and no row remains.
An upload of bytes the owner already uploaded (same sha256) with the same fields is answered
with the row made earlier: :func:`find_reusable`, between the receiving and the probe, and the
new copy is deleted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Generic, TypeVar, cast

import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import Base, new_id
from app.db.models import Job, JobStatus
from app.errors import (
    ConflictError,
    FieldError,
    NotFoundError,
    ServiceUnavailableError,
    StorageFullError,
    UnprocessableError,
)
from app.services.ids import is_id
from app.services.pagination import Page, paginate
from app.settings import Settings
from app.shared import display_name
from app.storage import Storage, StoredFile, problem_text, storage_problem

__all__ = [
    "SHA256_PATTERN",
    "ReceivedUpload",
    "Receiver",
    "UploadKind",
    "create_upload",
    "delete_upload",
    "find_reusable",
    "get_upload",
    "int_field",
    "list_uploads",
    "safe_filename",
]

#: A file's sha256 as rows record it and the API shows it: 64 lowercase hex digits.
SHA256_PATTERN = r"^[0-9a-f]{64}$"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Suffixes that loaders dispatch on, kept whole when a long name is shortened.
_COMPOUND = (".tar.gz", ".tar.bz2", ".tar.xz")
_MAX_NAME = 120
# Rows of one owner with the same bytes that an upload is compared with (each differs in its
# fields): far more than any real use; past it an upload is simply stored again.
_MAX_REUSE_CANDIDATES = 100

R = TypeVar("R", bound=Base)


@dataclass(frozen=True)
class ReceivedUpload:
    stored: StoredFile
    key: str
    filename: str
    fields: Mapping[str, str] = field(default_factory=dict)


#: Streams the file part to the storage key made from its file name; returns what it wrote.
Receiver = Callable[[Callable[[str], str]], Awaitable[ReceivedUpload]]


@dataclass(frozen=True)
class UploadKind(Generic[R]):
    """What sets one kind of uploaded file apart from the other."""

    #: In messages ("no checkpoint with id ..."); a job names its object in ``<name>_id``.
    name: str
    #: The table of its rows; a row's files are kept under ``<table name>/<id>/``.
    model: type[R]
    #: Its ids' prefix: ``ckpt`` makes ``ckpt_019a...``.
    id_prefix: str
    #: The name of a file part sent without one; loaders then judge the file by its content.
    default_name: str
    #: ``probe(path, settings, options)``: the stored file loaded in a child process, summed up
    #: (a :class:`~app.services.probe.ProbeError` for a file that does not load).
    probe: Callable[[Path, Settings, dict[str, Any]], Awaitable[dict[str, Any]]]
    #: The entries of the probe's summary that the row records, one column each.
    recorded: tuple[str, ...]
    #: ``matches(row, filename, fields)``: whether uploading the bytes of ``row`` (as the API
    #: shows it) again, named ``filename`` with the form ``fields``, would record that row.
    matches: Callable[[Mapping[str, Any], str, Mapping[str, str]], bool]
    #: The form fields it takes besides ``file``.
    form_fields: AbstractSet[str] = frozenset()
    #: ``options(fields)``: the form's fields checked (an :class:`UnprocessableError` if not)
    #: and turned into the probe's options.
    options: Callable[[Mapping[str, str]], dict[str, Any]] = lambda _fields: {}

    def as_shown(self, row: R) -> dict[str, Any]:
        """What :attr:`matches` reads of a row: its file name and what the probe recorded."""
        return {"filename": cast(Any, row).filename} | {c: getattr(row, c) for c in self.recorded}


async def create_upload(
    kind: UploadKind[R],
    factory: sessionmaker[Session],
    settings: Settings,
    storage: Storage,
    owner: str,
    receive: Receiver,
) -> tuple[R, bool]:
    """The row recorded, and whether it is new (False: the same bytes and fields were uploaded
    before, and that row is returned; nothing new is kept)."""
    object_id = new_id(kind.id_prefix)

    async def register(upload: ReceivedUpload) -> tuple[R, bool]:
        errors = unknown_fields(upload.fields, kind.form_fields)
        if errors:
            raise UnprocessableError(errors)
        options = kind.options(upload.fields)
        earlier = await find_reusable(
            factory,
            storage,
            kind.model,
            owner,
            upload,
            lambda row: kind.matches(kind.as_shown(row), upload.filename, upload.fields),
        )
        if earlier is not None:
            return earlier, False
        summary = await kind.probe(upload.stored.path, settings, options)
        row = kind.model(
            id=object_id,
            owner=owner,
            filename=display_name(upload.filename, kind.default_name),
            sha256=upload.stored.sha256,
            size=upload.stored.size,
            storage_key=upload.key,
            **{column: summary[column] for column in kind.recorded},
        )
        await commit_new(factory, row)
        return row, True

    prefix = f"{kind.model.__tablename__}/{object_id}"
    return await store_then(storage, prefix, receive, kind.default_name, register)


def list_uploads(
    kind: UploadKind[R],
    session: Session,
    owner: str,
    *,
    limit: int,
    cursor: str | None,
    sha256: str | None = None,
) -> Page[R]:
    """``owner``'s rows of ``kind``, newest first; with ``sha256``, only those of that file."""
    table: Any = kind.model
    query = select(kind.model).where(table.owner == owner)
    if sha256 is not None:
        query = query.where(table.sha256 == sha256)
    return paginate(session, query, table.id, limit=limit, cursor=cursor)


def get_upload(
    kind: UploadKind[R], session: Session, owner: str, object_id: str, *, lock: bool = False
) -> R:
    """``owner``'s row ``object_id`` of ``kind``; another owner's is as missing as no row."""
    row = None
    if is_id(object_id):
        table: Any = kind.model
        query = select(kind.model).where(table.owner == owner, table.id == object_id)
        row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise NotFoundError(f"no {kind.name} with id {object_id!r}")
    return row


def delete_upload(
    kind: UploadKind[R], session: Session, storage: Storage, owner: str, object_id: str
) -> None:
    """Delete the files (``<table>/<id>``) and then the row, unless a live job uses it; the
    request's session commits. Files that cannot be removed fail the request and keep the row
    (a 503 that says so), so nothing is reported deleted that is still on disk."""
    row = get_upload(kind, session, owner, object_id, lock=True)
    _ensure_unused(session, kind.name, object_id, getattr(Job, f"{kind.name}_id"))
    try:
        storage.remove_prefix(f"{kind.model.__tablename__}/{object_id}")
    except OSError as exc:
        problem = storage_problem(exc)
        why = (
            problem_text(problem)
            if problem is not None
            else os.strerror(exc.errno)
            if exc.errno
            else "error"
        )
        raise ServiceUnavailableError(
            f"the files of {kind.name} {object_id} could not be removed from the artifact "
            f"storage ({why}); nothing was deleted, try again once the operator has fixed the "
            "storage"
        ) from None
    session.delete(row)


def safe_filename(name: str | None, default: str) -> str:
    """A file name safe on any file system that keeps the suffix loaders dispatch on.

    Only the last path component is used; runs of other characters become ``_``; no leading dot.
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).lstrip("._")
    if not base:
        return default
    if len(base) > _MAX_NAME:
        lower = base.lower()
        suffix = next((s for s in _COMPOUND if lower.endswith(s)), "")
        if not suffix and "." in base[-16:]:
            suffix = base[base.rindex(".") :]
        base = base[: _MAX_NAME - len(suffix)] + base[len(base) - len(suffix) :]
    return base


def int_field(fields: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise UnprocessableError.one(name, f"must be an integer; got {raw!r}") from None
    if value < minimum:
        raise UnprocessableError.one(name, f"must be >= {minimum}; got {value}")
    return value


async def store_then(
    storage: Storage,
    prefix: str,
    receive: Receiver,
    default_name: str,
    register: Callable[[ReceivedUpload], Awaitable[tuple[R, bool]]],
) -> tuple[R, bool]:
    """Receive the upload under ``prefix/`` and hand it to ``register``, which returns the row
    and whether it made it (False: an earlier row with the same bytes, see
    :func:`find_reusable`). On any failure, and when no new row was made, the folder is
    deleted, so nothing is left behind that no row names."""
    upload: ReceivedUpload | None = None
    try:
        upload = await receive(lambda filename: f"{prefix}/{safe_filename(filename, default_name)}")
        row, created = await register(upload)
        if not created:
            # The same bytes are already stored under the row reused: keep no second copy.
            storage.delete_prefix(prefix)
        return row, created
    except BaseException as exc:
        storage.delete_prefix(prefix)
        problem = storage_problem(exc) if isinstance(exc, Exception) else None
        if problem == "full":
            raise StorageFullError(
                "the artifact storage is full: nothing of this upload was kept; try again once "
                "the operator has freed space"
            ) from None
        if problem is not None:
            raise ServiceUnavailableError(
                f"the artifact storage {problem_text(problem)}; nothing of this upload was kept"
            ) from None
        raise
    finally:
        if upload is not None:
            storage.release(upload.stored)


async def commit_new(factory: sessionmaker[Session], row: Base) -> None:
    """Insert and commit in a worker thread, in a session of its own: an upload holds no
    database connection while its body streams or its file is probed, only for this insert."""

    def insert() -> None:
        with factory() as session, session.begin():
            session.add(row)

    await anyio.to_thread.run_sync(insert)


async def find_reusable(
    factory: sessionmaker[Session],
    storage: Storage,
    model: type[R],
    owner: str,
    upload: ReceivedUpload,
    matches: Callable[[R], bool],
) -> R | None:
    """``owner``'s row of ``model`` whose file has the bytes of ``upload`` (same sha256), that
    ``matches`` (it holds what this upload would record), is stored under the same file name
    (loaders dispatch on its suffix) and whose file is still in storage; None if there is none.

    Called once the upload's sha256 is known (after streaming) and before the probe, so a reuse
    costs no child process. The rows are read ``FOR SHARE`` (on PostgreSQL): a delete of one of
    them that is under way is waited for, and a row it removed is not returned. Another owner's
    rows are never looked at.

    Concurrency: two identical uploads at the same time may both find nothing and both be
    stored as rows of their own. That is accepted (a duplicate costs disk, nothing else); what
    cannot happen is a lost row or a file no row names, since each upload writes under its own
    new folder and only ever deletes that folder.
    """
    table: Any = model
    name = PurePosixPath(upload.key).name
    query = (
        select(model)
        .where(table.owner == owner, table.sha256 == upload.stored.sha256)
        .order_by(table.id)
        .limit(_MAX_REUSE_CANDIDATES)
        .with_for_update(read=True)
    )

    def find() -> R | None:
        with factory() as session, session.begin():
            for row in session.scalars(query):
                key: str = cast(Any, row).storage_key
                if (
                    PurePosixPath(key).name == name
                    and matches(row)
                    and _intact(storage, key, upload.stored.size)
                ):
                    return row
        return None

    return await anyio.to_thread.run_sync(find)


def _intact(storage: Storage, key: str, size: int) -> bool:
    """The stored file is there, of its size (a cheap check: the bytes are not hashed again)."""
    try:
        info = storage.info(key)
    except (OSError, ValueError):
        return False
    return info is not None and info.size == size


def _ensure_unused(session: Session, what: str, object_id: str, column: Any) -> None:
    """A 409 if a queued or running job uses the object (it would lose its input)."""
    job = session.execute(
        select(Job.id, Job.status)
        .where(column == object_id, Job.status.in_([JobStatus.queued, JobStatus.running]))
        .limit(1)
    ).first()
    if job is not None:
        raise ConflictError(
            f"{what} {object_id} is used by job {job.id}, which is {job.status}; cancel the job "
            "or wait for it to finish, then delete again"
        )


def unknown_fields(fields: Mapping[str, str], allowed: AbstractSet[str]) -> list[FieldError]:
    return [
        FieldError(name, f"unknown form field; accepted: file, {', '.join(sorted(allowed))}")
        for name in fields
        if name not in allowed
    ]
