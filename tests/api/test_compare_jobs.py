"""Compare jobs through the API: validation, the candidate table, weights per candidate, report."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.services.jobs import candidate_key
from tests.api.helpers import fields, problem
from tests.api.test_jobs import Auth, add_checkpoint, add_dataset, post_job, set_job

NAMES = ("standard-k2-source-stats", "cartl-k2-b0.4-frozen")


@pytest.fixture
def inputs(db: sessionmaker[Session]) -> tuple[str, str]:
    return add_checkpoint(db), add_dataset(db)


def test_a_compare_job_is_queued_with_every_param(
    client: TestClient, alice: Auth, inputs: tuple[str, str]
) -> None:
    r = post_job(client, alice, "compare", *inputs, eps="8/255", k=[2, 3], methods=["cartl"])
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["kind"], job["status"]) == ("compare", "queued")
    params = job["params"]
    assert params["eps"] == pytest.approx(8 / 255)
    assert (params["k"], params["methods"], params["norm_beta"]) == ([2, 3], ["cartl"], None)
    assert params["max_clean_drop"] == 0.05
    assert job["links"]["weights"] == f"/v1/jobs/{job['id']}/weights"
    listed = client.get("/v1/jobs", params={"kind": "compare"}, headers=alice).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    # A single k is a list of one, as for the audit's eps.
    r = post_job(client, alice, "compare", *inputs, eps=0.1, k=3)
    assert r.json()["params"]["k"] == [3]


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({}, "params.eps", "needs eps"),
        ({"eps": 0.1, "k": [2, 6]}, "params.k", "k=6 is out of range"),
        # One error per parameter, naming the list item.
        ({"eps": 0.1, "k": ["2"]}, "params.k", "valid integer (item 0)"),
        ({"eps": 0.1, "methods": ["standard", "magic"]}, "params.methods", "(item 1)"),
        ({"eps": 0.1, "bn": ["nope"]}, "params.bn", "unknown bn_presets value"),
        ({"eps": 0.1, "max_clean_drop": 2}, "params.max_clean_drop", "at most 1; got 2"),
        ({"eps": 0.1, "val_fraction": 0}, "params.val_fraction", "above 0; got 0"),
        ({"eps": 0.1, "max_candidates": 0}, "params.max_candidates", "at least 1"),
        # The budget is device-seconds above 0, at most 30 days of one device.
        ({"eps": 0.1, "max_cost": 0}, "params.max_cost", "above 0; got 0"),
        ({"eps": 0.1, "max_cost": -5}, "params.max_cost", "above 0"),
        ({"eps": 0.1, "max_cost": 1e9}, "params.max_cost", "at most 2592000"),
    ],
)
def test_bad_compare_params_are_422_on_their_field(
    client: TestClient,
    alice: Auth,
    inputs: tuple[str, str],
    params: dict[str, Any],
    field: str,
    message: str,
) -> None:
    body = fields(problem(post_job(client, alice, "compare", *inputs, **params), 422))
    assert field in body, body
    assert message in body[field], body


def test_adversarial_and_trades_fine_tuning_are_methods_and_max_cost_a_budget(
    client: TestClient, alice: Auth, inputs: tuple[str, str]
) -> None:
    r = post_job(client, alice, "compare", *inputs, eps="8/255",
                 methods=["standard", "adversarial"], max_cost=600)  # fmt: skip
    assert r.status_code == 202, r.text
    params = r.json()["params"]
    assert (params["methods"], params["max_cost"]) == (["standard", "adversarial"], 600)
    r = post_job(client, alice, "transfer", *inputs, method="adversarial", k=2,
                 train_eps="4/255", train_steps=3)  # fmt: skip
    assert r.status_code == 202, r.text
    params = r.json()["params"]
    assert (params["method"], params["train_steps"]) == ("adversarial", 3)
    assert params["train_eps"] == pytest.approx(4 / 255)
    # Its training attack is checked as the pre-training's is: Linf radii lie in [0, 1].
    r = post_job(client, alice, "transfer", *inputs, method="adversarial", train_eps=8)
    errors = fields(problem(r, 422))
    assert "exceeds the [0, 1] pixel range" in errors["params.train_eps"]
    r = post_job(client, alice, "transfer", *inputs, method="adversarial", train_steps=0)
    assert "at least 1" in fields(problem(r, 422))["params.train_steps"]
    r = post_job(client, alice, "transfer", *inputs, method="trades", trades_beta=3)
    assert r.status_code == 202, r.text
    assert r.json()["params"]["trades_beta"] == 3
    r = post_job(client, alice, "transfer", *inputs, method="trades", trades_beta=-1)
    assert "at least 0" in fields(problem(r, 422))["params.trades_beta"]


def test_a_compare_needs_a_source(
    client: TestClient, alice: Auth, db: sessionmaker[Session]
) -> None:
    r = post_job(client, alice, "compare", dataset_id=add_dataset(db), eps=0.1)
    assert fields(problem(r, 422)) == {"checkpoint_id": "required for a compare job"}


def _finished_compare(
    client: TestClient,
    alice: Auth,
    inputs: tuple[str, str],
    db: sessionmaker[Session],
    storage: Path,
) -> tuple[str, dict[str, bytes]]:
    """A compare job as the worker leaves it: candidate files, chosen weights, the table."""
    job_id = post_job(client, alice, "compare", *inputs, eps=0.1).json()["id"]
    files = {name: f"weights of {name}".encode() for name in NAMES}
    rows = []
    for i, (name, content) in enumerate(files.items()):
        path = storage / candidate_key(job_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        method = name.split("-")[0]
        rows.append(
            {"name": name, "method": method, "k": 2, "norm_beta": 0.4 if i else None,
             "bn": "frozen" if i else "source-stats", "val_clean": 0.9 - 0.02 * i,
             "val_robust": 0.1 + 0.2 * i, "test_clean": 0.88 - 0.02 * i,
             "test_robust": 0.12 + 0.2 * i, "seconds": 3.0,
             "sha256": hashlib.sha256(content).hexdigest(),
             "weights": f"/v1/jobs/{job_id}/weights?candidate={name}"}
        )  # fmt: skip
    chosen = b"the chosen model, with its full audit"
    (storage / f"jobs/{job_id}/weights.safetensors").write_bytes(chosen)
    files["chosen"] = chosen
    metrics = {
        "clean_accuracy": 0.86,
        "robust_accuracy": 0.3,
        "chosen": {**rows[1], "reason": "cartl-k2-b0.4-frozen: the most robust"},
        "candidates": rows,
        "estimate": {"candidates": 2, "train_seconds": 4.0, "audit_seconds_max": 9.0},
        "selection": {"best_val_clean": 0.9, "max_clean_drop": 0.05, "eps": 0.1,
                      "norm": "linf", "ensemble": "fast", "val_samples": 6},
        "dropped": [],
    }  # fmt: skip
    set_job(
        db, job_id, status="succeeded", metrics=metrics, started_at=utcnow(),
        finished_at=utcnow(), weights_key=f"jobs/{job_id}/weights.safetensors",
        weights_sha256=hashlib.sha256(chosen).hexdigest(), weights_size=len(chosen),
    )  # fmt: skip
    return job_id, files


def test_weights_are_the_chosen_model_or_any_named_candidate(
    client: TestClient,
    alice: Auth,
    bob: Auth,
    inputs: tuple[str, str],
    db: sessionmaker[Session],
    storage_dir: Path,
) -> None:
    job_id, files = _finished_compare(client, alice, inputs, db, storage_dir)
    r = client.get(f"/v1/jobs/{job_id}/weights", headers=alice)
    assert r.status_code == 200
    assert r.content == files["chosen"]
    for name in NAMES:
        r = client.get(f"/v1/jobs/{job_id}/weights", params={"candidate": name}, headers=alice)
        assert r.status_code == 200, r.text
        assert r.content == files[name]
        digest = hashlib.sha256(files[name]).hexdigest()
        assert r.headers["X-Checksum-SHA256"] == digest
        assert name in r.headers["content-disposition"]

    r = client.get(f"/v1/jobs/{job_id}/weights", params={"candidate": "../../x"}, headers=alice)
    body = problem(r, 404)
    assert body["candidates"] == list(NAMES)
    assert all(name in body["detail"] for name in NAMES)

    metrics = client.get(f"/v1/jobs/{job_id}/metrics", headers=alice).json()
    assert metrics["chosen"] == "cartl-k2-b0.4-frozen"
    assert [c["name"] for c in metrics["candidates"]] == list(NAMES)
    assert metrics["estimate"]["candidates"] == 2
    # How it was chosen travels with the table: the rule, its confidence, the validation size.
    assert metrics["selection"]["val_samples"] == 6
    # Another owner sees no such job, candidates or not.
    r = client.get(f"/v1/jobs/{job_id}/weights", params={"candidate": NAMES[0]}, headers=bob)
    assert "no job" in problem(r, 404)["detail"]


def test_candidate_is_only_for_finished_compare_jobs(
    client: TestClient, alice: Auth, inputs: tuple[str, str]
) -> None:
    transfer = post_job(client, alice, "transfer", *inputs).json()["id"]
    r = client.get(f"/v1/jobs/{transfer}/weights", params={"candidate": NAMES[0]}, headers=alice)
    assert "only compare jobs have candidates" in fields(problem(r, 422))["candidate"]
    queued = post_job(client, alice, "compare", *inputs, eps=0.1).json()["id"]
    r = client.get(f"/v1/jobs/{queued}/weights", params={"candidate": NAMES[0]}, headers=alice)
    assert "no candidate weights yet" in problem(r, 409)["detail"]


def test_the_report_shows_every_candidate_with_the_chosen_one_marked(
    client: TestClient,
    alice: Auth,
    inputs: tuple[str, str],
    db: sessionmaker[Session],
    storage_dir: Path,
) -> None:
    job_id, _ = _finished_compare(client, alice, inputs, db, storage_dir)
    page = client.get(f"/v1/jobs/{job_id}/report", headers=alice).text
    assert "Candidates: clean against robust" in page
    assert page.count("<svg") >= 2  # validation and test
    assert "cartl-k2-b0.4-frozen <strong>(chosen)</strong>" in page
    assert "clean 88.0%, robust 12.0%" in page  # a point's tooltip: standard's test numbers
