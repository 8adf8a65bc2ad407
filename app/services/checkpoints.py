"""Checkpoints: upload (stream, validate in a child process, record), list, get, delete."""

from __future__ import annotations

import re

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
    get_owned,
    int_field,
    store_then,
    unknown_fields,
)
from app.settings import Settings
from app.storage import Storage

__all__ = [
    "FORM_FIELDS",
    "create_checkpoint",
    "delete_checkpoint",
    "get_checkpoint",
    "list_checkpoints",
]

# For a file part without a name; loaders then judge the file by its content.
DEFAULT_NAME = "checkpoint.bin"

#: Form fields besides ``file``: for plain state dicts, which do not describe themselves.
FORM_FIELDS = {"arch", "num_classes", "in_channels", "input_size"}


async def create_checkpoint(
    factory: sessionmaker[Session],
    settings: Settings,
    storage: Storage,
    owner: str,
    receive: Receiver,
) -> Checkpoint:
    checkpoint_id = new_id("ckpt")

    async def register(upload: ReceivedUpload) -> Checkpoint:
        errors = unknown_fields(upload.fields, FORM_FIELDS)
        if errors:
            raise UnprocessableError(errors)
        arch = upload.fields.get("arch", "").strip() or None
        if arch is not None and not re.match(ARCH_PATTERN, arch):
            raise UnprocessableError.one(
                "arch", "an architecture name such as small-cnn, wrn-34-10 or torchvision:resnet50"
            )
        try:
            summary = await probe_checkpoint(
                upload.stored.path,
                timeout_s=settings.probe_timeout_s,
                arch=arch,
                num_classes=int_field(upload.fields, "num_classes", minimum=2),
                in_channels=int_field(upload.fields, "in_channels", minimum=1),
                input_size=int_field(upload.fields, "input_size", minimum=8),
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
        return row

    return await store_then(
        storage, f"checkpoints/{checkpoint_id}", receive, DEFAULT_NAME, register
    )


def list_checkpoints(
    session: Session, owner: str, *, limit: int, cursor: str | None
) -> Page[Checkpoint]:
    query = select(Checkpoint).where(Checkpoint.owner == owner)
    return paginate(session, query, Checkpoint.id, limit=limit, cursor=cursor)


def get_checkpoint(session: Session, owner: str, checkpoint_id: str) -> Checkpoint:
    return get_owned(session, Checkpoint, owner, checkpoint_id, "checkpoint")


def delete_checkpoint(session: Session, storage: Storage, owner: str, checkpoint_id: str) -> None:
    delete_owned(session, storage, Checkpoint, owner, checkpoint_id, "checkpoint")
