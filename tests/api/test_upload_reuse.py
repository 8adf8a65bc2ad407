"""An upload of bytes the owner uploaded before (same sha256), under the same name and with
fields that would record the same row, answers that row (200, ``Upload-Reused: true``) and keeps
no second copy; the list endpoints find rows by ``sha256``; the client asks before it uploads."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.client import Client
from tests.api import files
from tests.api.conftest import ClientFactory
from tests.api.helpers import fields, problem, row_count, stored_files, upload
from tests.api.live import live_api
from tests.services import write_checkpoint, write_npz

Auth = dict[str, str]


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    assert "upload-reused" not in response.headers
    body: dict[str, Any] = response.json()
    return body


def reused(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["upload-reused"] == "true"
    body: dict[str, Any] = response.json()
    return body


def listed(client: TestClient, what: str, auth: Auth, **params: Any) -> list[str]:
    r = client.get(f"/v1/{what}", params=params, headers=auth)
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()["items"]]


# --- the server --------------------------------------------------------------------------------


def test_the_same_checkpoint_twice_is_one_row_and_one_file(
    client: TestClient, alice: Auth, tmp_path: Path, db: sessionmaker[Session], storage_dir: Path
) -> None:
    content = files.safetensors_checkpoint(tmp_path)
    first = created(upload(client, "/v1/checkpoints", alice, "m.safetensors", content))
    again = reused(upload(client, "/v1/checkpoints", alice, "m.safetensors", content))
    assert again == first
    assert row_count(db, "checkpoints") == 1
    (kept,) = stored_files(storage_dir)
    assert kept.is_relative_to(storage_dir / "checkpoints" / first["id"])
    assert kept.read_bytes() == content


def test_the_same_dataset_twice_is_one_row_and_one_file(
    client: TestClient, alice: Auth, db: sessionmaker[Session], storage_dir: Path
) -> None:
    content = files.npz()
    first = created(upload(client, "/v1/datasets", alice, "d.npz", content))
    again = reused(upload(client, "/v1/datasets", alice, "d.npz", content))
    assert again == first
    assert row_count(db, "datasets") == 1
    (kept,) = stored_files(storage_dir)
    assert kept.is_relative_to(storage_dir / "datasets" / first["id"])
    # Another name is another record (and, for datasets, may be another loader).
    other = created(upload(client, "/v1/datasets", alice, "e.npz", content))
    assert other["id"] != first["id"]
    assert row_count(db, "datasets") == 2
    assert len(stored_files(storage_dir)) == 2


def test_fields_given_as_recorded_reuse_the_row(
    client: TestClient, alice: Auth, db: sessionmaker[Session], storage_dir: Path
) -> None:
    content = files.plain_state_dict()
    first = created(upload(client, "/v1/checkpoints", alice, "w.pt", content, arch="small-cnn"))
    assert (first["num_classes"], first["input_shape"]) == (10, [1, 32, 32])
    # What the probe derived, now given explicitly: the same record.
    again = reused(
        upload(
            client,
            "/v1/checkpoints",
            alice,
            "w.pt",
            content,
            arch="small-cnn",
            num_classes="10",
            in_channels="1",
            input_size="32",
        )
    )
    assert again["id"] == first["id"]
    assert row_count(db, "checkpoints") == 1
    assert len(stored_files(storage_dir)) == 1


def test_other_fields_are_a_new_checkpoint(
    client: TestClient, alice: Auth, tmp_path: Path, db: sessionmaker[Session], storage_dir: Path
) -> None:
    described = files.safetensors_checkpoint(tmp_path)
    first = created(upload(client, "/v1/checkpoints", alice, "m.safetensors", described))
    # A self-describing file ignores the fields, but fields other than its record are not
    # reused: the upload is validated and stored as it always was.
    second = created(
        upload(
            client,
            "/v1/checkpoints",
            alice,
            "m.safetensors",
            described,
            arch="resnet18-cifar",
            num_classes="5",
        )
    )
    assert second["id"] != first["id"]

    plain = files.plain_state_dict()
    small = created(upload(client, "/v1/checkpoints", alice, "w.pt", plain, arch="small-cnn"))
    larger = created(
        upload(client, "/v1/checkpoints", alice, "w.pt", plain, arch="small-cnn", input_size="16")
    )
    assert larger["id"] != small["id"]
    assert (small["input_shape"], larger["input_shape"]) == ([1, 32, 32], [1, 16, 16])
    assert row_count(db, "checkpoints") == 4
    assert len(stored_files(storage_dir)) == 4


def test_an_upload_that_would_be_refused_is_still_refused(
    client: TestClient, alice: Auth, db: sessionmaker[Session], storage_dir: Path
) -> None:
    content = files.plain_state_dict()
    created(upload(client, "/v1/checkpoints", alice, "w.pt", content, arch="small-cnn"))
    # Plain weights without arch, with a class count they do not have, with a bad field: each
    # is the 422 it was, the earlier row notwithstanding, and leaves nothing.
    r = upload(client, "/v1/checkpoints", alice, "w.pt", content)
    assert "architecture" in fields(problem(r, 422))["file"]
    r = upload(client, "/v1/checkpoints", alice, "w.pt", content, arch="small-cnn", num_classes="5")
    problem(r, 422)
    r = upload(client, "/v1/checkpoints", alice, "w.pt", content, arch="small-cnn", colour="red")
    assert "colour" in fields(problem(r, 422))
    r = upload(client, "/v1/datasets", alice, "w.pt", content, colour="red")
    assert "colour" in fields(problem(r, 422))
    assert row_count(db, "checkpoints") == 1
    assert len(stored_files(storage_dir)) == 1


def test_a_reuse_skips_the_probe(
    client: TestClient, make_client: ClientFactory, alice: Auth, db: sessionmaker[Session]
) -> None:
    content = files.npz()
    first = created(upload(client, "/v1/datasets", alice, "d.npz", content))
    # A probe could not finish in this time: only a reuse answers 200.
    hasty = make_client(probe_timeout_s=0.01)
    assert reused(upload(hasty, "/v1/datasets", alice, "d.npz", content))["id"] == first["id"]
    assert (
        "longer than"
        in fields(problem(upload(hasty, "/v1/datasets", alice, "e.npz", content), 422))["file"]
    )
    assert row_count(db, "datasets") == 1


def test_a_row_whose_file_is_gone_or_deleted_is_not_reused(
    client: TestClient, alice: Auth, db: sessionmaker[Session], storage_dir: Path
) -> None:
    content = files.npz()
    first = created(upload(client, "/v1/datasets", alice, "d.npz", content))
    (kept,) = stored_files(storage_dir)
    kept.unlink()
    second = created(upload(client, "/v1/datasets", alice, "d.npz", content))
    assert second["id"] != first["id"]
    assert client.delete(f"/v1/datasets/{second['id']}", headers=alice).status_code == 204
    third = created(upload(client, "/v1/datasets", alice, "d.npz", content))
    assert third["id"] not in (first["id"], second["id"])
    assert [p.parent.name for p in stored_files(storage_dir)] == [third["id"]]


def test_no_reuse_and_no_sight_across_owners(
    client: TestClient,
    alice: Auth,
    bob: Auth,
    tmp_path: Path,
    db: sessionmaker[Session],
    storage_dir: Path,
) -> None:
    content = files.safetensors_checkpoint(tmp_path)
    mine = created(upload(client, "/v1/checkpoints", alice, "m.safetensors", content))
    theirs = created(upload(client, "/v1/checkpoints", bob, "m.safetensors", content))
    assert theirs["id"] != mine["id"]
    assert row_count(db, "checkpoints") == 2
    assert len(stored_files(storage_dir)) == 2
    assert listed(client, "checkpoints", alice, sha256=sha(content)) == [mine["id"]]
    assert listed(client, "checkpoints", bob, sha256=sha(content)) == [theirs["id"]]
    # And each owner's next upload reuses its own row.
    assert reused(upload(client, "/v1/checkpoints", bob, "m.safetensors", content)) == theirs

    data = files.npz()
    created(upload(client, "/v1/datasets", alice, "d.npz", data))
    assert listed(client, "datasets", bob, sha256=sha(data)) == []
    created(upload(client, "/v1/datasets", bob, "d.npz", data))


def test_the_sha256_filter_returns_exactly_the_matching_rows(
    client: TestClient, alice: Auth, tmp_path: Path
) -> None:
    a, b = files.safetensors_checkpoint(tmp_path), files.plain_state_dict()
    a_ids = [
        created(upload(client, "/v1/checkpoints", alice, f"a{i}.safetensors", a))["id"]
        for i in range(3)
    ]
    b_id = created(upload(client, "/v1/checkpoints", alice, "b.pt", b, arch="small-cnn"))["id"]
    assert listed(client, "checkpoints", alice, sha256=sha(a)) == a_ids[::-1]
    assert listed(client, "checkpoints", alice, sha256=sha(b)) == [b_id]
    assert listed(client, "checkpoints", alice, sha256=sha(b"nothing")) == []
    assert len(listed(client, "checkpoints", alice)) == 4
    # It pages like the plain list.
    page = client.get(
        "/v1/checkpoints", params={"sha256": sha(a), "limit": 2}, headers=alice
    ).json()
    assert [c["id"] for c in page["items"]] == a_ids[:0:-1]
    rest = listed(client, "checkpoints", alice, sha256=sha(a), cursor=page["next_cursor"])
    assert rest == [a_ids[0]]

    d = files.npz()
    d_id = created(upload(client, "/v1/datasets", alice, "d.npz", d))["id"]
    created(upload(client, "/v1/datasets", alice, "e.npz", files.npz(classes=3)))
    assert listed(client, "datasets", alice, sha256=sha(d)) == [d_id]
    assert listed(client, "datasets", alice, sha256=sha(a)) == []


@pytest.mark.parametrize("what", ["checkpoints", "datasets"])
@pytest.mark.parametrize(
    "value",
    ["A" * 64, "a" * 63, "a" * 65, "g" * 64, "", sha(b"x") + "\n", "../" + "a" * 61],
)
def test_a_bad_sha256_is_422_on_it(client: TestClient, alice: Auth, what: str, value: str) -> None:
    r = client.get(f"/v1/{what}", params={"sha256": value}, headers=alice)
    assert "sha256" in fields(problem(r, 422))


def test_openapi_documents_the_filter_and_the_reuse(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for what in ("checkpoints", "datasets"):
        params = {p["name"]: p for p in paths[f"/v1/{what}"]["get"]["parameters"]}
        assert params["sha256"]["schema"]["anyOf"][0]["pattern"] == "^[0-9a-f]{64}$"
        responses = paths[f"/v1/{what}"]["post"]["responses"]
        assert {"200", "201"} <= set(responses)
        assert responses["200"]["headers"]["Upload-Reused"]["required"] is True


# --- the client --------------------------------------------------------------------------------


def test_the_client_asks_before_it_uploads(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "m.safetensors")
    plain = tmp_path / "w.pt"
    plain.write_bytes(files.plain_state_dict())
    data = write_npz(tmp_path / "d.npz", classes=3, n_train=64, n_test=32)
    (tmp_path / "srv").mkdir()
    with live_api(tmp_path / "srv") as srv:
        store = (tmp_path / "srv" / "artifacts").resolve()
        client = Client(srv.url, srv.key)
        posts: list[str] = []

        def count(request: httpx.Request) -> None:
            if request.method == "POST":
                posts.append(request.url.path)

        client.http.event_hooks["request"].append(count)
        try:
            first = client.upload("checkpoints", src)
            assert client.upload("checkpoints", src) == first
            assert posts == ["/v1/checkpoints"]

            p1 = client.upload("checkpoints", plain, arch="small-cnn", num_classes=None)
            assert client.upload("checkpoints", plain, arch="small-cnn", num_classes="10") == p1
            assert len(posts) == 2
            # Other fields: uploaded again (and the server records another checkpoint).
            p2 = client.upload("checkpoints", plain, arch="small-cnn", input_size="16")
            assert p2["id"] != p1["id"]
            assert len(posts) == 3

            ds = client.upload("datasets", data)
            assert client.upload("datasets", data) == ds
            assert posts[3:] == ["/v1/datasets"]
        finally:
            client.close()

        def rows(what: str, key: str) -> list[dict[str, Any]]:
            r = httpx.get(
                f"{srv.url}/v1/{what}", headers={"Authorization": f"Bearer {key}"}, timeout=30
            )
            assert r.status_code == 200, r.text
            items: list[dict[str, Any]] = r.json()["items"]
            return items

        assert len(rows("checkpoints", srv.key)) == 3
        assert len(rows("datasets", srv.key)) == 1
        assert len([p for p in store.rglob("*") if p.is_file()]) == 4

        # Another owner's rows are not asked for, nor reused: its upload is its own.
        other = Client(srv.url, srv.other_key)
        try:
            theirs = other.upload("checkpoints", src)
        finally:
            other.close()
        assert theirs["id"] != first["id"]
        assert [r["id"] for r in rows("checkpoints", srv.other_key)] == [theirs["id"]]
        assert len([p for p in store.rglob("*") if p.is_file()]) == 5
