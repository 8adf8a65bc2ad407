"""The API refuses a job parameter outside its bounds with a 422 that names the field and the
bound, before anything is queued, and its JSON schema shows every bound."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Job
from tests.api.helpers import fields, problem
from tests.api.test_jobs import Auth, add_checkpoint, add_dataset, post_job

#: What an outside probe got accepted with a 202, as it sent them (JSON number literals).
PROBES = [
    ("pretrain", "epochs", "1e9", "at most 10000"),
    ("pretrain", "epochs", "9223372036854775808", "at most 10000"),
    ("transfer", "epochs", "1e9", "at most 10000"),
    ("compare", "epochs", "1e9", "at most 10000"),
    ("pretrain", "batch_size", "1e9", "at most 65536"),
    ("audit", "batch_size", "1e9", "at most 65536"),
    ("pretrain", "lr", "1e308", "at most 10"),
    ("transfer", "audit_steps", "1e9", "at most 10000"),
    ("pretrain", "steps", "1e9", "at most 1000"),
    ("audit", "steps", "1e9", "at most 10000"),
    ("pretrain", "trace_steps", "1e9", "at most 1000"),
    ("transfer", "trace_samples", "1e9", "at most 1000000"),
    ("audit", "restarts", "1e9", "at most 100"),
    ("audit", "apgd_steps", "1e9", "at most 10000"),
    ("audit", "square_queries", "1e12", "at most 1000000"),
    ("audit", "limit", "-1", "at least 1; got -1"),
    ("compare", "max_candidates", "1e9", "at most 1000"),
    ("compare", "max_cost", "1e12", "at most 2592000"),
    ("transfer", "train_steps", "1e9", "at most 1000"),
    # The same refusals for the rest: a list's items, a fraction written as text, huge integers.
    ("audit", "eps", '[0.1, "2000/1"]', "at most 1000; got 2000.0 (item 1)"),
    ("compare", "k", "[2, 1000000000]", "at most 100"),
    ("audit", "seed", str(2**64), "at most 4294967295"),
    ("audit", "limit", "1" + "0" * 400, "at most 1000000; got an integer of 1329 bits"),
]


def post_raw(
    client: TestClient, auth: Auth, kind: str, inputs: dict[str, str], name: str, literal: str
) -> Any:
    """A job whose parameter ``name`` is the JSON text ``literal``, exactly as written."""
    params: dict[str, Any] = {"eps": 0.1} if kind == "compare" and name != "eps" else {}
    body = json.dumps({"kind": kind, **inputs, "params": {**params, name: "VALUE"}})
    headers = {**auth, "Content-Type": "application/json"}
    return client.post("/v1/jobs", content=body.replace('"VALUE"', literal), headers=headers)


@pytest.mark.parametrize(("kind", "name", "literal", "bound"), PROBES)
def test_a_value_beyond_its_bound_is_422_naming_the_field_and_the_bound(
    client: TestClient,
    alice: Auth,
    db: sessionmaker[Session],
    kind: str,
    name: str,
    literal: str,
    bound: str,
) -> None:
    inputs = {"dataset_id": add_dataset(db)}
    if kind != "pretrain":
        inputs["checkpoint_id"] = add_checkpoint(db, classes=4)
    r = post_raw(client, alice, kind, inputs, name, literal)
    errors = fields(problem(r, 422))
    assert list(errors) == [f"params.{name}"], errors
    assert errors[f"params.{name}"].startswith(f"{name} must be {bound}")
    with db() as session:
        assert session.query(Job).count() == 0


def test_the_bounds_themselves_are_accepted(
    client: TestClient, alice: Auth, db: sessionmaker[Session]
) -> None:
    dataset = add_dataset(db)
    edges: dict[str, Any] = {"epochs": 10_000, "batch_size": 65_536, "lr": 10,
                             "weight_decay": 0, "steps": 1000, "seed": 2**32 - 1,
                             "trace_samples": 0}  # fmt: skip
    r = post_job(client, alice, "pretrain", None, dataset, arch="small-cnn", **edges)
    assert r.status_code == 202, r.text
    assert {k: r.json()["params"][k] for k in edges} == edges


def _numbers(schema: dict[str, Any]) -> list[dict[str, Any]]:
    found = [schema] if schema.get("type") in ("integer", "number") else []
    for branch in schema.get("anyOf", []):
        found += _numbers(branch)
    return found + _numbers(schema["items"]) if isinstance(schema.get("items"), dict) else found


def test_the_openapi_schema_shows_every_numbers_bounds(client: TestClient) -> None:
    components = client.get("/openapi.json").json()["components"]["schemas"]
    checked = 0
    for name in ("PretrainParams", "TransferParams", "AuditParams", "CompareParams"):
        for field, prop in components[name]["properties"].items():
            for number in _numbers(prop):
                assert {"minimum", "exclusiveMinimum"} & set(number), (name, field)
                assert {"maximum", "exclusiveMaximum"} & set(number), (name, field)
                checked += 1
    assert checked > 40
    pretrain, audit = components["PretrainParams"], components["AuditParams"]
    assert pretrain["properties"]["epochs"]["anyOf"][0] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 10_000,
    }
    assert audit["properties"]["limit"]["anyOf"][0]["minimum"] == 1
    assert pretrain["properties"]["lr"]["anyOf"][0]["exclusiveMinimum"] == 0
    # A list's bounds are on its items; a fraction may be written as text beside its number.
    eps_items = audit["properties"]["eps"]["anyOf"][0]["items"]["anyOf"]
    assert eps_items[0] == {"type": "number", "exclusiveMinimum": 0, "maximum": 1000.0}
    assert eps_items[1]["type"] == "string"
    assert "(1 to 10000)" in pretrain["properties"]["epochs"]["description"]
