"""Checkpoint and dataset uploads: good files are recorded, bad ones are refused with a 4xx that
names the problem and leave neither a row nor a file behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.api import files
from tests.api.conftest import ClientFactory
from tests.api.helpers import fields, problem, row_count, stored_files, upload
from tests.core.data_builders import png

Auth = dict[str, str]


def assert_nothing_left(db: sessionmaker[Session], storage_dir: Path, table: str) -> None:
    assert row_count(db, table) == 0
    assert stored_files(storage_dir) == []


# --- checkpoints -------------------------------------------------------------------------------


def test_upload_self_describing_checkpoint(
    client: TestClient, alice: Auth, tmp_path: Path, storage_dir: Path
) -> None:
    content = files.safetensors_checkpoint(tmp_path)
    r = upload(client, "/v1/checkpoints", alice, "robust.safetensors", content)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("ckpt_")
    assert body["filename"] == "robust.safetensors"
    assert (body["arch"], body["num_classes"], body["num_blocks"]) == ("small-cnn", 10, 5)
    assert body["input_shape"] == [1, 8, 8]
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["size"] == len(content)
    assert body["description"]["format"] == "cartl-checkpoint/1"
    # The file is kept under its own folder, with the suffix loaders dispatch on.
    (kept,) = stored_files(storage_dir)
    assert kept.name == "robust.safetensors"
    assert kept.read_bytes() == content

    assert client.get(f"/v1/checkpoints/{body['id']}", headers=alice).json() == body


def test_upload_plain_state_dict_with_arch(client: TestClient, alice: Auth) -> None:
    r = upload(
        client, "/v1/checkpoints", alice, "weights.pt", files.plain_state_dict(), arch="small-cnn"
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["arch"], body["num_classes"], body["num_blocks"]) == ("small-cnn", 10, 5)
    assert body["input_shape"][0] == 1  # read from the first convolution
    assert body["description"]["format"] == "plain-state-dict"


def test_form_fields_may_follow_the_file(client: TestClient, alice: Auth) -> None:
    boundary = "cartlboundary"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="w.pt"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + files.plain_state_dict()
        + (
            f"\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="arch"\r\n\r\n'
            f"small-cnn\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="num_classes"\r\n\r\n'
            f"10\r\n--{boundary}--\r\n"
        ).encode()
    )
    r = client.post(
        "/v1/checkpoints",
        headers={**alice, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body,
    )
    assert r.status_code == 201, r.text
    assert r.json()["arch"] == "small-cnn"


def test_plain_state_dict_without_arch_is_422(
    client: TestClient, alice: Auth, db: sessionmaker[Session], storage_dir: Path
) -> None:
    r = upload(client, "/v1/checkpoints", alice, "weights.pt", files.plain_state_dict())
    body = problem(r, 422)
    assert "architecture" in fields(body)["file"]
    assert body["error_type"] == "CheckpointError"
    assert_nothing_left(db, storage_dir, "checkpoints")


def test_unknown_arch_is_422_on_arch(
    client: TestClient, alice: Auth, db: sessionmaker[Session], storage_dir: Path
) -> None:
    r = upload(
        client, "/v1/checkpoints", alice, "weights.pt", files.plain_state_dict(), arch="resnet9000"
    )
    assert "unknown architecture" in fields(problem(r, 422))["arch"]
    assert_nothing_left(db, storage_dir, "checkpoints")


def test_weights_that_do_not_fit_the_arch_are_422(
    client: TestClient, alice: Auth, db: sessionmaker[Session], storage_dir: Path
) -> None:
    r = upload(
        client,
        "/v1/checkpoints",
        alice,
        "weights.pt",
        files.plain_state_dict(),
        arch="resnet18-cifar",
        num_classes="10",
    )
    message = fields(problem(r, 422))["file"]
    assert "does not fit resnet18-cifar" in message
    assert "missing" in message
    assert_nothing_left(db, storage_dir, "checkpoints")


def test_malicious_pickle_is_refused_without_running(
    client: TestClient, alice: Auth, db: sessionmaker[Session], storage_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    r = upload(
        client,
        "/v1/checkpoints",
        alice,
        "evil.pt",
        files.malicious_pickle(marker),
        arch="small-cnn",
    )
    body = problem(r, 422)
    assert body["error_type"] == "UnsafeCheckpointError"
    assert "would run code" in fields(body)["file"]
    assert not marker.exists()
    assert_nothing_left(db, storage_dir, "checkpoints")


def test_bad_form_fields_are_422(
    client: TestClient, alice: Auth, db: sessionmaker[Session], storage_dir: Path
) -> None:
    r = upload(
        client,
        "/v1/checkpoints",
        alice,
        "w.pt",
        b"x",
        arch="small-cnn",
        num_classes="ten",
        colour="red",
    )
    errors = fields(problem(r, 422))
    assert "colour" in errors
    assert_nothing_left(db, storage_dir, "checkpoints")
    r = upload(client, "/v1/checkpoints", alice, "w.pt", b"x", num_classes="ten")
    assert "integer" in fields(problem(r, 422))["num_classes"]
    assert_nothing_left(db, storage_dir, "checkpoints")


def test_upload_needs_multipart_with_a_file(client: TestClient, alice: Auth) -> None:
    problem(client.post("/v1/checkpoints", headers=alice, json={"file": "x"}), 415)
    r = client.post("/v1/checkpoints", headers=alice, data={"arch": "small-cnn"}, files={})
    # httpx sends a urlencoded form without files: still not multipart.
    assert r.status_code in (415, 422)
    r = client.post(
        "/v1/checkpoints",
        headers={**alice, "Content-Type": "multipart/form-data; boundary=b"},
        content=b'--b\r\nContent-Disposition: form-data; name="arch"\r\n\r\nsmall-cnn\r\n--b--\r\n',
    )
    assert "file" in fields(problem(r, 422))


def test_hostile_file_name_is_sanitised(
    client: TestClient, alice: Auth, tmp_path: Path, storage_dir: Path
) -> None:
    content = files.safetensors_checkpoint(tmp_path)
    r = upload(client, "/v1/checkpoints", alice, "../../etc/.x model.safetensors", content)
    assert r.status_code == 201, r.text
    (kept,) = stored_files(storage_dir)
    assert kept.is_relative_to(storage_dir / "checkpoints" / r.json()["id"])
    assert kept.name == "x_model.safetensors"


def test_checkpoint_over_the_limit_is_413(
    make_client: ClientFactory, alice: Auth, db: sessionmaker[Session], storage_dir: Path
) -> None:
    client = make_client(max_upload_bytes=1000, upload_chunk_bytes=256)
    r = upload(client, "/v1/checkpoints", alice, "big.pt", b"\0" * 5000, arch="small-cnn")
    assert "1000" in problem(r, 413)["detail"]
    assert_nothing_left(db, storage_dir, "checkpoints")


def test_probe_past_its_time_limit_is_422(
    make_client: ClientFactory, alice: Auth, db: sessionmaker[Session], storage_dir: Path
) -> None:
    client = make_client(probe_timeout_s=0.01)
    r = upload(client, "/v1/datasets", alice, "d.npz", files.npz())
    assert "longer than" in fields(problem(r, 422))["file"]
    assert_nothing_left(db, storage_dir, "datasets")


def test_declared_length_over_the_limit_is_refused_before_reading(
    make_client: ClientFactory, alice: Auth, storage_dir: Path
) -> None:
    client = make_client(max_upload_bytes=1000)
    r = upload(client, "/v1/datasets", alice, "big.npz", b"\0" * 200_000)
    problem(r, 413)
    assert stored_files(storage_dir) == []


def test_list_get_delete_checkpoints(
    client: TestClient, alice: Auth, tmp_path: Path, storage_dir: Path, db: sessionmaker[Session]
) -> None:
    content = files.safetensors_checkpoint(tmp_path)
    ids = [
        upload(client, "/v1/checkpoints", alice, f"m{i}.safetensors", content).json()["id"]
        for i in range(3)
    ]
    first = client.get("/v1/checkpoints?limit=2", headers=alice).json()
    assert [c["id"] for c in first["items"]] == ids[::-1][:2]
    second = client.get(
        "/v1/checkpoints", params={"limit": 2, "cursor": first["next_cursor"]}, headers=alice
    ).json()
    assert [c["id"] for c in second["items"]] == [ids[0]]
    assert second["next_cursor"] is None

    assert client.delete(f"/v1/checkpoints/{ids[1]}", headers=alice).status_code == 204
    problem(client.get(f"/v1/checkpoints/{ids[1]}", headers=alice), 404)
    problem(client.delete(f"/v1/checkpoints/{ids[1]}", headers=alice), 404)
    assert row_count(db, "checkpoints") == 2
    assert len(stored_files(storage_dir)) == 2
    assert not (storage_dir / "checkpoints" / ids[1]).exists()


def test_the_cursor_is_any_id_shaped_value(client: TestClient, alice: Auth) -> None:
    r = client.get("/v1/checkpoints", params={"cursor": "not a cursor"}, headers=alice)
    assert "cursor" in fields(problem(r, 422))
    # The documented format (the ids') is the whole contract: anything of it is accepted.
    r = client.get("/v1/checkpoints", params={"cursor": "zzzz"}, headers=alice)
    assert r.status_code == 200, r.text
    r = client.get("/v1/datasets", params={"limit": 0}, headers=alice)
    assert "limit" in fields(problem(r, 422))


# --- datasets ----------------------------------------------------------------------------------


def test_upload_npz_dataset(client: TestClient, alice: Auth, storage_dir: Path) -> None:
    content = files.npz(class_names=["a", "b", "c", "d"])
    r = upload(client, "/v1/datasets", alice, "digits.npz", content)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("ds_")
    assert body["format"] == "npz"
    assert (body["num_classes"], body["class_names"]) == (4, ["a", "b", "c", "d"])
    assert (body["train_size"], body["test_size"]) == (32, 16)
    assert body["input_shape"] == [1, 8, 8]
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    (kept,) = stored_files(storage_dir)
    assert kept.name == "digits.npz"


def test_upload_imagefolder_targz(client: TestClient, alice: Auth, tmp_path: Path) -> None:
    r = upload(client, "/v1/datasets", alice, "pets.tar.gz", files.imagefolder_targz(tmp_path))
    assert r.status_code == 201, r.text
    assert (r.json()["format"], r.json()["class_names"]) == ("imagefolder", ["cat", "dog"])


@pytest.mark.parametrize(
    ("name", "build", "expected"),
    [
        (
            "traversal.zip",
            lambda tmp: files.imagefolder_zip(tmp, {"../evil.png": b"x"}),
            "outside the archive",
        ),
        ("linked.tar.gz", files.tar_with_symlink, "is a link"),
        (
            "truncated.tar.gz",
            lambda tmp: files.imagefolder_targz(tmp)[:300],
            "truncated or corrupt",
        ),
        (
            "labels.npz",
            lambda _tmp: files.npz(classes=4, class_names=["a", "b"]),
            "class names",
        ),
        ("random.npz", lambda _tmp: bytes(range(256)) * 8, "random.npz"),
        ("notes.txt", lambda _tmp: b"hello", "unsupported dataset format"),
    ],
)
def test_bad_datasets_are_refused_and_leave_nothing(
    client: TestClient,
    alice: Auth,
    db: sessionmaker[Session],
    storage_dir: Path,
    tmp_path: Path,
    name: str,
    build: object,
    expected: str,
) -> None:
    assert callable(build)
    r = upload(client, "/v1/datasets", alice, name, build(tmp_path))
    body = problem(r, 422)
    assert expected in fields(body)["file"], body
    assert_nothing_left(db, storage_dir, "datasets")


def test_dataset_over_the_limit_is_413(
    make_client: ClientFactory, alice: Auth, db: sessionmaker[Session], storage_dir: Path
) -> None:
    client = make_client(max_upload_bytes=2000, upload_chunk_bytes=512)
    r = upload(client, "/v1/datasets", alice, "big.npz", files.npz(n_train=64))
    problem(r, 413)
    assert_nothing_left(db, storage_dir, "datasets")


def test_archive_past_the_extract_limit_is_refused(
    make_client: ClientFactory,
    alice: Auth,
    db: sessionmaker[Session],
    storage_dir: Path,
    tmp_path: Path,
) -> None:
    client = make_client(max_extract_bytes=300)
    r = upload(client, "/v1/datasets", alice, "pets.zip", files.imagefolder_zip(tmp_path))
    assert "limit" in fields(problem(r, 422))["file"]
    assert_nothing_left(db, storage_dir, "datasets")


def test_list_get_delete_datasets(
    client: TestClient, alice: Auth, storage_dir: Path, db: sessionmaker[Session]
) -> None:
    made = upload(client, "/v1/datasets", alice, "d.npz", files.npz()).json()
    listed = client.get("/v1/datasets", headers=alice).json()
    assert listed == {"items": [made], "next_cursor": None}
    assert client.get(f"/v1/datasets/{made['id']}", headers=alice).json() == made
    assert client.delete(f"/v1/datasets/{made['id']}", headers=alice).status_code == 204
    assert_nothing_left(db, storage_dir, "datasets")


# --- datasets: resize --------------------------------------------------------------------------


def test_upload_with_resize_records_the_size_and_method(
    client: TestClient, alice: Auth, db: sessionmaker[Session], storage_dir: Path
) -> None:
    content = files.npz()
    r = upload(client, "/v1/datasets", alice, "d.npz", content, resize="16")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["resize"] == {"size": 16, "method": "bilinear"}
    assert body["input_shape"] == [1, 16, 16]  # after the resize
    # The bytes are kept as they came; jobs resize them as the row says.
    (kept,) = stored_files(storage_dir)
    assert kept.read_bytes() == content
    assert client.get(f"/v1/datasets/{body['id']}", headers=alice).json() == body
    # The same upload is the same row (200); another resize is another dataset (201).
    again = upload(client, "/v1/datasets", alice, "d.npz", content, resize="16")
    assert (again.status_code, again.json()["id"]) == (200, body["id"])
    other = upload(
        client, "/v1/datasets", alice, "d.npz", content, resize="12", resize_method="nearest"
    )
    assert other.status_code == 201, other.text
    assert (other.json()["resize"], other.json()["input_shape"]) == (
        {"size": 12, "method": "nearest"},
        [1, 12, 12],
    )
    plain = upload(client, "/v1/datasets", alice, "d.npz", content)
    assert plain.status_code == 201
    assert plain.json()["resize"] is None
    assert row_count(db, "datasets") == 3


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"resize": "big"}, "resize", "must be an integer"),
        ({"resize": "4"}, "resize", "must be >= 8"),
        ({"resize": "5000"}, "resize", "must be <= 1024"),
        ({"resize": "16", "resize_method": "lanczos"}, "resize_method", "must be one of"),
        ({"resize_method": "area"}, "resize_method", "give resize too"),
    ],
)
def test_a_bad_resize_is_a_422_naming_the_field(
    client: TestClient,
    alice: Auth,
    db: sessionmaker[Session],
    storage_dir: Path,
    form: dict[str, str],
    field: str,
    message: str,
) -> None:
    r = upload(client, "/v1/datasets", alice, "d.npz", files.npz(), **form)
    said = fields(problem(r, 422))
    assert set(said) == {field}
    assert message in said[field]
    assert_nothing_left(db, storage_dir, "datasets")


def test_a_folder_of_mixed_sizes_uploads_with_resize(
    client: TestClient, alice: Auth, db: sessionmaker[Session], storage_dir: Path, tmp_path: Path
) -> None:
    content = files.imagefolder_zip(tmp_path, {"train/cat/big.png": png((12, 10))})
    r = upload(client, "/v1/datasets", alice, "pets.zip", content)
    assert "resize" in fields(problem(r, 422))["file"]
    assert_nothing_left(db, storage_dir, "datasets")
    r = upload(client, "/v1/datasets", alice, "pets.zip", content, resize="8", resize_method="area")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["format"], body["input_shape"], body["train_size"]) == (
        "imagefolder",
        [3, 8, 8],
        7,
    )
    assert body["resize"] == {"size": 8, "method": "area"}
