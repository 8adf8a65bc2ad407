"""Jobs: validation up front, idempotency, listing, cancel, metrics and weights."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import new_id, utcnow
from app.db.models import Checkpoint, DatasetRow, Job
from cartl_core.config import TransferConfig
from cartl_core.jobs import AuditParams, PretrainParams, TransferParams
from tests.api import files
from tests.api.conftest import REDIS_URL, ClientFactory
from tests.api.helpers import METRICS, fields, problem, row_count, upload

Auth = dict[str, str]


def add_checkpoint(
    db: sessionmaker[Session],
    owner: str = "alice",
    *,
    channels: int = 1,
    classes: int = 10,
    plain: bool = False,
    training: dict[str, Any] | None = None,
) -> str:
    """A checkpoint row as an upload of a small-cnn would record it (the file is not needed);
    ``training``: its header's record of how it was made."""
    checkpoint_id = new_id("ckpt")
    fmt = "plain-state-dict" if plain else "cartl-checkpoint/1"
    description: dict[str, Any] = {"format": fmt}
    if training is not None:
        description["training"] = training
    with db() as session, session.begin():
        session.add(
            Checkpoint(
                id=checkpoint_id,
                owner=owner,
                filename="m.safetensors",
                arch="small-cnn",
                num_classes=classes,
                num_blocks=5,
                input_shape=[channels, 8, 8],
                description=description,
                sha256="0" * 64,
                size=1,
                storage_key=f"checkpoints/{checkpoint_id}/m.safetensors",
            )
        )
    return checkpoint_id


def add_dataset(
    db: sessionmaker[Session],
    owner: str = "alice",
    *,
    channels: int = 1,
    classes: int = 4,
    size: int = 8,
    width: int | None = None,
) -> str:
    dataset_id = new_id("ds")
    with db() as session, session.begin():
        session.add(
            DatasetRow(
                id=dataset_id,
                owner=owner,
                filename="d.npz",
                format="npz",
                num_classes=classes,
                class_names=[str(i) for i in range(classes)],
                train_size=32,
                test_size=16,
                input_shape=[channels, size, size if width is None else width],
                sha256="0" * 64,
                size=1,
                storage_key=f"datasets/{dataset_id}/d.npz",
            )
        )
    return dataset_id


@pytest.fixture
def inputs(db: sessionmaker[Session]) -> tuple[str, str]:
    return add_checkpoint(db), add_dataset(db)


def post_job(
    client: TestClient,
    auth: Auth,
    kind: str,
    checkpoint_id: str | None = None,
    dataset_id: str | None = None,
    key: str | None = None,
    **params: Any,
) -> Any:
    body: dict[str, Any] = {"kind": kind, "params": params}
    if checkpoint_id is not None:
        body["checkpoint_id"] = checkpoint_id
    if dataset_id is not None:
        body["dataset_id"] = dataset_id
    headers = {**auth, "Idempotency-Key": key} if key else auth
    return client.post("/v1/jobs", json=body, headers=headers)


def set_job(db: sessionmaker[Session], job_id: str, **values: Any) -> None:
    with db() as session, session.begin():
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def defaults(cls: type) -> dict[str, Any]:
    values: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(cls())))
    return values


# --- creating ----------------------------------------------------------------------------------


def test_a_transfer_without_k_tunes_the_k_its_source_was_pretrained_for(
    client: TestClient, alice: Auth, db: sessionmaker[Session]
) -> None:
    source = add_checkpoint(db, classes=4, training={"kind": "pretrain", "k": 2})
    dataset = add_dataset(db)
    job = post_job(client, alice, "transfer", source, dataset).json()
    assert job["params"]["k"] == 2  # stored resolved: the job says which k it tunes
    given = post_job(client, alice, "transfer", source, dataset, k=3).json()
    assert given["params"]["k"] == 3
    too_deep = post_job(client, alice, "transfer", source, dataset, k=6)
    assert "between 1 and 5" in fields(problem(too_deep, 422))["params.k"]


def test_transfer_with_defaults_is_queued_and_sent(
    client: TestClient, alice: Auth, inputs: tuple[str, str]
) -> None:
    queue = redis.Redis.from_url(REDIS_URL)
    before = queue.llen("cartl-api-tests")
    r = post_job(client, alice, "transfer", *inputs)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["kind"], job["status"]) == ("transfer", "queued")
    assert (job["checkpoint_id"], job["dataset_id"]) == inputs
    # Every default resolved, straight from cartl_core's dataclass; k from the source's header,
    # which records no pre-training here, so the paper's.
    assert job["params"] == {**defaults(TransferParams), "k": TransferConfig().k}
    assert job["enqueued_at"] is None  # sent right after the response
    assert job["attempts"] == 0
    assert job["progress"]["fraction"] is None
    assert job["links"] == {
        "self": f"/v1/jobs/{job['id']}",
        "metrics": f"/v1/jobs/{job['id']}/metrics",
        "report": f"/v1/jobs/{job['id']}/report",
        "weights": f"/v1/jobs/{job['id']}/weights",
    }
    # The message went to the broker, carrying the id only.
    assert queue.llen("cartl-api-tests") == before + 1
    message = json.loads(queue.lindex("cartl-api-tests", 0) or b"{}")
    assert message["headers"]["argsrepr"] == repr([job["id"]])
    queue.close()
    again = client.get(job["links"]["self"], headers=alice).json()
    assert again["enqueued_at"] is not None
    assert {**again, "enqueued_at": None} == job


def test_broker_down_leaves_the_job_queued(
    make_client: ClientFactory, alice: Auth, inputs: tuple[str, str]
) -> None:
    client = make_client(broker_url="redis://127.0.0.1:1/0")
    r = post_job(client, alice, "audit", *inputs)
    assert r.status_code == 202, r.text
    assert (r.json()["status"], r.json()["enqueued_at"]) == ("queued", None)
    assert r.json()["params"] == defaults(AuditParams)
    later = client.get(f"/v1/jobs/{r.json()['id']}", headers=alice).json()
    assert (later["status"], later["enqueued_at"]) == ("queued", None)  # for the sweeper


def test_params_keep_their_given_values(
    client: TestClient, alice: Auth, inputs: tuple[str, str]
) -> None:
    r = post_job(
        client,
        alice,
        "transfer",
        *inputs,
        method="neft",
        k=2,
        epochs=3,
        audit_eps=["4/255", 0.05],
        no_audit=False,
    )
    assert r.status_code == 202, r.text
    params = r.json()["params"]
    assert (params["method"], params["k"], params["epochs"]) == ("neft", 2, 3)
    assert params["audit_eps"] == pytest.approx([4 / 255, 0.05])


def test_pretrain_without_checkpoint_checks_k_against_the_arch(
    client: TestClient, alice: Auth, db: sessionmaker[Session]
) -> None:
    dataset_id = add_dataset(db)
    r = post_job(client, alice, "pretrain", dataset_id=dataset_id, arch="small-cnn", k=3)
    assert r.status_code == 202, r.text
    assert r.json()["params"] == {**defaults(PretrainParams), "arch": "small-cnn", "k": 3}
    r = post_job(client, alice, "pretrain", dataset_id=dataset_id, arch="small-cnn", k=6)
    assert "between 1 and 5" in fields(problem(r, 422))["params.k"]
    r = post_job(client, alice, "pretrain", dataset_id=dataset_id, arch="resnet9000")
    assert "unknown architecture" in fields(problem(r, 422))["params.arch"]


def test_pretrain_from_a_checkpoint_takes_its_arch(
    client: TestClient, alice: Auth, inputs: tuple[str, str]
) -> None:
    r = post_job(client, alice, "pretrain", *inputs)
    assert r.status_code == 202, r.text
    assert r.json()["params"]["arch"] == "small-cnn"
    r = post_job(client, alice, "pretrain", *inputs, arch="resnet18-cifar")
    assert "small-cnn" in fields(problem(r, 422))["params.arch"]


def test_plain_weights_get_arch_and_classes_from_the_checkpoint(
    client: TestClient, alice: Auth, db: sessionmaker[Session]
) -> None:
    checkpoint_id, dataset_id = add_checkpoint(db, plain=True), add_dataset(db)
    r = post_job(client, alice, "transfer", checkpoint_id, dataset_id)
    assert r.status_code == 202, r.text
    assert (r.json()["params"]["arch"], r.json()["params"]["source_classes"]) == ("small-cnn", 10)
    r = post_job(client, alice, "audit", checkpoint_id, dataset_id)
    assert r.json()["params"]["arch"] == "small-cnn"


@pytest.mark.parametrize(
    ("kind", "params", "field", "text"),
    [
        ("transfer", {"k": 6}, "params.k", "between 1 and 5"),
        ("transfer", {"k": 0}, "params.k", "at least 1; got 0"),
        ("transfer", {"k": "3"}, "params.k", "valid integer"),
        ("transfer", {"k": 2.5}, "params.k", "valid integer"),
        ("transfer", {"method": "magic"}, "params.method", "'cartl'"),
        ("transfer", {"bogus": 1}, "params.bogus", "unknown parameter"),
        ("transfer", {"audit_eps": -0.1}, "params.audit_eps", "above 0"),
        ("transfer", {"audit_eps": "8/0"}, "params.audit_eps", "fraction"),
        ("transfer", {"norm_beta": 0}, "params.norm_beta", "above 0"),
        ("transfer", {"bn": "weird"}, "params.bn", "BN preset"),
        ("transfer", {"epochs": 0}, "params.epochs", "at least 1"),
        ("pretrain", {"eps": 0, "arch": "small-cnn"}, "params.eps", "above 0"),
        ("pretrain", {"eps": "-8/255", "arch": "small-cnn"}, "params.eps", "above 0"),
        ("pretrain", {"fdm_reduction": "max", "arch": "small-cnn"}, "params.fdm_reduction", ""),
        ("pretrain", {"audit_steps": 0, "arch": "small-cnn"}, "params.audit_steps", "at least 1"),
        ("audit", {"eps": []}, "params.eps", "at least one"),
        ("audit", {"norm": "l3"}, "params.norm", "'linf'"),
        ("audit", {"no_fgsm": "yes"}, "params.no_fgsm", "valid boolean"),
    ],
)
def test_bad_params_are_422_on_their_field(
    client: TestClient,
    alice: Auth,
    inputs: tuple[str, str],
    db: sessionmaker[Session],
    kind: str,
    params: dict[str, Any],
    field: str,
    text: str,
) -> None:
    checkpoint_id, dataset_id = inputs
    r = post_job(client, alice, kind, checkpoint_id, dataset_id, **params)
    body = problem(r, 422)
    errors = fields(body)
    assert field in errors, body
    assert text in errors[field]
    with db() as session:
        assert session.query(Job).count() == 0


def test_inputs_are_checked(
    client: TestClient, alice: Auth, bob: Auth, db: sessionmaker[Session]
) -> None:
    mine, theirs = add_dataset(db), add_checkpoint(db, owner="bob")
    r = post_job(client, alice, "transfer", dataset_id=mine)
    assert fields(problem(r, 422)) == {"checkpoint_id": "required for a transfer job"}
    r = post_job(client, alice, "audit", theirs, "ds_nope")
    assert set(fields(problem(r, 422))) == {"checkpoint_id", "dataset_id"}
    r = post_job(client, alice, "pretrain")
    assert "dataset_id" in fields(problem(r, 422))
    r = client.post("/v1/jobs", json={"kind": "finetune"}, headers=alice)
    assert "kind" in fields(problem(r, 422))
    r = client.post("/v1/jobs", json={"kind": "audit", "colour": 1}, headers=alice)
    assert fields(problem(r, 422))["colour"] == "unknown field"


def test_checkpoint_and_dataset_must_fit_each_other(
    client: TestClient, alice: Auth, db: sessionmaker[Session]
) -> None:
    rgb, gray = add_checkpoint(db, channels=3), add_dataset(db, channels=1)
    r = post_job(client, alice, "transfer", rgb, gray)
    assert "3-channel" in fields(problem(r, 422))["dataset_id"]
    few, many = add_checkpoint(db, classes=2), add_dataset(db, classes=4)
    r = post_job(client, alice, "audit", few, many)
    assert "4 classes" in fields(problem(r, 422))["dataset_id"]
    # A transfer replaces the classifier: any class count will do.
    assert post_job(client, alice, "transfer", few, many).status_code == 202


def test_images_of_another_size_are_resampled_or_resized(
    client: TestClient, alice: Auth, db: sessionmaker[Session]
) -> None:
    checkpoint, big = add_checkpoint(db), add_dataset(db, size=12)
    for kind in ("transfer", "audit", "compare"):
        extra: dict[str, Any] = {"eps": 0.1} if kind == "compare" else {}
        # Left as they are: the 8-px model resamples the 12-px images inside itself.
        r = post_job(client, alice, kind, checkpoint, big, **extra)
        assert r.status_code == 202, r.text
        assert r.json()["params"]["resize"] is False
        # Resized first: to the model's input size (true), or to a side, with a method.
        for resize in (True, 16):
            r = post_job(client, alice, kind, checkpoint, big, resize=resize,
                         resize_method="area", **extra)  # fmt: skip
            assert r.status_code == 202, r.text
            assert (r.json()["params"]["resize"], r.json()["params"]["resize_method"]) == (
                resize,
                "area",
            )
        bad: Any
        for bad, said in ((4, "at least 8"), ("32", "valid integer")):
            r = post_job(client, alice, kind, checkpoint, big, resize=bad, **extra)
            assert said in fields(problem(r, 422))["params.resize"]
        r = post_job(client, alice, kind, checkpoint, big, resize_method="lanczos", **extra)
        assert set(fields(problem(r, 422))) == {"params.resize_method"}
    # Non-square images need a resize: a model is described, and fed, at one side.
    wide = add_dataset(db, size=8, width=12)
    refused = fields(problem(post_job(client, alice, "audit", checkpoint, wide), 422))
    assert "8x12 images" in refused["params.resize"]
    assert post_job(client, alice, "audit", checkpoint, wide, resize=8).status_code == 202
    # True means the model's input size: a new model has none.
    r = post_job(client, alice, "pretrain", None, big, arch="small-cnn", resize=True)
    assert "give a side" in fields(problem(r, 422))["params.resize"]
    r = post_job(client, alice, "pretrain", None, big, arch="small-cnn", resize=16)
    assert r.status_code == 202, r.text


def test_uploaded_inputs_make_a_job(client: TestClient, alice: Auth, tmp_path: Path) -> None:
    checkpoint = upload(
        client, "/v1/checkpoints", alice, "m.safetensors", files.safetensors_checkpoint(tmp_path)
    ).json()
    dataset = upload(client, "/v1/datasets", alice, "d.npz", files.npz()).json()
    r = post_job(client, alice, "transfer", checkpoint["id"], dataset["id"], k=5)
    assert r.status_code == 202, r.text
    r = post_job(client, alice, "transfer", checkpoint["id"], dataset["id"], k=6)
    assert fields(problem(r, 422))["params.k"].startswith("must be between 1 and 5")


# --- idempotency -------------------------------------------------------------------------------


def test_idempotency_key_returns_the_same_job(
    client: TestClient, alice: Auth, bob: Auth, inputs: tuple[str, str], db: sessionmaker[Session]
) -> None:
    first = post_job(client, alice, "transfer", *inputs, key="retry-1", k=3)
    assert first.status_code == 202
    again = post_job(client, alice, "transfer", *inputs, key="retry-1", k=3)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    # Spelling out a default is the same request.
    same = post_job(client, alice, "transfer", *inputs, key="retry-1", k=3, method="cartl")
    assert same.json()["id"] == first.json()["id"]

    other = post_job(client, alice, "transfer", *inputs, key="retry-1", k=2)
    assert "different request" in problem(other, 409)["detail"]
    # Keys are per owner.
    bobs = post_job(client, bob, "pretrain", dataset_id=add_dataset(db, "bob"), key="retry-1")
    assert bobs.status_code == 202, bobs.text
    with db() as session:
        assert session.query(Job).count() == 2


# --- reading -----------------------------------------------------------------------------------


def test_list_filters_and_pages(
    client: TestClient, alice: Auth, bob: Auth, inputs: tuple[str, str], db: sessionmaker[Session]
) -> None:
    made = [post_job(client, alice, kind, *inputs).json()["id"] for kind in ("transfer",) * 3]
    audit = post_job(client, alice, "audit", *inputs).json()["id"]
    set_job(db, made[0], status="succeeded")
    post_job(client, bob, "pretrain", dataset_id=add_dataset(db, "bob"))

    everything = client.get("/v1/jobs", headers=alice).json()
    assert [j["id"] for j in everything["items"]] == [audit, *made[::-1]]
    assert everything["next_cursor"] is None

    seen, cursor = [], None
    while True:
        page = client.get(
            "/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=alice
        ).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [audit, *made[::-1]]

    audits = client.get("/v1/jobs", params={"kind": "audit"}, headers=alice).json()
    assert [j["id"] for j in audits["items"]] == [audit]
    done = client.get("/v1/jobs", params={"status": "succeeded"}, headers=alice).json()
    assert [j["id"] for j in done["items"]] == [made[0]]
    queued = client.get(
        "/v1/jobs", params={"status": "queued", "kind": "transfer"}, headers=alice
    ).json()
    assert [j["id"] for j in queued["items"]] == made[:0:-1]
    r = client.get("/v1/jobs", params={"status": "lost"}, headers=alice)
    assert "status" in fields(problem(r, 422))


def test_progress_and_metrics_are_shown(
    client: TestClient, alice: Auth, inputs: tuple[str, str], db: sessionmaker[Session]
) -> None:
    job_id = post_job(client, alice, "transfer", *inputs).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/metrics", headers=alice)
    assert "queued" in problem(r, 409)["detail"]
    history = [{"epoch": 1, "loss": 1.5}, {"epoch": 2, "loss": 1.1}]
    progress = {"stage": "train", "epoch": 2, "epochs": 4, "fraction": 0.5, "eta_s": 30.0}
    set_job(db, job_id, status="running", progress=progress, history=history, started_at=utcnow())
    job = client.get(f"/v1/jobs/{job_id}", headers=alice).json()
    compare_only = {"candidate": None, "candidates": None, "candidate_name": None, "estimate": None}
    audit_only = {
        "attack": None, "audit_attack": None, "audit_attacks": None, "audit_done": None,
        "audit_total": None, "audit_fraction": None, "audit_estimate_s": None,
    }  # fmt: skip
    assert job["progress"] == {**progress, "metrics": {}, **compare_only, **audit_only}
    # An audit stage says which attack runs and how far it is (they used to be dropped).
    audit = {"stage": "audit", "attack": "apgd-t @ 0.2", "audit_done": 256, "audit_total": 306}
    set_job(db, job_id, progress=audit)
    shown = client.get(f"/v1/jobs/{job_id}", headers=alice).json()["progress"]
    assert {k: shown[k] for k in audit} == audit
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", headers=alice).json()
    assert metrics == {
        "history": history,
        "audit": None,
        "chosen": None,
        "candidates": None,
        "estimate": None,
        "selection": None,
    }


# --- weights -----------------------------------------------------------------------------------


def _succeed_with_weights(
    db: sessionmaker[Session], storage_dir: Path, job_id: str, content: bytes
) -> Path:
    """Mark the job succeeded with ``content`` stored as its weights; returns the file."""
    key = f"jobs/{job_id}/weights.safetensors"
    path = storage_dir / key
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    set_job(
        db,
        job_id,
        status="succeeded",
        weights_key=key,
        weights_sha256=hashlib.sha256(content).hexdigest(),
        weights_size=len(content),
        finished_at=utcnow(),
    )
    return path


def test_weights_only_once_there_are_some(
    client: TestClient,
    alice: Auth,
    inputs: tuple[str, str],
    db: sessionmaker[Session],
    storage_dir: Path,
) -> None:
    job_id = post_job(client, alice, "transfer", *inputs).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/weights", headers=alice)
    assert "no weights yet" in problem(r, 409)["detail"]

    content = b"pretend safetensors"
    _succeed_with_weights(db, storage_dir, job_id, content)
    digest = hashlib.sha256(content).hexdigest()
    r = client.get(f"/v1/jobs/{job_id}/weights", headers=alice)
    assert r.status_code == 200
    assert r.content == content
    assert r.headers["content-type"] == "application/octet-stream"
    assert f'filename="{job_id}.safetensors"' in r.headers["content-disposition"]
    assert r.headers["etag"] == f'"{digest}"'
    assert r.headers["x-checksum-sha256"] == digest
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).json()["progress"]["fraction"] == 1.0

    audit = post_job(client, alice, "audit", *inputs).json()
    assert audit["links"]["weights"] is None
    r = client.get(f"/v1/jobs/{audit['id']}/weights", headers=alice)
    assert "audit" in problem(r, 409)["detail"]


def test_damaged_or_missing_weights_are_refused_not_served(
    client: TestClient,
    alice: Auth,
    inputs: tuple[str, str],
    db: sessionmaker[Session],
    storage_dir: Path,
) -> None:
    job_id = post_job(client, alice, "transfer", *inputs).json()["id"]
    content = b"pretend safetensors, 32 bytes.."
    path = _succeed_with_weights(db, storage_dir, job_id, content)
    assert client.get(f"/v1/jobs/{job_id}/weights", headers=alice).status_code == 200

    # One flipped byte at rest: never served under the checksum recorded for the original.
    path.write_bytes(b"P" + content[1:])
    r = client.get(f"/v1/jobs/{job_id}/weights", headers=alice)
    body = problem(r, 500)
    assert body["type"].endswith("artifact-unavailable")
    assert "damaged" in body["detail"]
    assert str(storage_dir) not in r.text
    assert "x-checksum-sha256" not in r.headers

    # Gone: a server-side problem that says so, not "no weights yet" for a succeeded job.
    path.unlink()
    r = client.get(f"/v1/jobs/{job_id}/weights", headers=alice)
    body = problem(r, 500)
    assert "missing from the artifact storage" in body["detail"]
    assert "yet" not in body["detail"]
    assert str(storage_dir) not in r.text


# --- cancelling --------------------------------------------------------------------------------


def test_cancel(
    client: TestClient, alice: Auth, inputs: tuple[str, str], db: sessionmaker[Session]
) -> None:
    queued = post_job(client, alice, "transfer", *inputs).json()["id"]
    r = client.post(f"/v1/jobs/{queued}/cancel", headers=alice)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    problem(client.post(f"/v1/jobs/{queued}/cancel", headers=alice), 409)

    running = post_job(client, alice, "transfer", *inputs).json()["id"]
    set_job(db, running, status="running", started_at=utcnow())
    r = client.post(f"/v1/jobs/{running}/cancel", headers=alice)
    assert (r.json()["status"], r.json()["cancel_requested"]) == ("running", True)
    assert r.json()["finished_at"] is None

    done = post_job(client, alice, "audit", *inputs).json()["id"]
    set_job(db, done, status="succeeded", finished_at=utcnow())
    assert (
        "succeeded" in problem(client.post(f"/v1/jobs/{done}/cancel", headers=alice), 409)["detail"]
    )


def test_an_owner_past_the_waiting_jobs_limit_gets_429_and_others_do_not(
    make_client: ClientFactory, alice: Auth, bob: Auth, db: sessionmaker[Session]
) -> None:
    client = make_client(max_queued_per_owner=3)
    ckpt, ds = add_checkpoint(db), add_dataset(db)
    jobs = [post_job(client, alice, "audit", ckpt, ds).json()["id"] for _ in range(3)]
    refused = client.post(
        "/v1/jobs",
        json={"kind": "audit", "checkpoint_id": ckpt, "dataset_id": ds, "params": {}},
        headers=alice,
    )
    body = problem(refused, 429)
    assert "3 of your jobs are waiting" in body["detail"]
    assert int(refused.headers["Retry-After"]) > 0
    # Nothing was stored for the refused one; an idempotent replay of a made job still answers.
    assert row_count(db, "jobs") == 3
    replay = post_job(client, alice, "audit", ckpt, ds, key="k1")
    assert replay.status_code == 429
    # Another owner is not held back by alice's queue.
    bob_inputs = add_checkpoint(db, "bob"), add_dataset(db, "bob")
    assert post_job(client, bob, "audit", *bob_inputs).status_code == 202
    # A running job no longer waits: room for one more.
    set_job(db, jobs[0], status="running", started_at=utcnow())
    assert post_job(client, alice, "audit", ckpt, ds, key="k1").status_code == 202
    assert post_job(client, alice, "audit", ckpt, ds, key="k1").status_code == 200  # replay
    problem(post_job(client, alice, "audit", ckpt, ds), 429)


def test_inputs_of_live_jobs_cannot_be_deleted(
    client: TestClient, alice: Auth, inputs: tuple[str, str], db: sessionmaker[Session]
) -> None:
    checkpoint_id, dataset_id = inputs
    job_id = post_job(client, alice, "transfer", *inputs).json()["id"]
    r = client.delete(f"/v1/checkpoints/{checkpoint_id}", headers=alice)
    assert job_id in problem(r, 409)["detail"]
    r = client.delete(f"/v1/datasets/{dataset_id}", headers=alice)
    assert job_id in problem(r, 409)["detail"]
    client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    assert client.delete(f"/v1/checkpoints/{checkpoint_id}", headers=alice).status_code == 204
    job = client.get(f"/v1/jobs/{job_id}", headers=alice).json()
    assert (job["status"], job["checkpoint_id"]) == ("cancelled", None)


def test_job_durations_reach_the_metrics(
    client: TestClient, alice: Auth, inputs: tuple[str, str], db: sessionmaker[Session]
) -> None:
    job_id = post_job(client, alice, "transfer", *inputs).json()["id"]
    post_job(client, alice, "audit", *inputs)
    start = utcnow()
    set_job(
        db, job_id, status="succeeded", started_at=start, finished_at=start + timedelta(seconds=42)
    )
    text = client.get("/metrics", headers=METRICS).text
    assert 'cartl_jobs{status="queued"} 1.0' in text
    assert 'cartl_jobs{status="succeeded"} 1.0' in text
    assert "cartl_queue_depth 1.0" in text
    assert (
        'cartl_job_duration_seconds_bucket{kind="transfer",le="30.0",status="succeeded"} 0.0'
        in text
    )
    assert (
        'cartl_job_duration_seconds_bucket{kind="transfer",le="60.0",status="succeeded"} 1.0'
        in text
    )
    assert 'cartl_job_duration_seconds_sum{kind="transfer",status="succeeded"} 42.0' in text
