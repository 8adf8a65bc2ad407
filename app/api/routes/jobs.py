"""``/v1/jobs``: create, list, get, metrics, report, weights, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, StreamingResponse
from sqlalchemy import Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.deps import (
    CursorQuery,
    EnqueueDep,
    LimitQuery,
    OwnerDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StorageDep,
    require_json_body,
)
from app.api.problems import problem_responses
from app.errors import ConflictError, StoredArtifactError
from app.schemas.common import Page
from app.schemas.jobs import JobCreate, JobMetricsOut, JobOut, create_examples
from app.services import jobs as service
from app.services.ids import KEY_PATTERN
from app.services.reports import job_report
from app.status import JobStatus
from app.storage import Storage, sha256_file

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=KEY_PATTERN,
        description="Any unique string (visible ASCII, at most 200 characters): a retry with "
        "the same key and body returns the job the first request made (200) instead of making "
        "another; the same key with another body is a 409.",
    ),
]


@router.post(
    "",
    status_code=202,
    summary="Start a job",
    description="Validates `params` (names, types, ranges) and checks them against the "
    "checkpoint and dataset (k within the model's block count, matching input channels, the "
    "checkpoint's image size unless `params.resize`, ...), "
    "records the job as `queued` and hands it to the workers. Unknown or another owner's "
    "`checkpoint_id` / `dataset_id` are a 422 on that field. Poll `links.self`.",
    responses={
        200: {"model": JobOut, "description": "An idempotent replay: the job made earlier."},
        **problem_responses(
            400,
            409,
            413,
            415,
            422,
            429,
            s400="The body could not be read as text (send UTF-8 JSON).",
            s409="The Idempotency-Key was used before with a different request.",
            s413="The body is larger than CARTL_MAX_JSON_BYTES.",
            s415="The body is not JSON.",
            s429="Too many of your jobs are waiting (CARTL_MAX_QUEUED_PER_OWNER); "
            "Retry-After says when to try again.",
        ),
    },
)
def create_job(
    body: Annotated[JobCreate, Body(openapi_examples=create_examples())],
    response: Response,
    owner: OwnerDep,
    session: SessionDep,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
    background: BackgroundTasks,
    _json: Annotated[None, Depends(require_json_body)],
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    request = service.JobRequest(body.kind, body.checkpoint_id, body.dataset_id, body.params)
    job, created = service.create_job(
        session, owner, request, idempotency_key, max_queued=settings.max_queued_per_owner
    )
    if created:
        # The row is committed: a worker given this id will find it. The send happens after
        # the response, so a broker that is down (its client retries for seconds) does not
        # hold the request; the job then stays queued and the sweeper sends it later.
        background.add_task(enqueue, factory, settings, job.id)
    else:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.from_job(job)


@router.get("", summary="List jobs, newest first")
def list_jobs(
    owner: OwnerDep,
    session: SessionDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    kind: Annotated[str | None, Query(max_length=20, description="Only jobs of this kind.")] = None,
) -> Page[JobOut]:
    page = service.list_jobs(session, owner, limit=limit, cursor=cursor, status=status, kind=kind)
    return Page[JobOut](
        items=[JobOut.from_job(j) for j in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/{job_id}",
    summary="Get a job's status",
    response_model=JobOut,
    responses=problem_responses(404),
)
async def get_job(job_id: str, owner: OwnerDep, request: Request) -> Response:
    # The endpoint clients poll: one prepared statement on a plain connection (no ORM session),
    # and the model serialised once (a returned Response is not validated a second time).
    params = service.status_params(owner, job_id)
    engine: AsyncEngine | None = request.app.state.async_engine
    if engine is not None:
        row = await _read_status_async(engine, request.app.state.status_gate, params)
    else:
        # SQLite (the only other database this service runs on) in WAL mode: a read is ~0.1 ms
        # of local work that never waits for a writer, less than the trip to the thread pool
        # would cost (measured: twice the requests/s).
        with request.app.state.engine.connect() as conn:
            row = conn.execute(service.STATUS_QUERY, params).one_or_none()
    job = JobOut.from_job(service.found_job(row, job_id))
    return Response(job.model_dump_json(), media_type="application/json")


async def _read_status_async(
    engine: AsyncEngine, gate: asyncio.Semaphore, params: dict[str, str]
) -> Row[Any] | None:
    """Postgres: awaited on the event loop (psycopg's async mode), no thread hop.

    The gate queues requests first come, first served (the pool's own queue lets a newcomer
    take a connection a waiter was woken for, which starved some polls for hundreds of ms).
    Connections are not pinged before use (a round trip per poll); after a database restart
    the first read on a dead connection fails, SQLAlchemy drops the pool's old connections,
    and the read is tried once more on a fresh one.
    """
    for attempt in (1, 2):
        try:
            async with gate, engine.connect() as conn:
                return (await conn.execute(service.STATUS_QUERY, params)).one_or_none()
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


@router.get(
    "/{job_id}/metrics",
    summary="Per-epoch history and the audit report",
    description="The history grows while the job runs; the audit report is there once the "
    "job's audit has finished. A compare job adds its candidate table (`candidates`: method, k, "
    "beta, BN preset, validation and test clean and robust accuracy, a weights link each), the "
    "`chosen` candidate's name and the cost `estimate`; its history is the chosen one's.",
    responses=problem_responses(404, 409, s409="The job has not started yet."),
)
def get_job_metrics(job_id: str, owner: OwnerDep, session: SessionDep) -> JobMetricsOut:
    job = service.get_job(session, owner, job_id)
    if job.status == JobStatus.queued:
        raise ConflictError(f"job {job_id} is queued; its metrics appear once it runs")
    metrics = job.metrics or {}
    chosen = metrics.get("chosen")
    return JobMetricsOut(
        history=job.history or [],
        audit=job.audit,
        chosen=chosen.get("name") if isinstance(chosen, dict) else None,
        candidates=metrics.get("candidates"),
        estimate=metrics.get("estimate") or (job.progress or {}).get("estimate"),
        selection=metrics.get("selection"),
    )


#: The report is built from user data (class names, file names): no scripts, nothing fetched.
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "X-Content-Type-Options": "nosniff",
}


@router.get(
    "/{job_id}/report",
    summary="A readable HTML report",
    description="One self-contained HTML page (inline SVG charts, no scripts, nothing loaded "
    "from the network) for a person to read, save or print: clean and robust accuracy per "
    "attack, robust accuracy against eps, accuracy per class, the sanity checks with what a "
    "failure means and a WARNING for each failure, for a transfer the source's robustness next "
    "to the target's, the training curves with the robust trace, and provenance (cartl "
    "version and commit, seed, sha256 of the checkpoint and dataset files, attack settings, "
    "device, wall time). A running job's page shows what there is so far. Served with a "
    "`Content-Security-Policy` that allows only inline styles and `data:` images. "
    "`cartl audit --report`, `cartl pretrain --report` and `cartl transfer --report` write "
    "the same page.",
    response_class=HTMLResponse,
    responses={
        200: {
            "description": "The report page.",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
        **problem_responses(
            404, 409, s409="The job has not run yet (queued, or cancelled before it started)."
        ),
    },
)
def get_job_report(job_id: str, owner: OwnerDep, session: SessionDep) -> HTMLResponse:
    page = job_report(service.get_job(session, owner, job_id))
    headers = {**REPORT_HEADERS, "Content-Disposition": f'inline; filename="{job_id}-report.html"'}
    return HTMLResponse(page, headers=headers)


@router.get(
    "/{job_id}/weights",
    summary="Download the trained weights",
    description="The self-describing safetensors file (architecture, classes, training "
    "settings and metrics in its header). `ETag` and `X-Checksum-SHA256` carry its sha256. "
    "For a compare job, the chosen candidate; `?candidate=NAME` gives any candidate's (the "
    "names are in `/metrics`). With a bucket as the storage and "
    "`CARTL_STORAGE_DOWNLOADS=redirect`, a 307 to a presigned URL of the bucket, with the same "
    "checksum headers: follow it without the API key, and check the bytes against them.",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The safetensors file.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        307: {
            "description": "A presigned URL of the bucket holding the file (`Location`); "
            "`X-Checksum-SHA256` is the file's sha256."
        },
        **problem_responses(
            404,
            409,
            422,
            500,
            s404="No such job, or a compare job has no candidate of that name (the problem "
            "lists the names).",
            s409="The job has no weights (an audit, or not finished yet).",
            s500="The stored weights are missing or fail their recorded sha256.",
            s422="`candidate` was given for a job that is not a compare.",
        ),
    },
)
def get_job_weights(
    job_id: str,
    owner: OwnerDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    candidate: Annotated[
        str | None,
        Query(
            max_length=200,
            description="A compare job: this candidate's weights instead of the chosen one's.",
        ),
    ] = None,
) -> Response:
    job = service.get_job(session, owner, job_id)
    weights = service.job_weights(job, candidate)
    what = f"job {job_id}'s weights" + (f" (candidate {candidate})" if candidate else "")
    info = storage.info(weights.key)
    if info is None:
        if job.status == JobStatus.succeeded.value:
            log.error("%s are missing from the artifact storage (key %s)", what, weights.key)
            raise StoredArtifactError(
                f"{what} are missing from the artifact storage although the job succeeded; "
                "the operator has been told (server log)"
            )
        raise ConflictError(
            f"job {job_id} has no weights yet (status {job.status}); they are there once it "
            "has succeeded"
        )
    headers = {}
    if weights.sha256:
        # Every download is checked against the sha256 recorded when the file was written:
        # bytes damaged at rest are refused rather than served under the original checksum. A
        # folder's file is hashed; a bucket's object carries the sha256 it was written with
        # (objects are immutable: other bytes are another write, with other metadata), and the
        # client checks the bytes it receives against the header.
        intact = (
            sha256_file(storage.path(weights.key)) == weights.sha256
            if storage.is_local
            else info.sha256 == weights.sha256
        )
        if not intact:
            log.error("%s fail their recorded sha256 (key %s)", what, weights.key)
            raise StoredArtifactError(
                f"{what} are damaged in the artifact storage (their sha256 no longer matches "
                "the one recorded when they were written); the operator has been told (server "
                "log)"
            )
        headers = {"ETag": f'"{weights.sha256}"', "X-Checksum-SHA256": weights.sha256}
    if storage.is_local:
        return FileResponse(
            storage.path(weights.key),
            media_type="application/octet-stream",
            filename=weights.filename,
            headers=headers,
        )
    if settings.storage_downloads == "redirect":
        url = storage.download_url(weights.key, weights.filename, settings.presign_expires_s)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers=headers)
    return StreamingResponse(
        _checked(storage, weights.key, weights.sha256),
        media_type="application/octet-stream",
        headers={
            **headers,
            "Content-Length": str(info.size),
            "Content-Disposition": f'attachment; filename="{weights.filename}"',
        },
    )


def _checked(storage: Storage, key: str, sha256: str | None) -> Iterator[bytes]:
    """The object's bytes, hashed on the way: bytes that turn out not to be the recorded ones
    end the response short of its Content-Length, so no client takes them for whole."""
    digest = hashlib.sha256()
    for chunk in storage.read_chunks(key):
        digest.update(chunk)
        yield chunk
    if sha256 is not None and digest.hexdigest() != sha256:
        log.error("%s failed its recorded sha256 while it was served", key)
        raise StoredArtifactError(f"{key} failed its recorded sha256 while it was served")


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a job",
    description="A queued job is cancelled at once. A running job gets `cancel_requested`: "
    "its worker sees it within about a second (`CARTL_CANCEL_POLL_S`), stops at the next "
    "batch or audit step, and the job ends `cancelled`.",
    responses=problem_responses(404, 409, s409="The job has already finished."),
)
def cancel_job(job_id: str, owner: OwnerDep, session: SessionDep) -> JobOut:
    return JobOut.from_job(service.cancel_job(session, owner, job_id))
