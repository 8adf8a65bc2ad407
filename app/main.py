"""The FastAPI application: ``uvicorn app.main:app`` (or ``--factory app.main:create_app``).

:func:`create_app` builds the app without touching the environment, a database or the broker;
the lifespan does that when the server starts: settings (given, or ``CARTL_*`` via
:func:`app.settings.get_settings`), one engine per process, storage, the job metrics, and the
re-enqueue sweeper when ``run_sweeper`` is on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.guards import RequestGuardMiddleware
from app.api.instrumentation import RequestMetricsMiddleware
from app.api.limits import KeyCache, UploadSlots
from app.api.problems import install_problem_handlers, problem_responses
from app.api.routes import health, jobs, kinds, ui, uploads
from app.db.session import (
    POOL_SIZE,
    check_integrity,
    make_async_engine,
    make_engine,
    make_sessionmaker,
)
from app.schemas.common import Problem
from app.schemas.jobs import params_schema_names
from app.services.metrics import ServiceMetrics
from app.services.params import params_json_schema
from app.settings import Settings, apply_log_level, get_settings
from app.storage import keep_files_private, open_storage
from cartl_core import __version__

__all__ = ["app", "create_app"]

log = logging.getLogger(__name__)

DESCRIPTION = """\
Adversarially robust transfer learning (CARTL, ICML 2021) as a service: upload a checkpoint and
a dataset, start a job (`pretrain`, `transfer` or `audit`), poll it, download the robust weights
and their metrics.

Every `/v1` request needs `Authorization: Bearer <key>` (`cartl keys create --name NAME`). Every
error is `application/problem+json` (RFC 9457), with `errors: [{field, message}]` on a 422.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; ``settings`` default to the ``CARTL_*`` environment, read at start-up."""
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _resources(app, settings or get_settings(), metrics):
            # Everything loaded so far (torch among it: about 250k objects) lives as long as the
            # process; frozen, the collector stops walking it on every full collection, which
            # took 130 ms and was most of the API's tail latency under load.
            gc.collect()
            gc.freeze()
            yield

    app = FastAPI(
        title="CARTL",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.upload_slots = UploadSlots()
    install_problem_handlers(app)
    # Inside the metrics middleware (added after it, so outside): refusals are counted too.
    app.add_middleware(RequestGuardMiddleware)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)

    # Full paths on the routers themselves (not a nested /v1 router): request metrics label
    # by the route's path template.
    for router in (uploads.checkpoints, uploads.datasets, jobs.router, kinds.router):
        app.include_router(router, responses=problem_responses(401, 422))
    app.include_router(health.router)
    app.include_router(ui.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _resources(
    app: FastAPI, settings: Settings, metrics: ServiceMetrics
) -> AsyncIterator[None]:
    # However the server was started (`uvicorn app.main:app` too), what it creates is private.
    keep_files_private()
    if settings.database_url is None:
        # The embedded default keeps its SQLite file there.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        check_integrity(engine)
    except BaseException:
        engine.dispose()
        raise
    factory = make_sessionmaker(engine)
    app.state.settings = settings
    apply_log_level(settings)
    app.state.key_cache = KeyCache(settings.key_cache_s)
    app.state.engine = engine
    # Status reads run on the event loop: inline on SQLite, through this on Postgres.
    app.state.async_engine = make_async_engine(settings.resolved_database_url)
    app.state.status_gate = asyncio.Semaphore(POOL_SIZE)
    app.state.session_factory = factory
    app.state.storage = open_storage(settings)
    metrics.watch_jobs(factory)
    sweeper = _start_sweeper(settings, factory) if settings.run_sweeper else None
    try:
        yield
    finally:
        if sweeper is not None:
            sweeper.stop()
        metrics.unwatch_jobs()
        if app.state.async_engine is not None:
            await app.state.async_engine.dispose()
        engine.dispose()


def _start_sweeper(settings: Settings, factory: Any) -> Any:
    # Imported here: the sweeper brings Celery along, which only a running server needs.
    from app.services.recovery import Sweeper

    sweeper = Sweeper(settings, factory)
    sweeper.start()
    log.info("re-enqueue sweeper started (every %g s)", settings.sweep_interval_s)
    return sweeper


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the shapes routes refer to by name: problems and job params."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem.pop("$defs", {}))
    components["Problem"] = problem
    for kind, name in params_schema_names().items():
        components[name] = params_json_schema(kind)
    app.openapi_schema = schema
    return schema


app = create_app()
