"""A full or read-only artifact store, for real: a 1 MiB tmpfs (mounting needs root, which CI
has; elsewhere these tests skip)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from app.storage import storage_problem
from tests.api.live import Server, live_api
from tests.services import remount, tmpfs, write_checkpoint

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


def _upload(srv: Server, name: str, content: bytes) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/v1/checkpoints",
        headers=srv.headers(),
        files={"file": (name, content)},
        timeout=60,
    )


def test_what_libraries_say_on_a_full_disk_is_read_as_full(small_disk: Path) -> None:
    big = torch.zeros(1_000_000)  # 4 MB into 1 MiB
    errors = []
    for write in (
        lambda: torch.save({"w": big}, small_disk / "a.pt"),
        lambda: save_file({"w": big}, str(small_disk / "b.safetensors")),
        lambda: (small_disk / "c.bin").write_bytes(bytes(4_000_000)),
    ):
        with pytest.raises(Exception) as info:  # noqa: PT011 - each library its own type
            write()
        errors.append(info.value)
        for f in small_disk.iterdir():
            f.unlink()
    assert [storage_problem(e) for e in errors] == ["full", "full", "full"]
    assert storage_problem(ValueError("bad input")) is None


def test_an_upload_to_a_full_store_is_507_and_leaves_nothing(
    small_disk: Path, tmp_path: Path
) -> None:
    src = write_checkpoint(tmp_path / "m.safetensors")
    big = tmp_path / "big.safetensors"
    big.write_bytes(src.read_bytes() + bytes(3 * 1024**2))  # larger than the disk
    (tmp_path / "srv").mkdir()
    with live_api(tmp_path / "srv", CARTL_STORAGE_DIR=str(small_disk)) as srv:
        r = _upload(srv, "big.safetensors", big.read_bytes())
        assert r.status_code == 507, r.text
        body = r.json()
        assert body["type"].endswith("storage-full")
        assert str(small_disk) not in r.text
        assert [p for p in small_disk.rglob("*") if p.is_file()] == []
        # A file that fits still goes in: the store works again once there is room.
        ok = _upload(srv, "m.safetensors", src.read_bytes())
        assert ok.status_code == 201, ok.text


def test_a_delete_that_cannot_remove_the_files_fails_and_keeps_the_row(
    small_disk: Path, tmp_path: Path
) -> None:
    src = write_checkpoint(tmp_path / "m.safetensors")
    (tmp_path / "srv").mkdir()
    with live_api(tmp_path / "srv", CARTL_STORAGE_DIR=str(small_disk)) as srv:
        made = _upload(srv, "m.safetensors", src.read_bytes())
        assert made.status_code == 201, made.text
        ckpt = made.json()["id"]
        remount(small_disk, "ro")
        try:
            r = httpx.delete(f"{srv.url}/v1/checkpoints/{ckpt}", headers=srv.headers())
            assert r.status_code == 503, r.text
            assert "could not be removed" in r.json()["detail"]
            assert str(small_disk) not in r.text
            # Still listed, still on disk: nothing claims to be gone that is not.
            got = httpx.get(f"{srv.url}/v1/checkpoints/{ckpt}", headers=srv.headers())
            assert got.status_code == 200
            assert list((small_disk / "checkpoints" / ckpt).iterdir())
        finally:
            remount(small_disk, "rw")
        r = httpx.delete(f"{srv.url}/v1/checkpoints/{ckpt}", headers=srv.headers())
        assert r.status_code == 204, r.text
        assert not (small_disk / "checkpoints" / ckpt).exists()


def test_readyz_fails_while_the_store_is_read_only_or_full(
    small_disk: Path, tmp_path: Path
) -> None:
    (tmp_path / "srv").mkdir()
    with live_api(tmp_path / "srv", CARTL_STORAGE_DIR=str(small_disk)) as srv:
        # A 1 MiB disk is already below the free-space floor: full for readiness.
        r = httpx.get(f"{srv.url}/readyz", timeout=30)
        assert r.status_code == 503, r.text
        assert r.json()["checks"]["storage"].startswith("nearly full")
        remount(small_disk, "ro")
        try:
            r = httpx.get(f"{srv.url}/readyz", timeout=30)
            assert r.status_code == 503, r.text
            assert r.json()["checks"]["storage"].startswith("cannot be written")
            assert str(small_disk) not in r.text
        finally:
            remount(small_disk, "rw")
