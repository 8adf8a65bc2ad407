"""A worker machine's cache of inputs downloaded from the bucket (moto_server over HTTP): each
input once per machine, checked, read-only, the least recently used going first."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from app.storage.s3 import S3Storage
from worker.input_cache import InputCache
from worker.workspace import open_workspace


def _stored(storage: S3Storage, tmp_path: Path, key: str, content: bytes) -> str:
    src = tmp_path / "upload"
    src.write_bytes(content)
    storage.put_file(key, src)
    return hashlib.sha256(content).hexdigest()


def _download(storage: S3Storage, key: str, sha: str) -> Callable[[Path], Path]:
    return lambda path: storage.fetch(key, path, sha)


def test_a_machine_downloads_an_input_once_for_every_job(bucket: str, tmp_path: Path) -> None:
    storage = S3Storage(bucket)
    sha = _stored(storage, tmp_path, "datasets/d1/data.npz", b"images" * 1000)
    cache = InputCache(tmp_path / "scratch" / "cartl-inputs", 10**6)
    with open_workspace(storage, "job_1", tmp_path / "scratch", 60, cache) as ws:
        first = ws.input("datasets/d1/data.npz", sha)
        assert first.read_bytes() == b"images" * 1000
    # Gone from the bucket: a second job on this machine still gets it, from the cache.
    storage.delete("datasets/d1/data.npz")
    with open_workspace(storage, "job_2", tmp_path / "scratch", 60, cache) as ws:
        second = ws.input("datasets/d1/data.npz", sha)
        assert second.read_bytes() == b"images" * 1000
        # A hard link to the cached file, read-only: the job cannot change the cache through it.
        cached = tmp_path / "scratch" / "cartl-inputs" / sha[:2] / sha
        assert os.path.samefile(second, cached)
        assert not os.access(second, os.W_OK) or os.geteuid() == 0
        assert cached.stat().st_mode & 0o222 == 0
    assert [p.name for p in (tmp_path / "scratch").iterdir()] == ["cartl-inputs"]


def test_a_damaged_cached_input_is_downloaded_again(bucket: str, tmp_path: Path) -> None:
    storage = S3Storage(bucket)
    sha = _stored(storage, tmp_path, "checkpoints/c1/model.safetensors", b"weights" * 500)
    cache = InputCache(tmp_path / "cache", 10**6)
    key = "checkpoints/c1/model.safetensors"
    assert not cache.place(sha, tmp_path / "a", _download(storage, key, sha))
    cached = tmp_path / "cache" / sha[:2] / sha
    cached.chmod(0o644)
    cached.write_bytes(b"weights" * 100)  # truncated by a full disk
    dest = tmp_path / "b"
    assert not cache.place(sha, dest, _download(storage, key, sha))
    assert dest.read_bytes() == b"weights" * 500
    assert cached.read_bytes() == b"weights" * 500


def test_the_least_recently_used_inputs_go_beyond_the_limit(bucket: str, tmp_path: Path) -> None:
    storage = S3Storage(bucket)
    cache = InputCache(tmp_path / "cache", 2500)
    shas = {}
    for i, name in enumerate("abc"):
        key = f"datasets/{name}/data.npz"
        shas[name] = _stored(storage, tmp_path, key, name.encode() * 1000)
        cache.place(shas[name], tmp_path / f"{name}-{i}", _download(storage, key, shas[name]))
        # Distinct use times even on a coarse clock.
        os.utime(tmp_path / "cache" / shas[name][:2] / shas[name], (i, i))
    kept = {p.name for p in (tmp_path / "cache").glob("*/*")}
    # a, the least recently used, went when c came in (3000 bytes > 2500); b and c stay.
    assert kept == {shas["b"], shas["c"]}
    # Using b makes c the oldest: the next input pushes c out, not b.
    assert cache.place(shas["b"], tmp_path / "b-again", lambda p: pytest.fail("downloaded"))
    key = "datasets/d/data.npz"
    sha_d = _stored(storage, tmp_path, key, b"d" * 1000)
    cache.place(sha_d, tmp_path / "d", _download(storage, key, sha_d))
    assert {p.name for p in (tmp_path / "cache").glob("*/*")} == {shas["b"], sha_d}
    # An input larger than the whole limit is still used, and is the one left.
    key = "datasets/e/data.npz"
    sha_e = _stored(storage, tmp_path, key, b"e" * 4000)
    cache.place(sha_e, tmp_path / "e", _download(storage, key, sha_e))
    assert {p.name for p in (tmp_path / "cache").glob("*/*")} == {sha_e}
    assert (tmp_path / "e").read_bytes() == b"e" * 4000
