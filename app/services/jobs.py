"""Jobs: create (validated up front against the checkpoint and dataset), read, list, cancel.

Functions here only flush: the request's session commits (:func:`app.api.deps.get_session`)
before the response is sent, and only then is the job handed to the queue (a background task,
:func:`app.services.queue.enqueue_job`), so a worker never receives an id it cannot read. Status
changes are :mod:`app.services.job_states`' transitions. With an
``Idempotency-Key``, a retry of the same request returns the job the first one made, and the
same key with a different request is a 409.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Row, Select, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from app.db.base import new_id
from app.db.models import Checkpoint, DatasetRow, Job, JobKind, JobStatus
from app.errors import (
    ConflictError,
    FieldError,
    NotFoundError,
    TooManyRequestsError,
    UnprocessableError,
)
from app.services import job_states
from app.services.ids import is_id
from app.services.models import model_info
from app.services.pagination import Page, paginate
from app.services.params import jsonable_params, resolve_params
from cartl_core import CartlError
from cartl_core.checkpoints import FORMAT
from cartl_core.jobs import AuditParams, CompareParams, Params, PretrainParams, TransferParams

__all__ = [
    "JobRequest",
    "JobWeights",
    "cancel_job",
    "candidate_key",
    "candidates_prefix",
    "create_job",
    "found_job",
    "get_job",
    "job_weights",
    "list_jobs",
    "status_params",
]

M = TypeVar("M", Checkpoint, DatasetRow)

# Params the service fills in from the checkpoint when the request leaves them out.
_FILLED = frozenset({"arch", "source_classes"})
_NEEDS = {
    JobKind.pretrain: {"dataset_id"},
    JobKind.transfer: {"checkpoint_id", "dataset_id"},
    JobKind.audit: {"checkpoint_id", "dataset_id"},
    JobKind.compare: {"checkpoint_id", "dataset_id"},
}


@dataclass(frozen=True)
class JobRequest:
    kind: JobKind
    checkpoint_id: str | None = None
    dataset_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def create_job(
    session: Session,
    owner: str,
    request: JobRequest,
    idempotency_key: str | None = None,
    *,
    max_queued: int | None = None,
) -> tuple[Job, bool]:
    """The new job (flushed; the caller commits), and whether this call made it (False: an
    idempotent replay). :class:`TooManyRequestsError` when ``owner`` already has ``max_queued``
    jobs waiting."""
    if idempotency_key is not None:
        existing = _by_key(session, owner, idempotency_key)
        if existing is not None:
            return _replay(existing, request), False
    params = resolve_params(request.kind, request.params)
    checkpoint, dataset = _inputs(session, owner, request)
    params = _fit(request, params, checkpoint, dataset)
    if max_queued is not None:
        _check_queue_room(session, owner, max_queued)
    job = Job(
        id=new_id("job"),
        owner=owner,
        kind=request.kind.value,
        status=JobStatus.queued.value,
        checkpoint_id=request.checkpoint_id,
        dataset_id=request.dataset_id,
        params=jsonable_params(params),
        idempotency_key=idempotency_key,
        progress={},
        history=[],
    )
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        # Two requests with one key raced; the other one's job is the answer (the unique index
        # made this insert wait for it to commit).
        existing = _by_key(session, owner, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _replay(existing, request), False
    return job, True


#: What a refused submission tells the client to wait: about one job's turn.
QUEUE_FULL_RETRY_S = 60


def _check_queue_room(session: Session, owner: str, max_queued: int) -> None:
    """Refuse a job past ``owner``'s waiting jobs limit (429 with Retry-After)."""
    if session.get_bind().dialect.name == "postgresql":
        # Two submissions of one owner at once must not both see room for one: the second waits
        # here for the first's commit. (SQLite runs one writer at a time already.)
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(owner))))
    waiting = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.owner == owner, Job.status == JobStatus.queued.value)
    )
    if waiting is not None and waiting >= max_queued:
        raise TooManyRequestsError(
            f"{waiting} of your jobs are waiting, the most one owner may have queued "
            f"(CARTL_MAX_QUEUED_PER_OWNER={max_queued}); submit again when some have started, "
            "or cancel some",
            QUEUE_FULL_RETRY_S,
        )


#: What a job's status (``JobOut``) never shows: the per-epoch history and the full audit, the
#: two columns that grow with the run. Loading them for every poll was most of a poll's cost.
SUMMARY = (defer(Job.history), defer(Job.audit))


#: The columns of a job's status (``JobOut``), read without the ORM for the endpoint clients poll.
STATUS_COLUMNS = tuple(c for c in Job.__table__.c if c.name not in ("history", "audit", "owner"))


#: Built once: a statement object memoises its cache key, so each poll skips rebuilding and
#: re-keying it (with the ORM's session layer, that was half of a poll's time).
STATUS_QUERY = select(*STATUS_COLUMNS).where(
    Job.owner == bindparam("owner"), Job.id == bindparam("job_id")
)


def status_params(owner: str, job_id: str) -> dict[str, str]:
    """The parameters of :data:`STATUS_QUERY`; :class:`NotFoundError` for a value that cannot
    be a job id (it is never sent to the database)."""
    if not is_id(job_id):
        raise NotFoundError(f"no job with id {job_id!r}")
    return {"owner": owner, "job_id": job_id}


def found_job(row: Row[Any] | None, job_id: str) -> Row[Any]:
    if row is None:
        raise NotFoundError(f"no job with id {job_id!r}")
    return row


def get_job(session: Session, owner: str, job_id: str) -> Job:
    """``owner``'s job, every column."""
    job = None
    if is_id(job_id):
        query = select(Job).where(Job.owner == owner, Job.id == job_id)
        job = session.scalar(query)
    if job is None:
        raise NotFoundError(f"no job with id {job_id!r}")
    return job


def list_jobs(
    session: Session,
    owner: str,
    *,
    limit: int,
    cursor: str | None,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
) -> Page[Job]:
    query: Select[Job] = select(Job).where(Job.owner == owner).options(*SUMMARY)
    if status is not None:
        query = query.where(Job.status == status.value)
    if kind is not None:
        query = query.where(Job.kind == kind.value)
    return paginate(session, query, Job.id, limit=limit, cursor=cursor)


def cancel_job(session: Session, owner: str, job_id: str) -> Job:
    """A queued job ends ``cancelled`` now; a running one is asked to stop at its next batch."""
    job = get_job(session, owner, job_id)
    outcome = job_states.cancel(session, job_id)
    session.refresh(job)
    if outcome is None:
        raise ConflictError(f"job {job_id} has already finished ({job.status}); nothing to cancel")
    return job


@dataclass(frozen=True)
class JobWeights:
    """A weights file of a job: its storage key, sha256 (when recorded) and download name."""

    key: str
    sha256: str | None
    filename: str


def candidates_prefix(job_id: str) -> str:
    """The folder of a compare job's candidate weights (the worker writes them there)."""
    return f"jobs/{job_id}/candidates"


def candidate_key(job_id: str, name: str) -> str:
    return f"{candidates_prefix(job_id)}/{name}.safetensors"


def job_weights(job: Job, candidate: str | None = None) -> JobWeights:
    """The job's weights: its result, or for a compare job with ``candidate``, that candidate's.

    Only names in the finished job's candidate table are looked up, so a name never reaches
    storage unchecked.
    """
    if candidate is None:
        if job.weights_key is None:
            raise ConflictError(
                f"job {job.id} has no weights yet (status {job.status}); they are there once it "
                "has succeeded"
            )
        return JobWeights(job.weights_key, job.weights_sha256, f"{job.id}.safetensors")
    if job.kind != JobKind.compare.value:
        raise UnprocessableError.one(
            "candidate",
            f"job {job.id} is a {job.kind} job; only compare jobs have candidates (leave "
            "candidate out for its weights)",
        )
    if job.status != JobStatus.succeeded.value:
        raise ConflictError(
            f"job {job.id} has no candidate weights yet (status {job.status}); they are there "
            "once it has succeeded"
        )
    rows = {r["name"]: r for r in (job.metrics or {}).get("candidates") or []}
    if candidate not in rows:
        raise NotFoundError(
            f"job {job.id} has no candidate {candidate!r}; its candidates are "
            f"{', '.join(rows) or 'none'}",
            extra={"candidates": list(rows)},
        )
    return JobWeights(
        candidate_key(job.id, candidate),
        rows[candidate].get("sha256"),
        f"{job.id}-{candidate}.safetensors",
    )


def _by_key(session: Session, owner: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def _replay(job: Job, request: JobRequest) -> Job:
    if not _same_request(job, request):
        raise ConflictError(
            f"the Idempotency-Key was already used for job {job.id} with a different request; "
            "use a new key for a new job"
        )
    return job


def _same_request(job: Job, request: JobRequest) -> bool:
    if (job.kind, job.checkpoint_id, job.dataset_id) != (
        request.kind.value,
        request.checkpoint_id,
        request.dataset_id,
    ):
        return False
    try:
        resolved = jsonable_params(resolve_params(request.kind, request.params))
    except UnprocessableError:
        return False
    filled = _FILLED - set(request.params)
    return all(job.params.get(k) == v for k, v in resolved.items() if k not in filled)


def _inputs(
    session: Session, owner: str, request: JobRequest
) -> tuple[Checkpoint | None, DatasetRow | None]:
    """The request's checkpoint and dataset, locked against deletion until the commit."""
    errors: list[FieldError] = []
    needs = _NEEDS[request.kind]
    for name in ("checkpoint_id", "dataset_id"):
        if getattr(request, name) is None and name in needs:
            errors.append(FieldError(name, f"required for a {request.kind.value} job"))
    checkpoint = dataset = None
    if request.checkpoint_id is not None:
        checkpoint = session.scalar(_owned(Checkpoint, owner, request.checkpoint_id))
        if checkpoint is None:
            errors.append(
                FieldError("checkpoint_id", f"no checkpoint with id {request.checkpoint_id!r}")
            )
    if request.dataset_id is not None:
        dataset = session.scalar(_owned(DatasetRow, owner, request.dataset_id))
        if dataset is None:
            errors.append(FieldError("dataset_id", f"no dataset with id {request.dataset_id!r}"))
    if errors:
        raise UnprocessableError(errors)
    return checkpoint, dataset


def _owned(model: type[M], owner: str, object_id: str) -> Select[M]:
    # FOR SHARE: a concurrent delete waits for this transaction, then sees the job and refuses.
    return (
        select(model).where(model.owner == owner, model.id == object_id).with_for_update(read=True)
    )


def _fit(
    request: JobRequest,
    params: Params,
    checkpoint: Checkpoint | None,
    dataset: DatasetRow | None,
) -> Params:
    """Check the params against the model and data they will meet, filling in what the
    checkpoint knows (the architecture of plain weights)."""
    assert dataset is not None  # every kind needs one (checked by _inputs)
    errors: list[FieldError] = []
    given = set(request.params)
    channels, size = int(dataset.input_shape[0]), int(dataset.input_shape[1])
    blocks: int | None = None
    if checkpoint is not None:
        params = _fill_from_checkpoint(params, given, checkpoint, errors)
        blocks = checkpoint.num_blocks
        if int(checkpoint.input_shape[0]) != channels:
            errors.append(
                FieldError(
                    "dataset_id",
                    f"checkpoint {checkpoint.id} takes {checkpoint.input_shape[0]}-channel images "
                    f"but dataset {dataset.id} has {channels} channels",
                )
            )
        # A transfer (and each candidate of a compare) replaces the classifier.
        replaces_head = isinstance(params, TransferParams | CompareParams)
        if not replaces_head and dataset.num_classes > checkpoint.num_classes:
            errors.append(
                FieldError(
                    "dataset_id",
                    f"dataset {dataset.id} has {dataset.num_classes} classes but checkpoint "
                    f"{checkpoint.id} classifies {checkpoint.num_classes}",
                )
            )
    elif isinstance(params, PretrainParams):
        try:
            blocks = model_info(params.arch, max(dataset.num_classes, 2), channels, size).num_blocks
        except CartlError as exc:
            errors.append(FieldError("params.arch", str(exc)))
    if (
        isinstance(params, PretrainParams | TransferParams)
        and blocks is not None
        and not 1 <= params.k <= blocks
    ):
        errors.append(
            FieldError("params.k", f"must be between 1 and {blocks} (the model's block count)")
        )
    if isinstance(params, CompareParams) and blocks is not None and params.k is not None:
        bad = [k for k in params.k if not 1 <= k <= blocks]
        if bad:
            errors.append(
                FieldError(
                    "params.k",
                    f"k={bad[0]} is out of range: every k must be between 1 and {blocks} (the "
                    "model's block count)",
                )
            )
    if isinstance(params, TransferParams | CompareParams) and checkpoint is not None:
        errors += _residual_scale_errors(params, checkpoint)
    if isinstance(params, TransferParams | AuditParams | CompareParams) and checkpoint is not None:
        errors += _image_size_errors(params, checkpoint, dataset)
    if errors:
        raise UnprocessableError(errors)
    return params


def _image_size_errors(
    params: TransferParams | AuditParams | CompareParams,
    checkpoint: Checkpoint,
    dataset: DatasetRow,
) -> list[FieldError]:
    # Plain weights are rebuilt at the data's size; a CARTL checkpoint keeps the size it was
    # trained at, and images of another size would run but be described at the wrong one.
    if params.resize or checkpoint.description.get("format") != FORMAT:
        return []
    size = int(checkpoint.input_shape[1])
    height, width = int(dataset.input_shape[1]), int(dataset.input_shape[2])
    if (height, width) == (size, size):
        return []
    return [
        FieldError(
            "params.resize",
            f"dataset {dataset.id} has {height}x{width} images but checkpoint {checkpoint.id} "
            f"takes {size}x{size}; set resize to true to resize them (bilinear, antialiased)",
        )
    ]


def _fill_from_checkpoint(
    params: Params, given: set[str], checkpoint: Checkpoint, errors: list[FieldError]
) -> Params:
    if "arch" in given and params.arch is not None and params.arch != checkpoint.arch:
        errors.append(
            FieldError(
                "params.arch",
                f"checkpoint {checkpoint.id} is a {checkpoint.arch}; leave arch out or set it "
                "to that",
            )
        )
        return params
    plain = checkpoint.description.get("format") != FORMAT
    if isinstance(params, PretrainParams):
        return dataclasses.replace(params, arch=checkpoint.arch)
    if isinstance(params, TransferParams | CompareParams) and plain:
        if params.source_classes not in (None, checkpoint.num_classes):
            errors.append(
                FieldError(
                    "params.source_classes",
                    f"checkpoint {checkpoint.id} has {checkpoint.num_classes} classes",
                )
            )
            return params
        return dataclasses.replace(
            params, arch=checkpoint.arch, source_classes=checkpoint.num_classes
        )
    if isinstance(params, AuditParams) and plain:
        return dataclasses.replace(params, arch=checkpoint.arch)
    return params


def _residual_scale_errors(
    params: TransferParams | CompareParams, checkpoint: Checkpoint
) -> list[FieldError]:
    if isinstance(params, CompareParams):
        # neft and cartl average the residuals of the blocks they tune.
        field = "params.methods"
        if not {"neft", "cartl"} & set(params.methods):
            return []
    else:
        field = "params.residual_scale"
        if params.config().resolved_residual_scale() == 1.0:
            return []
    shape = checkpoint.input_shape
    try:
        info = model_info(checkpoint.arch, checkpoint.num_classes, int(shape[0]), int(shape[1]))
    except CartlError:
        return []
    if info.residual_scalable:
        return []
    fix = "leave neft and cartl out" if field == "params.methods" else "set residual_scale to 1"
    return [
        FieldError(field, f"{checkpoint.arch} has residual sums that cannot be rescaled; {fix}")
    ]
