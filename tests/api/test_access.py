"""Every /v1 request needs a live key; another owner's objects do not exist for the caller."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import Message, Scope

from app.db.base import utcnow
from app.db.models import ApiKey
from app.services.auth import hash_key
from tests.api.conftest import ClientFactory
from tests.api.helpers import problem
from tests.api.test_jobs import add_checkpoint, add_dataset, post_job

Auth = dict[str, str]

ROUTES = [
    ("GET", "/v1/checkpoints"),
    ("POST", "/v1/checkpoints"),
    ("GET", "/v1/checkpoints/ckpt_x"),
    ("DELETE", "/v1/checkpoints/ckpt_x"),
    ("GET", "/v1/datasets"),
    ("POST", "/v1/datasets"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/job_x"),
    ("GET", "/v1/jobs/job_x/metrics"),
    ("GET", "/v1/jobs/job_x/weights"),
    ("POST", "/v1/jobs/job_x/cancel"),
]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer cartl_not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong", "basic", "empty"],
)
@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_no_valid_key_is_401(
    client: TestClient, alice: Auth, headers: dict[str, str], method: str, path: str
) -> None:
    r = client.request(method, path, headers=headers)
    problem(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer cartl_not-a-key"}])
def test_a_refused_key_is_answered_before_the_body_is_read(
    client: TestClient, alice: Auth, headers: dict[str, str]
) -> None:
    """A 500 MB upload without a live key is refused with none of its body read."""
    reads: list[int] = []
    sent: list[Message] = []

    async def receive() -> Message:
        reads.append(1)
        return {"type": "http.request", "body": bytes(64 * 1024), "more_body": True}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/checkpoints",
        "raw_path": b"/v1/checkpoints",
        "root_path": "",
        "query_string": b"",
        "server": ("testserver", 80),
        "client": ("testclient", 50000),
        "state": {},
        "headers": [
            (b"content-type", b"multipart/form-data; boundary=x"),
            (b"content-length", str(500 * 1024**2).encode()),
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ],
    }

    async def call() -> None:
        await client.app(scope, receive, send)

    assert client.portal is not None
    client.portal.call(call)
    assert sent[0]["status"] == 401
    assert reads == []


def test_a_wrong_key_is_named_before_a_malformed_body(client: TestClient, alice: Auth) -> None:
    wrong = {"Authorization": "Bearer cartl_not-a-key", "Content-Type": "application/json"}
    r = client.post("/v1/jobs", content=b'{"kind": ', headers=wrong)
    assert "invalid or revoked" in problem(r, 401)["detail"]


def _revoke(db: sessionmaker[Session], auth: Auth) -> None:
    secret = auth["Authorization"].removeprefix("Bearer ")
    with db() as session, session.begin():
        session.execute(
            update(ApiKey).where(ApiKey.key_hash == hash_key(secret)).values(revoked_at=utcnow())
        )


def test_revoked_key_is_401(
    make_client: ClientFactory, alice: Auth, db: sessionmaker[Session]
) -> None:
    client = make_client(key_cache_s=0)  # every request looks the key up
    assert client.get("/v1/jobs", headers=alice).status_code == 200
    _revoke(db, alice)
    assert "revoked" in problem(client.get("/v1/jobs", headers=alice), 401)["detail"]


def test_a_revoked_key_is_refused_within_the_key_cache_time(
    make_client: ClientFactory, alice: Auth, db: sessionmaker[Session]
) -> None:
    client = make_client(key_cache_s=0.5)
    assert client.get("/v1/jobs", headers=alice).status_code == 200
    _revoke(db, alice)
    # Trusted for at most CARTL_KEY_CACHE_S after it was last looked up, then refused.
    assert client.get("/v1/jobs", headers=alice).status_code == 200
    time.sleep(0.6)
    assert "revoked" in problem(client.get("/v1/jobs", headers=alice), 401)["detail"]
    # A wrong key is never cached: it is looked up, and refused, every time.
    wrong = {"Authorization": "Bearer cartl_wrong"}
    for _ in range(2):
        problem(client.get("/v1/jobs", headers=wrong), 401)


def test_keys_are_stored_hashed(alice: Auth, db: sessionmaker[Session]) -> None:
    secret = alice["Authorization"].removeprefix("Bearer ")
    assert secret.startswith("cartl_")
    with db() as session:
        (key,) = session.query(ApiKey).all()
    assert (key.name, key.key_hash) == ("alice", hash_key(secret))
    assert secret not in key.key_hash


def test_other_owners_objects_are_404(
    client: TestClient, alice: Auth, bob: Auth, db: sessionmaker[Session]
) -> None:
    checkpoint_id, dataset_id = add_checkpoint(db), add_dataset(db)
    job_id = post_job(client, alice, "transfer", checkpoint_id, dataset_id).json()["id"]
    for method, path in [
        ("GET", f"/v1/checkpoints/{checkpoint_id}"),
        ("DELETE", f"/v1/checkpoints/{checkpoint_id}"),
        ("GET", f"/v1/datasets/{dataset_id}"),
        ("DELETE", f"/v1/datasets/{dataset_id}"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/metrics"),
        ("GET", f"/v1/jobs/{job_id}/weights"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
    ]:
        problem(client.request(method, path, headers=bob), 404)
    for path in ("/v1/checkpoints", "/v1/datasets", "/v1/jobs"):
        assert client.get(path, headers=bob).json() == {"items": [], "next_cursor": None}
        assert len(client.get(path, headers=alice).json()["items"]) == 1
    # Bob cannot build on alice's uploads either.
    r = post_job(client, bob, "transfer", checkpoint_id, dataset_id)
    assert {e["field"] for e in problem(r, 422)["errors"]} == {
        "checkpoint_id",
        "dataset_id",
    }
    # And alice's job is untouched.
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).json()["status"] == "queued"
