"""``GET /v1/jobs/{id}/report``: the HTML page, its headers, and when there is none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.api.routes.jobs import REPORT_HEADERS
from app.db.base import utcnow
from app.db.session import make_engine, make_sessionmaker
from tests.api.helpers import problem
from tests.api.live import Server, live_api
from tests.api.test_jobs import Auth, add_checkpoint, add_dataset, post_job, set_job
from tests.report.test_page import FULL_AUDIT, HISTORY
from tests.services import ROOT

METRICS: dict[str, Any] = {
    "clean_accuracy": 0.95,
    "robust_accuracy": 0.11,
    "provenance": {"seed": 0, "dataset": {"name": "d.npz", "sha256": "5e" * 32, "bytes": 10}},
    "source": {"clean_accuracy": 0.9, "robust_accuracy": 0.4, "norm": "linf", "eps": 8 / 255},
    "warnings": [{"name": "robust-overfitting", "detail": "fell", "source": "training"}],
}


@pytest.fixture
def inputs(db: sessionmaker[Session]) -> tuple[str, str]:
    return add_checkpoint(db), add_dataset(db)


def test_a_finished_job_has_a_report(
    client: TestClient, alice: Auth, inputs: tuple[str, str], db: sessionmaker[Session]
) -> None:
    job = post_job(client, alice, "transfer", *inputs).json()
    assert job["links"]["report"] == f"/v1/jobs/{job['id']}/report"
    audit = {**FULL_AUDIT, "per_class": [{"class": 0, "name": "<script>x</script>"}]}
    set_job(
        db,
        job["id"],
        status="succeeded",
        started_at=utcnow(),
        finished_at=utcnow(),
        history=HISTORY,
        audit=audit,
        metrics=METRICS,
    )
    r = client.get(job["links"]["report"], headers=alice)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    for name, value in REPORT_HEADERS.items():
        assert r.headers[name] == value
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert f'filename="{job["id"]}-report.html"' in r.headers["content-disposition"]
    page = r.text
    assert job["id"] in page
    assert "5e" * 32 in page  # provenance from the stored metrics
    assert '<section id="inherited"' in page
    assert "robust-overfitting" in page
    assert "WARNING" in page
    assert "<script" not in page
    assert "&lt;script&gt;" in page


def test_a_running_job_shows_what_it_has(
    client: TestClient, alice: Auth, inputs: tuple[str, str], db: sessionmaker[Session]
) -> None:
    job_id = post_job(client, alice, "transfer", *inputs).json()["id"]
    set_job(db, job_id, status="running", started_at=utcnow(), history=HISTORY[:2])
    r = client.get(f"/v1/jobs/{job_id}/report", headers=alice)
    assert r.status_code == 200, r.text
    assert "No audit yet" in r.text
    assert '<section id="training"' in r.text


def test_no_report_before_the_job_runs(
    client: TestClient, alice: Auth, inputs: tuple[str, str]
) -> None:
    job_id = post_job(client, alice, "audit", *inputs).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/report", headers=alice)
    assert "queued" in problem(r, 409)["detail"]
    client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    r = client.get(f"/v1/jobs/{job_id}/report", headers=alice)
    assert "before it ran" in problem(r, 409)["detail"]


def test_another_owners_or_an_unknown_job_is_404(
    client: TestClient, alice: Auth, bob: Auth, inputs: tuple[str, str], db: sessionmaker[Session]
) -> None:
    job_id = post_job(client, alice, "audit", *inputs).json()["id"]
    set_job(db, job_id, status="succeeded", started_at=utcnow(), audit=FULL_AUDIT)
    assert client.get(f"/v1/jobs/{job_id}/report", headers=alice).status_code == 200
    problem(client.get(f"/v1/jobs/{job_id}/report", headers=bob), 404)
    problem(client.get("/v1/jobs/job_019abc3f2e11c0ffee1234/report", headers=alice), 404)
    assert client.get(f"/v1/jobs/{job_id}/report").status_code == 401


def test_the_report_is_in_the_openapi_description(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v1/jobs/{job_id}/report"]["get"]
    assert "text/html" in op["responses"]["200"]["content"]
    assert {"404", "409"} <= set(op["responses"])
    assert "Content-Security-Policy" in op["description"]


def _plot(srv: Server, out: Path, *ids: str) -> subprocess.CompletedProcess[str]:
    """``cartl jobs plot IDS -o OUT`` as a user runs it against ``srv``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env.update(CARTL_SERVER=srv.url, CARTL_API_KEY=srv.key)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "plot", *ids, "-o", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_jobs_plot_draws_the_stored_history_and_audit(tmp_path: Path) -> None:
    """One job: its curves above its audit; two: their clean and robust accuracy side by side."""
    (tmp_path / "srv").mkdir()
    with live_api(tmp_path / "srv") as srv:
        engine = make_engine(srv.database_url)
        db = make_sessionmaker(engine)
        checkpoint, dataset = add_checkpoint(db), add_dataset(db)
        body = {"checkpoint_id": checkpoint, "dataset_id": dataset, "params": {}}
        ids = [
            httpx.post(
                f"{srv.url}/v1/jobs", json={"kind": kind, **body}, headers=srv.headers()
            ).json()["id"]
            for kind in ("transfer", "audit")
        ]
        metrics = {**METRICS, "eps": 8 / 255, "norm": "linf", "ensemble": "standard"}
        for job_id, history in zip(ids, (HISTORY, []), strict=True):
            set_job(db, job_id, status="succeeded", started_at=utcnow(), finished_at=utcnow(),
                    history=history, audit=FULL_AUDIT, metrics=metrics)  # fmt: skip
        engine.dispose()
        for n, args in enumerate(([ids[0]], [ids[1]], ids)):
            out = tmp_path / f"plot{n}.png"
            done = _plot(srv, out, *args)
            assert done.returncode == 0, done.stderr
            assert f"wrote {out}" in done.stderr
            assert out.read_bytes().startswith(b"\x89PNG")
