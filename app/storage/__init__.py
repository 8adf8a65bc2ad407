"""Artifact storage: uploads, weights and resumable training state, behind one interface
(:class:`Storage`): a local folder by default, an S3-compatible bucket with
``CARTL_STORAGE_URL=s3://bucket/prefix``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.storage.base import (
    ObjectInfo,
    Storage,
    StorageError,
    StoredFile,
    UploadTooLargeError,
    keep_files_private,
    problem_text,
    storage_problem,
)
from app.storage.local import MIN_FREE_BYTES, LocalStorage
from cartl_core.provenance import sha256_file

if TYPE_CHECKING:
    from app.settings import Settings

# sha256_file is cartl_core's (a job's provenance hashes files too), re-exported here.
__all__ = [
    "MIN_FREE_BYTES",
    "LocalStorage",
    "ObjectInfo",
    "Storage",
    "StorageError",
    "StoredFile",
    "UploadTooLargeError",
    "keep_files_private",
    "open_storage",
    "problem_text",
    "sha256_file",
    "storage_problem",
]


def open_storage(settings: Settings) -> Storage:
    """The storage the settings name: ``storage_url`` (a bucket) if set, else the folder."""
    if settings.storage_url:
        from app.storage.s3 import S3Storage

        return S3Storage(
            settings.storage_url,
            scratch=settings.scratch_dir,
            part_bytes=settings.storage_part_bytes,
            presign_endpoint=settings.storage_presign_endpoint,
        )
    return LocalStorage(settings.resolved_storage_dir)
