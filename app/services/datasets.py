"""Datasets: upload (stream, validate in a child process, record), list, get, delete.

An upload of bytes the owner has uploaded before, under the same name (:func:`upload_matches`),
is answered with that row instead of a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import new_id
from app.db.models import DatasetRow
from app.errors import UnprocessableError
from app.services.pagination import Page, paginate
from app.services.probe import probe_dataset
from app.services.uploads import (
    ReceivedUpload,
    Receiver,
    commit_new,
    delete_owned,
    display_name,
    find_reusable,
    get_owned,
    store_then,
    unknown_fields,
)
from app.settings import Settings
from app.storage import Storage

__all__ = ["create_dataset", "delete_dataset", "get_dataset", "list_datasets", "upload_matches"]

# For a file part without a name; loaders then judge the file by its content.
DEFAULT_NAME = "dataset.bin"


def upload_matches(recorded: Mapping[str, Any], filename: str, fields: Mapping[str, str]) -> bool:
    """Whether uploading the bytes of the dataset ``recorded`` (a row, as the API shows it)
    again, named ``filename`` with the form ``fields``, would record the same dataset.

    A dataset upload takes no form field (any is refused: no reuse); what it records besides the
    bytes' own summary is the file name, which also picks the loader (by its suffix), so the
    name must be the same. The server also compares the stored name (the storage key's).
    """
    return not fields and recorded.get("filename") == display_name(filename, DEFAULT_NAME)


async def create_dataset(
    factory: sessionmaker[Session],
    settings: Settings,
    storage: Storage,
    owner: str,
    receive: Receiver,
) -> tuple[DatasetRow, bool]:
    """The dataset recorded, and whether it is new (False: the same bytes were uploaded under
    the same name before, and that row is returned; nothing new is kept)."""
    dataset_id = new_id("ds")

    async def register(upload: ReceivedUpload) -> tuple[DatasetRow, bool]:
        errors = unknown_fields(upload.fields, set())
        if errors:
            raise UnprocessableError(errors)
        earlier = await find_reusable(
            factory,
            storage,
            DatasetRow,
            owner,
            upload,
            lambda row: upload_matches({"filename": row.filename}, upload.filename, upload.fields),
        )
        if earlier is not None:
            return earlier, False
        summary = await probe_dataset(
            upload.stored.path,
            timeout_s=settings.probe_timeout_s,
            max_extract_bytes=settings.max_extract_bytes,
        )
        row = DatasetRow(
            id=dataset_id,
            owner=owner,
            filename=display_name(upload.filename, DEFAULT_NAME),
            format=summary["format"],
            num_classes=summary["num_classes"],
            class_names=summary["class_names"],
            train_size=summary["train_size"],
            test_size=summary["test_size"],
            input_shape=summary["input_shape"],
            sha256=upload.stored.sha256,
            size=upload.stored.size,
            storage_key=upload.key,
        )
        await commit_new(factory, row)
        return row, True

    return await store_then(storage, f"datasets/{dataset_id}", receive, DEFAULT_NAME, register)


def list_datasets(
    session: Session, owner: str, *, limit: int, cursor: str | None, sha256: str | None = None
) -> Page[DatasetRow]:
    """``owner``'s datasets, newest first; with ``sha256``, only those of that file."""
    query = select(DatasetRow).where(DatasetRow.owner == owner)
    if sha256 is not None:
        query = query.where(DatasetRow.sha256 == sha256)
    return paginate(session, query, DatasetRow.id, limit=limit, cursor=cursor)


def get_dataset(session: Session, owner: str, dataset_id: str) -> DatasetRow:
    return get_owned(session, DatasetRow, owner, dataset_id, "dataset")


def delete_dataset(session: Session, storage: Storage, owner: str, dataset_id: str) -> None:
    delete_owned(session, storage, DatasetRow, owner, dataset_id, "dataset")
