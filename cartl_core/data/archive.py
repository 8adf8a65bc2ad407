"""Safe reading of untrusted zip and tar archives.

Every member is validated before any content is read: a relative, normalised name (no ``..``, no
absolute path, no drive letter, no backslashes), a regular file or folder (no symlinks, hard
links, devices or FIFOs), and sizes within :class:`ArchiveLimits` (declared sizes, and for zip the
compression ratio, which exposes decompression bombs). Sizes are enforced again while reading,
because a compressed stream may not match its headers. A truncated or corrupt archive raises
:class:`DataError` rather than a library exception.
"""

from __future__ import annotations

import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from cartl_core._stop import check_stop
from cartl_core.errors import DataError, UnsafeArchiveError

__all__ = [
    "ArchiveLimits",
    "MemberInfo",
    "archive_kind",
    "iter_files",
    "list_members",
    "read_member",
    "safe_extract",
]

_DRIVE = re.compile(r"^[A-Za-z]:")
_CHUNK = 1 << 20
# Below this size a high compression ratio is ordinary (an all-black PNG, a short text file).
_RATIO_FLOOR = 1 << 20

ArchiveKind = Literal["zip", "tar"]


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 200_000
    max_total_bytes: int = 4 * 2**30
    max_member_bytes: int = 512 * 2**20
    max_ratio: float = 200.0


@dataclass(frozen=True)
class MemberInfo:
    name: str
    size: int
    is_dir: bool = False


_CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, ValueError)


@contextmanager
def _corruption_as_data_error(path: Path) -> Iterator[None]:
    try:
        yield
    except DataError:
        raise
    except _CORRUPT as exc:
        raise DataError(f"{path.name}: truncated or corrupt archive ({exc})") from None


def archive_kind(path: str | Path) -> ArchiveKind | None:
    """ "zip" or "tar" (plain or compressed), judged by content, or None."""
    p = Path(path)
    try:
        if zipfile.is_zipfile(p):
            return "zip"
        if tarfile.is_tarfile(p):
            return "tar"
    except OSError:
        return None
    return None


def _check_name(raw: str) -> str:
    if "\\" in raw or "\x00" in raw:
        raise UnsafeArchiveError(f"archive member {raw!r} has a backslash or NUL in its name")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise UnsafeArchiveError(f"archive member {raw!r} has an absolute path")
    parts = [p for p in PurePosixPath(raw).parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member {raw!r} points outside the archive (..)")
    return "/".join(parts)


class _Budget:
    """Counts members and bytes against the limits, declared first and then actually read."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.members = 0
        self.total = 0

    def add_member(self, name: str, size: int) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise UnsafeArchiveError(
                f"archive has more than {self.limits.max_members} members (the limit)"
            )
        self.check_size(name, size)
        self.total += size
        if self.total > self.limits.max_total_bytes:
            raise UnsafeArchiveError(
                f"archive expands to more than {self.limits.max_total_bytes} bytes (the limit)"
            )

    def check_size(self, name: str, size: int) -> None:
        if size > self.limits.max_member_bytes:
            raise UnsafeArchiveError(
                f"archive member {name!r} expands to {size} bytes "
                f"(limit {self.limits.max_member_bytes})"
            )


def _zip_members(
    zf: zipfile.ZipFile, limits: ArchiveLimits
) -> list[tuple[MemberInfo, zipfile.ZipInfo]]:
    budget = _Budget(limits)
    out = []
    for info in zf.infolist():
        name = _check_name(info.filename)
        mode = (info.external_attr >> 16) & 0o170000
        if mode == 0o120000:
            raise UnsafeArchiveError(f"archive member {info.filename!r} is a symbolic link")
        if mode not in (0, 0o100000, 0o040000):
            raise UnsafeArchiveError(f"archive member {info.filename!r} is not a regular file")
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"archive member {info.filename!r} is encrypted")
        budget.add_member(name, info.file_size)
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size > _RATIO_FLOOR and ratio > limits.max_ratio:
            raise UnsafeArchiveError(
                f"archive member {info.filename!r} compresses {ratio:.0f}:1 "
                f"(limit {limits.max_ratio:.0f}:1): a likely decompression bomb"
            )
        out.append((MemberInfo(name, info.file_size, info.is_dir()), info))
    return out


def _tar_members(
    tf: tarfile.TarFile, limits: ArchiveLimits
) -> Iterator[tuple[MemberInfo, tarfile.TarInfo]]:
    budget = _Budget(limits)
    # Iterating lazily lets an endless or oversized stream fail at the limit, not at the end.
    for info in tf:
        name = _check_name(info.name)
        if info.issym() or info.islnk():
            raise UnsafeArchiveError(f"archive member {info.name!r} is a link")
        if not (info.isreg() or info.isdir()):
            raise UnsafeArchiveError(
                f"archive member {info.name!r} is a device, FIFO or other special file"
            )
        budget.add_member(name, info.size)
        yield MemberInfo(name, info.size, info.isdir()), info


def list_members(path: str | Path, limits: ArchiveLimits | None = None) -> list[MemberInfo]:
    """Validate every member of the archive and list them; reads no file content."""
    p = Path(path)
    limits = limits or ArchiveLimits()
    kind = archive_kind(p)
    with _corruption_as_data_error(p):
        if kind == "zip":
            with zipfile.ZipFile(p) as zf:
                return [m for m, _ in _zip_members(zf, limits)]
        if kind == "tar":
            with tarfile.open(p, "r:*") as tf:
                return [m for m, _ in _tar_members(tf, limits)]
    raise DataError(f"{p.name} is not a zip or tar archive")


def _read_limited(stream: IO[bytes], name: str, declared: int, budget: _Budget) -> bytes:
    chunks, size = [], 0
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
        budget.check_size(name, size)
        if size > declared:
            raise UnsafeArchiveError(
                f"archive member {name!r} holds more data than its header says"
            )
        chunks.append(chunk)
    if size < declared:
        raise DataError(f"archive member {name!r} is truncated ({size} of {declared} bytes)")
    return b"".join(chunks)


def iter_files(
    path: str | Path, limits: ArchiveLimits | None = None, wanted: set[str] | None = None
) -> Iterator[tuple[str, bytes]]:
    """(name, content) for every regular file (or only the ``wanted`` names), after validation."""
    p = Path(path)
    limits = limits or ArchiveLimits()
    list_members(p, limits)
    budget = _Budget(limits)
    kind = archive_kind(p)

    def skip(member: MemberInfo) -> bool:
        return member.is_dir or (wanted is not None and member.name not in wanted)

    with _corruption_as_data_error(p):
        if kind == "zip":
            with zipfile.ZipFile(p) as zf:
                for member, zinfo in _zip_members(zf, limits):
                    check_stop("reading the dataset")
                    if not skip(member):
                        with zf.open(zinfo) as f:
                            yield member.name, _read_limited(f, member.name, member.size, budget)
        else:
            with tarfile.open(p, "r:*") as tf:
                for member, tinfo in _tar_members(tf, limits):
                    check_stop("reading the dataset")
                    if skip(member):
                        continue
                    stream = tf.extractfile(tinfo)
                    if stream is None:
                        raise UnsafeArchiveError(f"archive member {member.name!r} is not a file")
                    yield member.name, _read_limited(stream, member.name, member.size, budget)


def read_member(path: str | Path, name: str, limits: ArchiveLimits | None = None) -> bytes:
    for _, data in iter_files(path, limits, {name}):
        return data
    raise DataError(f"{Path(path).name} has no member {name!r}")


def safe_extract(
    path: str | Path, dest: str | Path, limits: ArchiveLimits | None = None
) -> list[Path]:
    """Extract regular files into ``dest`` after validating the whole archive."""
    root = Path(dest).resolve()
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in iter_files(path, limits):
        target = (root / name).resolve()
        if not target.is_relative_to(root):
            raise UnsafeArchiveError(f"archive member {name!r} resolves outside {root}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as out:
            out.write(data)
        written.append(target)
    return written
