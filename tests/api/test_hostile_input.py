"""Odd and hostile input is a 4xx naming the problem, never a 500."""

from __future__ import annotations

from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.schemas.common import UtcDateTime
from tests.api import files
from tests.api.helpers import fields, problem, upload
from tests.api.test_jobs import add_checkpoint, add_dataset

Auth = dict[str, str]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/%00",
        "/v1/jobs/" + "j" * 300,
        "/v1/jobs/job%20x/metrics",
        "/v1/checkpoints/..%2F..%2Fetc",
        "/v1/datasets/%E2%98%83",
    ],
)
def test_impossible_ids_are_404(client: TestClient, alice: Auth, path: str) -> None:
    problem(client.get(path, headers=alice), 404)


def test_bad_ids_in_the_body_and_cursor_are_422(
    client: TestClient, alice: Auth, db: sessionmaker[Session]
) -> None:
    body = {"kind": "audit", "checkpoint_id": "ckpt\u0000", "dataset_id": add_dataset(db)}
    r = client.post("/v1/jobs", json=body, headers=alice)
    assert "checkpoint_id" in fields(problem(r, 422))
    for cursor in ("a\u0000", "../x", "j" * 41):
        r = client.get("/v1/jobs", params={"cursor": cursor}, headers=alice)
        assert "cursor" in fields(problem(r, 422))


def test_non_finite_numbers_are_422(
    client: TestClient, alice: Auth, db: sessionmaker[Session]
) -> None:
    checkpoint_id, dataset_id = add_checkpoint(db), add_dataset(db)
    raw = (
        f'{{"kind": "audit", "checkpoint_id": "{checkpoint_id}", "dataset_id": "{dataset_id}", '
        '"params": {"eps": [NaN], "alpha": Infinity}}'
    )
    r = client.post("/v1/jobs", content=raw, headers={**alice, "Content-Type": "application/json"})
    assert set(fields(problem(r, 422))) == {"params.eps", "params.alpha"}


def test_malformed_json_names_the_body(client: TestClient, alice: Auth) -> None:
    r = client.post(
        "/v1/jobs", content=b'{"kind": ', headers={**alice, "Content-Type": "application/json"}
    )
    assert fields(problem(r, 422))["body"].startswith("invalid JSON")


def test_idempotency_key_must_be_visible_ascii(
    client: TestClient, alice: Auth, db: sessionmaker[Session]
) -> None:
    body = {"kind": "pretrain", "dataset_id": add_dataset(db)}
    r = client.post("/v1/jobs", json=body, headers={**alice, "Idempotency-Key": "two words"})
    assert "Idempotency-Key" in fields(problem(r, 422))


def test_odd_upload_names_and_fields(client: TestClient, alice: Auth) -> None:
    r = upload(
        client, "/v1/checkpoints", alice, "w.pt", files.plain_state_dict(), arch="small cnn; rm"
    )
    assert "arch" in fields(problem(r, 422))
    r = upload(client, "/v1/datasets", alice, "d\u200bata\u2028.npz", files.npz())
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == "data.npz"
    # No name: the file gets one, and its content tells the format (an npz is a zip).
    r = upload(client, "/v1/datasets", alice, "", files.npz())
    assert (r.status_code, r.json()["filename"]) == (201, "dataset.bin")


def test_naive_timestamps_are_shown_as_utc() -> None:
    from pydantic import TypeAdapter

    value = TypeAdapter(UtcDateTime).validate_python(datetime(2026, 1, 2, 3, 4, 5))
    assert value.isoformat() == "2026-01-02T03:04:05+00:00"


def test_huge_params_get_a_small_answer(
    client: TestClient, alice: Auth, db: sessionmaker[Session]
) -> None:
    checkpoint_id, dataset_id = add_checkpoint(db), add_dataset(db)
    base = {"kind": "audit", "checkpoint_id": checkpoint_id, "dataset_id": dataset_id}
    # 30k unknown names (about 600 KB, under the JSON limit): 20 errors and a count.
    unknown = {f"p{i:05d}": 1 for i in range(30_000)}
    r = client.post("/v1/jobs", json={**base, "params": unknown}, headers=alice)
    body = problem(r, 422)
    assert len(body["errors"]) == 20
    assert body["detail"].startswith("30000 unknown parameter(s)")
    assert len(r.content) < 5_000
    # A list far longer than any real use is refused whole, as one error.
    r = client.post("/v1/jobs", json={**base, "params": {"eps": [0.1] * 50_000}}, headers=alice)
    assert fields(problem(r, 422)) == {"params.eps": "at most 64 values"}
    # Many bad values in one list: one error for the parameter, naming the first bad item.
    r = client.post("/v1/jobs", json={**base, "params": {"eps": ["x"] * 60}}, headers=alice)
    assert list(fields(problem(r, 422))) == ["params.eps"]
    r = client.post("/v1/jobs", json={**base, "params": {"eps": [0.1, True] * 30}}, headers=alice)
    assert fields(problem(r, 422))["params.eps"].endswith("(item 1)")
    # The request body itself is bounded (413 beyond CARTL_MAX_JSON_BYTES, 1 MiB by default).
    r = client.post("/v1/jobs", json={**base, "params": {"x" * 2_000_000: 1}}, headers=alice)
    assert problem(r, 413)["detail"].startswith("the request body is larger than 1048576")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/jobs", "GET, POST"),
        ("PATCH", "/v1/checkpoints/ckpt_x", "DELETE, GET"),
        ("DELETE", "/v1/jobs/job_x/cancel", "POST"),
    ],
)
def test_405_names_every_allowed_method(
    client: TestClient, alice: Auth, method: str, path: str, allowed: str
) -> None:
    r = client.request(method, path, headers=alice)
    problem(r, 405)
    assert r.headers["allow"] == allowed
