"""Artifact storage in a local folder (a shared volume or an NFS export in a team deployment).

Writes are atomic: data goes to a temporary file in the same folder and is renamed into place, so
a reader never sees half a file and a crash leaves at most a ``.tmp-*`` file behind.

Everything is its owner's alone: folders 0700 (made so here, whatever the umask) and files 0600
(``mkstemp``'s mode). The service's processes also call :func:`keep_files_private`, so what they
create elsewhere (the SQLite database and its -wal/-shm, the embedded broker's file, the files a
job writes) is private too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from app.storage.base import (
    ObjectInfo,
    Storage,
    StoredFile,
    Tally,
    check_key,
)
from cartl_core.provenance import sha256_file

__all__ = ["MIN_FREE_BYTES", "LocalStorage"]

#: Free space below which the artifact storage counts as full for readiness: less than one
#: ordinary upload or one small model's training state.
MIN_FREE_BYTES = 64 * 1024**2


class LocalStorage(Storage):
    is_local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        _make_private_dirs(root)

    def path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).parts)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def info(self, key: str) -> ObjectInfo | None:
        try:
            stat = self.path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(stat.st_size)

    async def write_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, limit: int
    ) -> StoredFile:
        dest = self.path(key)
        _make_private_dirs(dest.parent)
        tally = Tally(limit)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    tally.add(chunk)
                    f.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredFile(dest, tally.size, tally.sha256, key)

    def put_file(self, key: str, src: Path, sha256: str | None = None) -> StoredFile:
        """A rename when ``src`` is a temporary file on the same file system would be cheaper,
        but the caller keeps ``src``: a copy to a temporary name, then a rename."""
        dest = self.path(key)
        if dest == src:
            return StoredFile(dest, dest.stat().st_size, sha256 or sha256_file(dest), key)
        _make_private_dirs(dest.parent)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredFile(dest, dest.stat().st_size, sha256 or sha256_file(dest), key)

    def fetch(self, key: str, dest: Path, sha256: str | None = None) -> Path:
        src = self.path(key)
        if sha256 is not None and sha256_file(src) != sha256:
            raise ValueError(f"{key} fails its recorded sha256")
        if dest != src:
            tmp = dest.with_name(f".tmp-{dest.name}")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        return dest

    def read_chunks(self, key: str, chunk_bytes: int = 1024**2) -> Iterator[bytes]:
        with self.path(key).open("rb") as f:
            while chunk := f.read(chunk_bytes):
                yield chunk

    def keys(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def folders(self, folder: str) -> dict[str, float]:
        base = self.path(folder)
        if not base.is_dir():
            return {}
        return {p.name: _last_write(p) for p in base.iterdir() if p.is_dir()}

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def remove_prefix(self, prefix: str) -> None:
        path = self.path(prefix)
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            return
        if path.exists():
            raise OSError(errno.EIO, "the folder is still there after removing it")

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        # A partial write of the training loop's (``state.pt.tmp``) goes with it.
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)

    def check(self) -> str:
        """The folder takes a write (a probe file, written, synced and removed) and has room: a
        store that is read-only or full makes every job and upload fail."""
        probe = self.root / f".ready-{os.getpid()}-{threading.get_ident()}"
        try:
            with probe.open("wb") as f:
                f.write(b"ok")
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as exc:
            with contextlib.suppress(OSError):  # on a read-only store even this fails
                probe.unlink()
            return f"cannot be written ({os.strerror(exc.errno) if exc.errno else 'error'})"
        free = shutil.disk_usage(self.root).free
        if free < MIN_FREE_BYTES:
            return (
                f"nearly full ({free // 1024**2} MiB free, less than {MIN_FREE_BYTES // 1024**2})"
            )
        return "ok"

    def scrub(self, text: str) -> str:
        for path in {str(self.root), str(self.root.resolve())}:
            text = text.replace(path, "<artifact storage>")
        return text


def _last_write(folder: Path) -> float:
    """The newest modification under ``folder``: a file being streamed in keeps its folder's
    own time from when it was created, not from its last write."""
    times = [folder.stat().st_mtime]
    for path in folder.rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # removed while we looked
            times.append(path.stat().st_mtime)
    return max(times)


def _make_private_dirs(path: Path) -> None:
    """``path`` and its missing parents, each 0700 (``mkdir(parents=True)`` gives the parents
    the umask's default mode)."""
    if path.is_dir():
        return
    _make_private_dirs(path.parent)
    path.mkdir(mode=0o700, exist_ok=True)  # exist_ok: made meanwhile by another request
