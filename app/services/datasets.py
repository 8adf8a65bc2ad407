"""Datasets: upload (stream, validate in a child process, record), list, get, delete."""

from __future__ import annotations

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
    get_owned,
    store_then,
    unknown_fields,
)
from app.settings import Settings
from app.storage import Storage

__all__ = ["create_dataset", "delete_dataset", "get_dataset", "list_datasets"]

# For a file part without a name; loaders then judge the file by its content.
DEFAULT_NAME = "dataset.bin"


async def create_dataset(
    factory: sessionmaker[Session],
    settings: Settings,
    storage: Storage,
    owner: str,
    receive: Receiver,
) -> DatasetRow:
    dataset_id = new_id("ds")

    async def register(upload: ReceivedUpload) -> DatasetRow:
        errors = unknown_fields(upload.fields, set())
        if errors:
            raise UnprocessableError(errors)
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
        return row

    return await store_then(storage, f"datasets/{dataset_id}", receive, DEFAULT_NAME, register)


def list_datasets(
    session: Session, owner: str, *, limit: int, cursor: str | None
) -> Page[DatasetRow]:
    query = select(DatasetRow).where(DatasetRow.owner == owner)
    return paginate(session, query, DatasetRow.id, limit=limit, cursor=cursor)


def get_dataset(session: Session, owner: str, dataset_id: str) -> DatasetRow:
    return get_owned(session, DatasetRow, owner, dataset_id, "dataset")


def delete_dataset(session: Session, storage: Storage, owner: str, dataset_id: str) -> None:
    delete_owned(session, storage, DatasetRow, owner, dataset_id, "dataset")
