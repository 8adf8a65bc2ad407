"""Archive safety: traversal, links, special files and bombs are refused before extraction."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from cartl_core import DataError, UnsafeArchiveError, load_dataset
from cartl_core.data import ArchiveLimits, list_members, safe_extract
from cartl_core.data.archive import read_member

from .data_builders import write_tar, write_zip


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("train/a/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


def _member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    "name", ["../evil.txt", "/etc/x", "a/../../evil", "C:/win.txt", "a\\..\\evil"]
)
def test_zip_bad_names(tmp_path: Path, name: str) -> None:
    path = write_zip(tmp_path / "z.zip", {"train/a/1.txt": b"1", name: b"x"})
    with pytest.raises(UnsafeArchiveError):
        list_members(path)
    with pytest.raises(UnsafeArchiveError):
        load_dataset(path)


def test_zip_symlink(tmp_path: Path) -> None:
    path = tmp_path / "l.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("train/a/link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        list_members(path)


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("train/a/s", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (_member("train/a/h", tarfile.LNKTYPE, "train/a/ok.txt"), "link"),
        (_member("train/a/fifo", tarfile.FIFOTYPE), "special"),
        (_member("train/a/dev", tarfile.CHRTYPE), "special"),
        (_member("../up.txt", tarfile.REGTYPE), r"\.\."),
    ],
)
def test_tar_refusals(tmp_path: Path, member: tarfile.TarInfo, message: str) -> None:
    path = _tar_with(tmp_path / "t.tar.gz", member)
    with pytest.raises(UnsafeArchiveError, match=message):
        list_members(path)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(path, dest)
    assert not dest.exists() or not any(dest.rglob("*"))


def test_zip_bomb_ratio(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("train/a/zeros.bin", b"\0" * (8 << 20))
    with pytest.raises(UnsafeArchiveError, match="decompression bomb"):
        list_members(path)
    assert len(list_members(path, ArchiveLimits(max_ratio=10_000))) == 1


def test_limits_on_count_total_and_member(tmp_path: Path) -> None:
    files = {f"train/a/{i}.txt": b"x" * 100 for i in range(10)}
    path = write_tar(tmp_path / "many.tar.gz", files)
    with pytest.raises(UnsafeArchiveError, match="more than 5 members"):
        list_members(path, ArchiveLimits(max_members=5))
    with pytest.raises(UnsafeArchiveError, match="expands to more than 500 bytes"):
        list_members(path, ArchiveLimits(max_total_bytes=500))
    with pytest.raises(UnsafeArchiveError, match="expands to 100 bytes"):
        list_members(path, ArchiveLimits(max_member_bytes=50))


def test_reading_enforces_member_limit(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "z.zip", {"big.bin": b"y" * 5000})
    with pytest.raises(UnsafeArchiveError):
        read_member(path, "big.bin", ArchiveLimits(max_member_bytes=1000))
    assert read_member(path, "big.bin") == b"y" * 5000


def test_safe_extract_writes_only_inside(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "ok.tar.gz", {"a/b.txt": b"1", "./c.txt": b"2"})
    dest = tmp_path / "dest"
    written = safe_extract(path, dest)
    assert sorted(p.relative_to(dest.resolve()).as_posix() for p in written) == ["a/b.txt", "c.txt"]
    assert (dest / "a" / "b.txt").read_bytes() == b"1"


def test_corrupt_archive_is_a_data_error(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "c.zip", {"train/a/1.png": b"abc" * 1000})
    raw = bytearray(path.read_bytes())
    raw[40:60] = b"\xff" * 20  # damage the compressed data of the only member
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError):
        list(safe_extract(path, tmp_path / "o"))
