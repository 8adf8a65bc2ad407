"""Artifact storage: a local folder (a shared volume in a team deployment).

Writes are atomic: data goes to a temporary file in the same folder and is renamed into place, so
a reader never sees half a file and a crash leaves at most a ``.tmp-*`` file behind. Keys are
relative POSIX paths made by the service, never by users.

Everything is its owner's alone: folders 0700 (made so here, whatever the umask) and files 0600
(``mkstemp``'s mode). The service's processes also call :func:`keep_files_private`, so what they
create elsewhere (the SQLite database and its -wal/-shm, the embedded broker's file, the files a
job writes) is private too.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.errors import exception_chain
from cartl_core.provenance import sha256_file

# sha256_file is cartl_core's (a job's provenance hashes files too), re-exported here.
__all__ = ["Storage", "StoredFile", "UploadTooLargeError", "keep_files_private", "sha256_file"]

#: The umask of the service's processes: no access for group and others.
PRIVATE_UMASK = 0o077


def keep_files_private() -> None:
    """Files 0600 and folders 0700 from now on, in this process and the children it starts
    (``cartl serve``'s worker). SQLite gives a database's -wal and -shm the database's mode."""
    os.umask(PRIVATE_UMASK)


class UploadTooLargeError(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int
    sha256: str


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root
        _make_private_dirs(root)

    def path(self, key: str) -> Path:
        rel = PurePosixPath(key)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"bad storage key {key!r}")
        return self.root.joinpath(*rel.parts)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    async def write_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, limit: int
    ) -> StoredFile:
        """Stream ``chunks`` to ``key`` hashing as it goes; past ``limit`` bytes nothing is kept."""
        dest = self.path(key)
        _make_private_dirs(dest.parent)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise UploadTooLargeError(limit)
                    digest.update(chunk)
                    f.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredFile(dest, size, digest.hexdigest())

    def put_file(self, key: str, src: Path) -> StoredFile:
        """Copy ``src`` into ``key`` atomically (a rename when on the same file system)."""
        dest = self.path(key)
        _make_private_dirs(dest.parent)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredFile(dest, dest.stat().st_size, sha256_file(dest))

    def delete_prefix(self, prefix: str) -> None:
        """Remove a key's folder (``checkpoints/ID``) and everything in it, as far as possible
        (clean-up after a failure, which must not raise a second error)."""
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def remove_prefix(self, prefix: str) -> None:
        """Remove a key's folder or raise ``OSError``; a folder that is not there is fine."""
        path = self.path(prefix)
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            return
        if path.exists():
            raise OSError(errno.EIO, "the folder is still there after removing it")


def _make_private_dirs(path: Path) -> None:
    """``path`` and its missing parents, each 0700 (``mkdir(parents=True)`` gives the parents
    the umask's default mode)."""
    if path.is_dir():
        return
    _make_private_dirs(path.parent)
    path.mkdir(mode=0o700, exist_ok=True)  # exist_ok: made meanwhile by another request


_FULL = {errno.ENOSPC, errno.EDQUOT}
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def storage_problem(exc: BaseException) -> str | None:
    """``"full"``, ``"unwritable"`` or None: what a failed write says about the storage.

    Libraries report a full disk in their own words: an ``OSError`` somewhere in the chain,
    safetensors' "(os error 28)", torch's zip writer "inline_container.cc ... unexpected pos"
    (the position it expected after a short write; errno is lost on the way).
    """
    for seen in exception_chain(exc):
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
