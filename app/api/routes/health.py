"""``/healthz`` (the process answers), ``/readyz`` (database and broker reachable, artifact storage
writable with room), ``/metrics``.

None of them needs an API key: they are for load balancers, orchestrators and Prometheus. Metrics
(job counts, queue depth, request rates) are not for the world: ``/metrics`` answers only the
bearer token ``CARTL_METRICS_TOKEN`` (Prometheus: ``authorization: {credentials_file: ...}`` in
the scrape config), and is off (every request 401) while that is unset. The compose proxy does
not forward it.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr

from app.api.deps import SettingsDep
from app.api.problems import problem, problem_responses
from app.errors import UnauthorizedError
from app.schemas.health import Health, Readiness
from app.services.health import check_broker, check_database, check_storage

router = APIRouter(tags=["health"])

_metrics_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="MetricsToken",
    description="The server's `CARTL_METRICS_TOKEN` (not an API key).",
)


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: database and broker reachable, artifact storage writable",
    response_class=Response,
    responses={
        200: {"model": Readiness, "description": "All three are usable."},
        **problem_responses(503, s503="One is not; `checks` says which."),
    },
)
async def readyz(request: Request, settings: SettingsDep) -> Response:
    engine = request.app.state.engine
    timeout = settings.readiness_timeout_s
    storage = request.app.state.storage
    database, broker, store = await asyncio.gather(
        _within(timeout, lambda: check_database(engine)),
        _within(timeout, lambda: check_broker(settings.resolved_broker_url, timeout)),
        _within(timeout, lambda: check_storage(storage)),
    )
    checks = {"database": database, "broker": broker, "storage": store}
    down = {name: state for name, state in checks.items() if state != "ok"}
    if down:
        detail = "; ".join(f"{name}: {state}" for name, state in down.items())
        return problem(503, f"not ready: {detail}", extra={"checks": checks})
    body = Readiness(status="ok", checks=checks)
    return Response(body.model_dump_json(), media_type="application/json")


async def _within(timeout: float, check: Callable[[], str]) -> str:
    try:
        return await asyncio.wait_for(
            anyio.to_thread.run_sync(check, abandon_on_cancel=True), timeout + 1
        )
    except TimeoutError:
        return f"no answer within {timeout:g} s"


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **problem_responses(
            401, s401="No token, not the server's, or CARTL_METRICS_TOKEN is unset."
        ),
    },
)
def metrics(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_metrics_bearer)],
) -> Response:
    _check_metrics_token(settings.metrics_token, credentials)
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _check_metrics_token(
    token: SecretStr | None, credentials: HTTPAuthorizationCredentials | None
) -> None:
    if token is None:
        raise UnauthorizedError(
            "metrics are off: set CARTL_METRICS_TOKEN on the server and send it as "
            "'Authorization: Bearer <token>'"
        )
    sent = credentials.credentials if credentials else ""
    if not hmac.compare_digest(sent.encode(), token.get_secret_value().encode()):
        raise UnauthorizedError(
            "missing or wrong metrics token: send 'Authorization: Bearer <CARTL_METRICS_TOKEN>'"
        )
