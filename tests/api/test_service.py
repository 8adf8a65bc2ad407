"""Health, readiness, Prometheus metrics, the error shape, and the OpenAPI document."""

from __future__ import annotations

from typing import Any, cast

from fastapi import FastAPI
from fastapi.testclient import TestClient

from app import errors as app_errors
from app.api.problems import PROBLEM_TYPES, problem_type
from app.settings import LOGGERS
from cartl_core import errors as core_errors
from tests.api.conftest import ClientFactory
from tests.api.helpers import METRICS, fields, problem

Auth = dict[str, str]


def test_healthz_needs_no_key(client: TestClient) -> None:
    r = client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_readyz_when_everything_is_up(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    checks = {"database": "ok", "broker": "ok", "storage": "ok"}
    assert r.json() == {"status": "ok", "checks": checks}


def test_readyz_names_what_is_down(make_client: ClientFactory) -> None:
    client = make_client(broker_url="redis://127.0.0.1:1/0", readiness_timeout_s=2.0)
    body = problem(client.get("/readyz"), 503)
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("unreachable")
    assert "broker" in body["detail"]
    assert body["checks"]["storage"] == "ok"


def test_metrics_are_prometheus_text(client: TestClient, alice: Auth) -> None:
    client.get("/v1/jobs", headers=alice)
    client.get("/v1/jobs/job_nope", headers=alice)
    r = client.get("/metrics", headers=METRICS)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        assert f'cartl_jobs{{status="{status}"}} 0.0' in text
    assert "cartl_queue_depth 0.0" in text
    assert "cartl_database_up 1.0" in text
    assert "# TYPE cartl_job_duration_seconds histogram" in text
    assert (
        'cartl_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 1.0' in text
    )
    assert 'cartl_http_request_duration_seconds_count{method="GET",route="/v1/jobs"} 1.0' in text


def test_metrics_answer_only_the_metrics_token(
    client: TestClient, make_client: ClientFactory, alice: Auth
) -> None:
    """Job counts and queue depth are not for the world, nor for every API key."""
    for headers in ({}, alice, {"Authorization": "Bearer metrics-token-for-test"}):
        r = client.get("/metrics", headers=headers)
        assert "CARTL_METRICS_TOKEN" in problem(r, 401)["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
        assert "cartl_" not in r.text
    off = make_client(metrics_token=None)
    assert "metrics are off" in problem(off.get("/metrics", headers=METRICS), 401)["detail"]


def test_errors_share_one_shape(client: TestClient, alice: Auth) -> None:
    problem(client.get("/v1/nowhere", headers=alice), 404)
    problem(client.put("/v1/jobs", headers=alice), 405)
    r = client.post(
        "/v1/jobs",
        content=b'{"kind": ',
        headers={**alice, "Content-Type": "application/json"},
    )
    assert problem(r, 422)["errors"]
    r = client.get("/v1/jobs", params={"limit": "many"}, headers=alice)
    assert "limit" in fields(problem(r, 422))


def test_unexpected_errors_are_500_without_details(make_client: ClientFactory) -> None:
    client = make_client(raise_server_exceptions=False)
    app = cast(FastAPI, client.app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals at /srv/cartl/app.py")

    r = client.get("/boom")
    body = problem(r, 500)
    assert "secret" not in r.text
    assert body["type"] == "urn:cartl:problem:internal-error"


def test_every_error_class_has_its_problem_type() -> None:
    for name in app_errors.__all__:
        error = getattr(app_errors, name)
        if isinstance(error, type) and issubclass(error, Exception):
            assert error in PROBLEM_TYPES, name
    for name in core_errors.__all__:
        assert problem_type(getattr(core_errors, name)).status < 500, name


def test_a_core_error_reaching_a_route_says_what_to_fix(client: TestClient) -> None:
    app = cast(FastAPI, client.app)

    @app.get("/core-error")
    def core_error() -> None:
        raise core_errors.ArchitectureError("unknown architecture 'x'")

    body = problem(client.get("/core-error"), 422)
    assert (body["detail"], body["error_type"]) == ("unknown architecture 'x'", "ArchitectureError")


def test_openapi_documents_everything(client: TestClient) -> None:
    schema: dict[str, Any] = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/checkpoints",
        "/v1/checkpoints/{checkpoint_id}",
        "/v1/datasets",
        "/v1/datasets/{dataset_id}",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/metrics",
        "/v1/jobs/{job_id}/weights",
        "/v1/jobs/{job_id}/cancel",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths
    components = schema["components"]["schemas"]
    create = paths["/v1/jobs"]["post"]
    assert set(create["requestBody"]["content"]["application/json"]["examples"]) == {
        "pretrain",
        "transfer",
        "audit",
        "compare",
    }
    assert {"200", "202", "401", "409", "422"} <= set(create["responses"])
    problem_422 = create["responses"]["422"]["content"]["application/problem+json"]
    assert problem_422["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert problem_422["example"]["errors"]
    upload = paths["/v1/checkpoints"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["properties"]["file"]["format"] == "binary"
    assert "413" in paths["/v1/datasets"]["post"]["responses"]
    for name in ("Problem", "JobOut", "CheckpointOut", "DatasetOut", "JobMetricsOut"):
        assert components[name]["examples"], name
    for name in ("PretrainParams", "TransferParams", "AuditParams", "CompareParams"):
        assert components[name]["properties"]["seed"]["default"] == 0
    # Every route's 422 is a problem; FastAPI's own validation shape is never sent.
    assert "HTTPValidationError" not in str(schema)
    # /v1 routes declare the bearer scheme; health routes need none.
    assert create["security"] == [{"HTTPBearer": []}]
    assert "security" not in paths["/healthz"]["get"]
    assert paths["/metrics"]["get"]["security"] == [{"MetricsToken": []}]


def test_the_api_applies_cartl_log_level(make_client: ClientFactory) -> None:
    import logging

    try:
        make_client(log_level="WARNING")
        assert all(logging.getLogger(n).level == logging.WARNING for n in LOGGERS)
        make_client(log_level="DEBUG")
        assert all(logging.getLogger(n).level == logging.DEBUG for n in LOGGERS)
    finally:
        for name in LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
