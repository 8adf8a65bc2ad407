"""A bucket as the artifact storage (CARTL_STORAGE_URL=s3://...), against a real S3 API server
process (moto_server over HTTP): uploads streamed in parts, nothing in the data folder, sha256
recorded and checked, presigned downloads, and each fault a clear problem that keeps nothing."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.services.recovery import reconcile_storage
from app.storage.s3 import S3Storage, parse_s3_url
from tests.api.conftest import ClientFactory
from tests.api.files import npz, safetensors_checkpoint
from tests.api.helpers import problem, row_count, upload
from tests.api.test_jobs import add_checkpoint, add_dataset, post_job, set_job
from tests.services import S3Server, free_port, s3_client

pytestmark = pytest.mark.timeout(180)

MiB = 1024**2


@pytest.fixture
def api(s3_endpoint: str) -> Any:
    """An S3 client of the test's own, to look at and tamper with the bucket."""
    return s3_client(s3_endpoint)


def _objects(api: Any, url: str) -> dict[str, dict[str, Any]]:
    name, prefix = parse_s3_url(url)
    listed = api.list_objects_v2(Bucket=name, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: o for o in listed}


def _uploads_in_progress(api: Any, url: str) -> list[Any]:
    uploads: list[Any] = api.list_multipart_uploads(Bucket=parse_s3_url(url)[0]).get("Uploads", [])
    return uploads


@pytest.fixture
def s3(make_client: ClientFactory, bucket: str, tmp_path: Path) -> TestClient:
    """The API with ``bucket`` as its storage, 5 MiB parts, a 24 MiB upload limit."""
    return make_client(
        storage_url=bucket,
        storage_part_bytes=5 * MiB,
        max_upload_bytes=24 * MiB,
        scratch_dir=tmp_path / "scratch",
    )


def _big_npz(mb: float) -> bytes:
    """An npz of random images of about ``mb`` MiB (random: nothing compresses)."""
    n = int(mb * MiB / 64)
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    np.savez(
        buf,
        x_train=rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
        y_train=np.arange(n) % 4,
        x_test=rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8),
        y_test=np.arange(64) % 4,
    )
    return buf.getvalue()


def test_uploads_go_to_the_bucket_in_parts_and_nothing_to_the_data_folder(
    s3: TestClient,
    alice: dict[str, str],
    bucket: str,
    tmp_path: Path,
    db: sessionmaker[Session],
    api: Any,
) -> None:
    content = _big_npz(12)
    r = upload(s3, "/v1/datasets", alice, "big.npz", content)
    assert r.status_code == 201, r.text
    dataset = r.json()
    assert dataset["sha256"] == hashlib.sha256(content).hexdigest()
    objects = _objects(api, bucket)
    key = f"datasets/{dataset['id']}/big.npz"
    assert list(objects) == [key]
    # Three 5 MiB parts (an S3 multipart ETag is the parts' hash and their count).
    assert objects[key]["ETag"].strip('"').endswith("-3")
    assert objects[key]["Size"] == len(content)
    name, prefix = parse_s3_url(bucket)
    assert api.get_object(Bucket=name, Key=prefix + key)["Body"].read() == content

    # A small file is one PUT, with its sha256 in the object's metadata.
    ckpt = safetensors_checkpoint(tmp_path, classes=4)
    r = upload(s3, "/v1/checkpoints", alice, "m.safetensors", ckpt)
    assert r.status_code == 201, r.text
    head = api.head_object(Bucket=name, Key=f"{prefix}checkpoints/{r.json()['id']}/m.safetensors")
    assert head["Metadata"]["sha256"] == hashlib.sha256(ckpt).hexdigest()

    # The same bytes again: the row is reused (its object is there, of its size), nothing new.
    again = upload(s3, "/v1/datasets", alice, "big.npz", content)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == dataset["id"]
    assert len(_objects(api, bucket)) == 2

    # Nothing of an artifact on this machine: no data folder files, the probe's copies gone.
    data_dir = tmp_path / "data"
    assert not data_dir.exists() or not any(p.is_file() for p in data_dir.rglob("*"))
    assert list((tmp_path / "scratch").iterdir()) == []

    assert s3.delete(f"/v1/datasets/{dataset['id']}", headers=alice).status_code == 204
    assert list(_objects(api, bucket)) == [f"checkpoints/{r.json()['id']}/m.safetensors"]
    assert row_count(db, "datasets") == 0


def test_a_partial_upload_leaves_no_object_no_parts_and_no_row(
    s3: TestClient, alice: dict[str, str], bucket: str, db: sessionmaker[Session], api: Any
) -> None:
    # Past the limit after four parts went up: the multipart upload is aborted.
    r = upload(s3, "/v1/datasets", alice, "big.npz", _big_npz(26))
    assert "larger than the limit" in problem(r, 413)["detail"]
    # Whole in the bucket, then refused by the probe: the object goes with it.
    r = upload(s3, "/v1/datasets", alice, "bad.npz", b"not an npz" * MiB)
    problem(r, 422)
    assert _objects(api, bucket) == {}
    assert _uploads_in_progress(api, bucket) == []
    assert row_count(db, "datasets") == 0


@pytest.fixture
def refusing_server() -> Iterator[S3Server]:
    server = S3Server(auth=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("fault", ["no-bucket", "denied", "unreachable"])
def test_storage_faults_are_clear_problems_and_keep_nothing(
    fault: str,
    make_client: ClientFactory,
    alice: dict[str, str],
    bucket: str,
    db: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    url = bucket
    if fault == "no-bucket":
        url = "s3://cartl-no-such-bucket/cartl"
    elif fault == "denied":
        server = request.getfixturevalue("refusing_server")
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    said = {
        "no-bucket": "has no such bucket",
        "denied": "refused the service's credentials",
        "unreachable": "cannot be reached",
    }[fault]
    client = make_client(storage_url=url, scratch_dir=tmp_path)
    r = upload(client, "/v1/datasets", alice, "d.npz", npz())
    body = problem(r, 503)
    assert said in body["detail"], body
    assert "nothing of this upload was kept" in body["detail"]
    assert row_count(db, "datasets") == 0
    assert [p for p in tmp_path.iterdir() if p.name.startswith("cartl-upload-")] == []

    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["storage"].startswith(fault), ready.json()

    # A download meets the same fault: a 503 naming the cause, not a 500 or a traceback.
    job_id = post_job(client, alice, "transfer", add_checkpoint(db), add_dataset(db)).json()["id"]
    set_job(db, job_id, status="succeeded", weights_key=f"jobs/{job_id}/weights.safetensors",
            weights_sha256="0" * 64, weights_size=1)  # fmt: skip
    r = client.get(f"/v1/jobs/{job_id}/weights", headers=alice)
    assert said in problem(r, 503)["detail"]


def test_downloads_are_checked_streamed_or_redirected(
    make_client: ClientFactory,
    alice: dict[str, str],
    bucket: str,
    db: sessionmaker[Session],
    tmp_path: Path,
    api: Any,
) -> None:
    proxy = make_client(storage_url=bucket)
    job_id = post_job(proxy, alice, "transfer", add_checkpoint(db), add_dataset(db)).json()["id"]
    content = b"pretend safetensors " * 70_000
    digest = hashlib.sha256(content).hexdigest()
    src = tmp_path / "w.safetensors"
    src.write_bytes(content)
    key = f"jobs/{job_id}/weights.safetensors"
    S3Storage(bucket, part_bytes=5 * MiB).put_file(key, src)
    set_job(db, job_id, status="succeeded", weights_key=key, weights_sha256=digest,
            weights_size=len(content))  # fmt: skip

    r = proxy.get(f"/v1/jobs/{job_id}/weights", headers=alice)
    assert r.status_code == 200
    assert r.content == content
    assert r.headers["x-checksum-sha256"] == digest
    assert r.headers["content-length"] == str(len(content))

    redirect = make_client(storage_url=bucket, storage_downloads="redirect")
    r = redirect.get(f"/v1/jobs/{job_id}/weights", headers=alice, follow_redirects=False)
    assert r.status_code == 307
    assert r.headers["x-checksum-sha256"] == digest
    fetched = httpx.get(r.headers["location"], timeout=30)  # no API key: the URL is signed
    assert fetched.status_code == 200
    assert hashlib.sha256(fetched.content).hexdigest() == digest
    assert f'filename="{job_id}.safetensors"' in fetched.headers["content-disposition"]

    # Other bytes under the key (written by something else, without the recorded sha256):
    # refused by both, never served or redirected to.
    name, prefix = parse_s3_url(bucket)
    api.put_object(Bucket=name, Key=prefix + key, Body=b"P" + content[1:])
    for server in (proxy, redirect):
        r = server.get(f"/v1/jobs/{job_id}/weights", headers=alice, follow_redirects=False)
        assert "damaged" in problem(r, 500)["detail"]
    api.delete_object(Bucket=name, Key=prefix + key)
    r = proxy.get(f"/v1/jobs/{job_id}/weights", headers=alice)
    assert "missing from the artifact storage" in problem(r, 500)["detail"]


def test_reconcile_removes_a_bucket_s_orphans_and_stale_parts(
    db: sessionmaker[Session], bucket: str, tmp_path: Path, api: Any
) -> None:
    storage = S3Storage(bucket)
    src = tmp_path / "f"
    src.write_bytes(b"x")
    kept = add_dataset(db)
    storage.put_file(f"datasets/{kept}/d.npz", src)
    storage.put_file("checkpoints/ckpt_orphan/m.safetensors", src)
    storage.put_file("jobs/job_orphan/state.pt", src)
    name, prefix = parse_s3_url(bucket)
    api.create_multipart_upload(Bucket=name, Key=f"{prefix}datasets/ds_killed/big.npz")

    result = reconcile_storage(db, storage, grace_s=0.0)

    assert sorted(result.removed) == ["checkpoints/ckpt_orphan", "jobs/job_orphan"]
    assert list(_objects(api, bucket)) == [f"datasets/{kept}/d.npz"]
    assert _uploads_in_progress(api, bucket) == []


def test_cartl_storage_check_says_what_is_wrong_and_makes_a_missing_bucket(
    s3_endpoint: str, api: Any, tmp_path: Path
) -> None:
    import os
    import secrets
    import subprocess
    import sys

    from tests.services import ROOT

    name = f"cartl-check-{secrets.token_hex(4)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env.update(CARTL_DATA_DIR=str(tmp_path), CARTL_STORAGE_URL=f"s3://{name}/cartl")

    def check(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "storage", "check", *flags],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    refused = check()
    assert refused.returncode == 1
    assert "has no such bucket" in refused.stderr
    assert "Traceback" not in refused.stderr
    made = check("--create-bucket")
    assert made.returncode == 0, made.stderr
    assert f"created the bucket {name}" in made.stderr
    assert f"artifact storage s3://{name}/cartl/: ok" in made.stderr
    assert check().returncode == 0
    api.delete_bucket(Bucket=name)
    env.pop("CARTL_STORAGE_URL")
    folder = check()
    assert folder.returncode == 0, folder.stderr
    assert f"artifact storage {tmp_path / 'artifacts'}: ok" in folder.stderr
