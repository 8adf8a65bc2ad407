"""A kind registered by a module of its own is offered by the API as the built-in ones are: its
params schema, validation, queueing and listing come from the registry alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from cartl_core.kinds import JobKind
from tests.api.conftest import ClientFactory
from tests.api.helpers import fields, problem
from tests.api.test_jobs import Auth, add_checkpoint, add_dataset, post_job
from tests.plugins import toy_kind


@pytest.fixture
def toy() -> Iterator[JobKind]:
    with toy_kind() as kind:
        yield kind


def test_the_job_kinds_endpoint_lists_the_registry(client: TestClient, alice: Auth) -> None:
    r = client.get("/v1/job-kinds", headers=alice)
    assert r.status_code == 200, r.text
    kinds = {k["name"]: k for k in r.json()}
    assert list(kinds) == ["pretrain", "transfer", "audit", "compare"]
    assert (kinds["audit"]["checkpoint"], kinds["audit"]["makes_weights"]) == ("model", False)
    assert kinds["pretrain"]["checkpoint"] == "init"
    epochs = kinds["transfer"]["params_schema"]["properties"]["epochs"]
    assert epochs["anyOf"][0]["maximum"] == 10_000
    assert client.get("/v1/job-kinds").status_code == 401


def test_a_registered_toy_kind_is_offered_validated_and_queued(
    toy: JobKind, make_client: ClientFactory, db: sessionmaker[Session], alice: Auth
) -> None:
    client = make_client()
    kinds = [k["name"] for k in client.get("/v1/job-kinds", headers=alice).json()]
    assert kinds[-1] == "clean-accuracy"
    spec = client.get("/openapi.json").json()
    assert (
        "clean-accuracy" in spec["components"]["schemas"]["JobCreate"]["properties"]["kind"]["enum"]
    )
    limit = spec["components"]["schemas"]["CleanAccuracyParams"]["properties"]["limit"]
    assert limit["anyOf"][0]["minimum"] == 1

    checkpoint, dataset = add_checkpoint(db, classes=4), add_dataset(db)
    bad = post_job(client, alice, "clean-accuracy", checkpoint, dataset, limit=0)
    assert fields(problem(bad, 422))["params.limit"].startswith("limit must be at least 1")
    missing = post_job(client, alice, "clean-accuracy", None, dataset)
    assert "required for a clean-accuracy job" in fields(problem(missing, 422))["checkpoint_id"]

    r = post_job(client, alice, "clean-accuracy", checkpoint, dataset, limit=50)
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["kind"], job["params"]) == ("clean-accuracy", {"limit": 50, "batch_size": 256})
    assert job["links"]["weights"] is None  # the kind makes none
    listed = client.get("/v1/jobs", params={"kind": "clean-accuracy"}, headers=alice).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]


def test_an_unknown_kind_is_refused_naming_the_registered_ones(
    client: TestClient, alice: Auth
) -> None:
    r = post_job(client, alice, "finetune")
    assert (
        "unknown job kind 'finetune'; choose one of pretrain, transfer, audit, compare"
        in (fields(problem(r, 422))["kind"])
    )
