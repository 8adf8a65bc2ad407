"""Checkpoints: upload (stream, validate in a child process, record), list, get, delete.

An upload of bytes the owner has uploaded before, with fields that would record the same row
(:func:`upload_matches`), is answered with that row instead of a new one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import new_id
from app.db.models import Checkpoint
from app.errors import UnprocessableError
from app.services.ids import ARCH_PATTERN
from app.services.pagination import Page, paginate
from app.services.probe import ProbeError, probe_checkpoint
from app.services.uploads import (
    ReceivedUpload,
    Receiver,
    commit_new,
    delete_owned,
    display_name,
    find_reusable,
    get_owned,
    int_field,
    store_then,
    unknown_fields,
)
from app.settings import Settings
from app.storage import Storage
from cartl_core.checkpoints import PLAIN_FORMAT

__all__ = [
    "FORM_FIELDS",
    "create_checkpoint",
    "delete_checkpoint",
    "get_checkpoint",
    "list_checkpoints",
    "upload_matches",
]

# For a file part without a name; loaders then judge the file by its content.
DEFAULT_NAME = "checkpoint.bin"

#: Form fields besides ``file``: for plain state dicts, which do not describe themselves.
FORM_FIELDS = {"arch", "num_classes", "in_channels", "input_size"}
#: The input side the probe gives plain weights uploaded without ``input_size``.
PLAIN_INPUT_SIZE = 32
_INT_FIELDS = ("num_classes", "in_channels", "input_size")


def upload_matches(recorded: Mapping[str, Any], filename: str, fields: Mapping[str, str]) -> bool:
    """Whether uploading the bytes of the checkpoint ``recorded`` (a row, as the API shows it)
    again, named ``filename`` with the form ``fields``, would record the same checkpoint.

    The server decides with it whether to reuse the row (before the probe), the client whether
    to upload at all; both err towards a new upload. Every field given must equal what the row
    recorded. A field left out gives what the probe derives: from the file for a self-describing
    checkpoint (which ignores the fields); for plain weights ``arch`` is required (without it
    the upload is refused: no reuse), ``num_classes`` and ``in_channels`` come from the weights
    (the same bytes give the same values) and ``input_size`` is :data:`PLAIN_INPUT_SIZE`.
    """
    if set(fields) - FORM_FIELDS:
        return False
    if recorded.get("filename") != display_name(filename, DEFAULT_NAME):
        return False
    shape = recorded.get("input_shape") or []
    if len(shape) != 3:
        return False
    actual: dict[str, Any] = {
        "arch": recorded.get("arch"),
        "num_classes": recorded.get("num_classes"),
        "in_channels": shape[0],
        "input_size": shape[1],
    }
    given: dict[str, Any] = {"arch": fields.get("arch", "").strip() or None}
    for name in _INT_FIELDS:
        raw = fields.get(name, "").strip()
        try:
            given[name] = int(raw) if raw else None
        except ValueError:
            return False
    if any(value is not None and value != actual[name] for name, value in given.items()):
        return False
    if (recorded.get("description") or {}).get("format") == PLAIN_FORMAT:
        if given["arch"] is None:
            return False
        if given["input_size"] is None and actual["input_size"] != PLAIN_INPUT_SIZE:
            return False
    return True


def _recorded(row: Checkpoint) -> dict[str, Any]:
    return {
        "filename": row.filename,
        "arch": row.arch,
        "num_classes": row.num_classes,
        "input_shape": row.input_shape,
        "description": row.description,
    }


async def create_checkpoint(
    factory: sessionmaker[Session],
    settings: Settings,
    storage: Storage,
    owner: str,
    receive: Receiver,
) -> tuple[Checkpoint, bool]:
    """The checkpoint recorded, and whether it is new (False: the same bytes and fields were
    uploaded before, and that row is returned; nothing new is kept)."""
    checkpoint_id = new_id("ckpt")

    async def register(upload: ReceivedUpload) -> tuple[Checkpoint, bool]:
        errors = unknown_fields(upload.fields, FORM_FIELDS)
        if errors:
            raise UnprocessableError(errors)
        arch = upload.fields.get("arch", "").strip() or None
        if arch is not None and not re.match(ARCH_PATTERN, arch):
            raise UnprocessableError.one(
                "arch", "an architecture name such as small-cnn, wrn-34-10 or torchvision:resnet50"
            )
        num_classes = int_field(upload.fields, "num_classes", minimum=2)
        in_channels = int_field(upload.fields, "in_channels", minimum=1)
        input_size = int_field(upload.fields, "input_size", minimum=8)
        earlier = await find_reusable(
            factory,
            storage,
            Checkpoint,
            owner,
            upload,
            lambda row: upload_matches(_recorded(row), upload.filename, upload.fields),
        )
        if earlier is not None:
            return earlier, False
        try:
            summary = await probe_checkpoint(
                upload.stored.path,
                timeout_s=settings.probe_timeout_s,
                arch=arch,
                num_classes=num_classes,
                in_channels=in_channels,
                input_size=input_size,
            )
        except ProbeError as exc:
            if exc.kind == "ArchitectureError" and arch is not None:
                raise ProbeError(exc.message, exc.kind, "arch") from None
            raise
        row = Checkpoint(
            id=checkpoint_id,
            owner=owner,
            filename=display_name(upload.filename, DEFAULT_NAME),
            arch=summary["arch"],
            num_classes=summary["num_classes"],
            num_blocks=summary["num_blocks"],
            input_shape=summary["input_shape"],
            description=summary["description"],
            sha256=upload.stored.sha256,
            size=upload.stored.size,
            storage_key=upload.key,
        )
        await commit_new(factory, row)
        return row, True

    return await store_then(
        storage, f"checkpoints/{checkpoint_id}", receive, DEFAULT_NAME, register
    )


def list_checkpoints(
    session: Session, owner: str, *, limit: int, cursor: str | None, sha256: str | None = None
) -> Page[Checkpoint]:
    """``owner``'s checkpoints, newest first; with ``sha256``, only those of that file."""
    query = select(Checkpoint).where(Checkpoint.owner == owner)
    if sha256 is not None:
        query = query.where(Checkpoint.sha256 == sha256)
    return paginate(session, query, Checkpoint.id, limit=limit, cursor=cursor)


def get_checkpoint(session: Session, owner: str, checkpoint_id: str) -> Checkpoint:
    return get_owned(session, Checkpoint, owner, checkpoint_id, "checkpoint")


def delete_checkpoint(session: Session, storage: Storage, owner: str, checkpoint_id: str) -> None:
    delete_owned(session, storage, Checkpoint, owner, checkpoint_id, "checkpoint")
