"""The one storage interface: what the API and the workers ask of artifact storage.

Two backends implement it: a local folder (:mod:`app.storage.local`, also a shared volume or an
NFS export in a team deployment) and an S3-compatible bucket (:mod:`app.storage.s3`: AWS S3,
MinIO, Ceph, R2, GCS's XML API). Keys are relative POSIX paths made by the service, never by
users: ``checkpoints/ID/NAME``, ``datasets/ID/NAME``, ``jobs/ID/...``.

Whatever the backend, a key holds a whole object or nothing: a reader never sees half a write,
and a failed write leaves nothing a row could name.
"""

from __future__ import annotations

import errno
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from app.errors import exception_chain

__all__ = [
    "PRIVATE_UMASK",
    "ObjectInfo",
    "Problem",
    "Storage",
    "StorageError",
    "StoredFile",
    "Tally",
    "UploadTooLargeError",
    "check_key",
    "keep_files_private",
    "problem_text",
    "storage_problem",
]

#: The umask of the service's processes: no access for group and others.
PRIVATE_UMASK = 0o077


def keep_files_private() -> None:
    """Files 0600 and folders 0700 from now on, in this process and the children it starts
    (``cartl serve``'s worker). SQLite gives a database's -wal and -shm the database's mode."""
    os.umask(PRIVATE_UMASK)


#: What a failed storage operation says about the storage (see :func:`storage_problem`).
Problem = Literal["full", "unwritable", "no-bucket", "denied", "unreachable"]

_PROBLEM_TEXT: dict[str, str] = {
    "full": "is full",
    "unwritable": "cannot be written (read-only, or no permission)",
    "no-bucket": "has no such bucket (create it, or fix CARTL_STORAGE_URL)",
    "denied": "refused the service's credentials (check the AWS_* credentials and the "
    "bucket's policy)",
    "unreachable": "cannot be reached (is the endpoint up? AWS_ENDPOINT_URL)",
}


def problem_text(problem: str) -> str:
    """``"the artifact storage <problem_text>"`` reads as a sentence."""
    return _PROBLEM_TEXT[problem]


class UploadTooLargeError(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than the limit of {limit} bytes")
        self.limit = limit


class Tally:
    """The bytes of an upload as they pass: their count, against ``limit``, and their sha256."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._digest = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise UploadTooLargeError(self.limit)
        self._digest.update(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


class StorageError(OSError):
    """A storage operation failed for a reason the operator must fix: ``problem`` says which.

    An ``OSError`` (EIO), so callers that handle a local folder's failures handle these too."""

    def __init__(self, problem: Problem, detail: str) -> None:
        super().__init__(errno.EIO, f"the artifact storage {problem_text(problem)}: {detail}")
        self.problem: Problem = problem


@dataclass(frozen=True)
class StoredFile:
    """A finished write: the key, its size and sha256, and a local file with the same bytes
    (the stored file itself on a local folder; a spooled copy for a bucket, which
    :meth:`Storage.release` removes)."""

    path: Path
    size: int
    sha256: str
    key: str = ""


@dataclass(frozen=True)
class ObjectInfo:
    """What a stored object says of itself without being read: its size, and the sha256 it was
    written with where the backend keeps one (a bucket's object metadata)."""

    size: int
    sha256: str | None = None


def check_key(key: str) -> PurePosixPath:
    """A key as a relative path with no ``..``; anything else is a bug in the caller."""
    rel = PurePosixPath(key)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or key.endswith("/"):
        raise ValueError(f"bad storage key {key!r}")
    return rel


class Storage(ABC):
    """Artifact storage: whole objects under keys, written atomically."""

    #: Where the files are, for logs and the operator ("/data/artifacts", "s3://bucket/prefix").
    location: str

    #: Whether :meth:`path` names the stored file itself, so jobs read and write in place.
    is_local: bool = False

    def exists(self, key: str) -> bool:
        return self.info(key) is not None

    @abstractmethod
    def info(self, key: str) -> ObjectInfo | None:
        """The object's size (and recorded sha256, where kept); None if there is none."""

    @abstractmethod
    async def write_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, limit: int
    ) -> StoredFile:
        """Stream ``chunks`` to ``key`` hashing as it goes; past ``limit`` bytes, or on any
        failure, nothing is kept. Call :meth:`release` when done with the local copy."""

    def release(self, stored: StoredFile) -> None:  # noqa: B027 (a local folder has nothing to do)
        """Drop the local copy :meth:`write_stream` made, if it made one."""

    @abstractmethod
    def put_file(self, key: str, src: Path, sha256: str | None = None) -> StoredFile:
        """Store a copy of ``src`` under ``key`` atomically (``sha256``: its hash, if known)."""

    @abstractmethod
    def fetch(self, key: str, dest: Path, sha256: str | None = None) -> Path:
        """The object's bytes in the local file ``dest`` (atomically); with ``sha256``, a copy
        whose hash differs is refused (:class:`ValueError`) and not kept."""

    @abstractmethod
    def read_chunks(self, key: str, chunk_bytes: int = 1024**2) -> Iterator[bytes]:
        """The object's bytes, streamed."""

    def download_url(self, key: str, filename: str, expires_s: int) -> str | None:
        """A URL a client can fetch the object from without the API (None: serve it)."""
        return None

    @abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """The keys of the objects under the folder ``prefix``."""

    @abstractmethod
    def folders(self, folder: str) -> dict[str, float]:
        """The sub-folders of ``folder`` (``checkpoints``, ``datasets``, ``jobs``), each with
        the time of its newest write (epoch seconds)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove a folder (``checkpoints/ID``) and everything in it, as far as possible
        (clean-up after a failure, which must not raise a second error)."""

    @abstractmethod
    def remove_prefix(self, prefix: str) -> None:
        """Remove a folder or raise ``OSError``; a folder that is not there is fine."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; one that is not there is fine."""

    def abort_stale_uploads(self, older_than_s: float) -> int:
        """Abort uploads begun more than ``older_than_s`` ago whose parts a killed process left
        (a bucket's multipart uploads); returns how many. A folder writes whole files."""
        return 0

    @abstractmethod
    def check(self) -> str:
        """``"ok"``, or what is wrong, in words (for readiness): the storage takes a write."""

    def path(self, key: str) -> Path:
        """The stored file itself, on a backend that has one (:attr:`is_local`)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no local files")

    def scrub(self, text: str) -> str:
        """``text`` without where the files are on this server (an error a user sees)."""
        return text


_FULL = {errno.ENOSPC, errno.EDQUOT}
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def storage_problem(exc: BaseException) -> Problem | None:
    """What a failed storage operation says about the storage, or None if nothing.

    Libraries report a full disk in their own words: an ``OSError`` somewhere in the chain,
    safetensors' "(os error 28)", torch's zip writer "inline_container.cc ... unexpected pos"
    (the position it expected after a short write; errno is lost on the way). A bucket's
    failures arrive as :class:`StorageError` (:mod:`app.storage.s3` classifies them).
    """
    for seen in exception_chain(exc):
        if isinstance(seen, StorageError):
            return seen.problem
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return "full"
        if isinstance(seen, OSError) and seen.errno in _UNWRITABLE:
            return "unwritable"
        text = str(seen)
        if "os error 28" in text or "No space left on device" in text:
            return "full"
        if "os error 30" in text or "Read-only file system" in text:
            return "unwritable"
        if "inline_container.cc" in text and "unexpected pos" in text:
            return "full"
    return None
