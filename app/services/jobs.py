"""Jobs: create (validated up front against the checkpoint and dataset), read, list, cancel.

Functions here only flush: the request's session commits (:func:`app.api.deps.get_session`)
before the response is sent, and only then is the job handed to the queue (a background task,
:func:`app.services.queue.enqueue_job`), so a worker never receives an id it cannot read. Status
changes are :mod:`app.services.job_states`' transitions. With an
``Idempotency-Key``, a retry of the same request returns the job the first one made, and the
same key with a different request is a 409.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Row, Select, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from app.db.base import new_id
from app.db.models import Checkpoint, DatasetRow, Job, JobStatus
from app.errors import (
    ConflictError,
    FieldError,
    NotFoundError,
    TooManyRequestsError,
    UnprocessableError,
)
from app.services import job_states
from app.services.ids import is_id
from app.services.pagination import Page, paginate
from app.services.params import jsonable_params, request_field, resolve_params
from cartl_core import ConfigError
from cartl_core.checkpoints import FORMAT
from cartl_core.compare import pretrained_k
from cartl_core.kinds import (
    CheckpointFacts,
    DatasetFacts,
    Inputs,
    find_kind,
    fit,
    get_kind,
    job_kinds,
)

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
_FILLED = frozenset({"arch", "source_classes", "k"})


@dataclass(frozen=True)
class JobRequest:
    kind: str  # a registered kind's name (the schema checked it)
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
        kind=request.kind,
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
    kind: str | None = None,
) -> Page[Job]:
    query: Select[Job] = select(Job).where(Job.owner == owner).options(*SUMMARY)
    if status is not None:
        query = query.where(Job.status == status.value)
    if kind is not None:
        query = query.where(Job.kind == kind)
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
    kind = find_kind(job.kind)
    if kind is not None and not kind.makes_weights:
        raise ConflictError(f"job {job.id} has no weights: {job.kind} jobs produce none")
    if candidate is None:
        if job.weights_key is None:
            raise ConflictError(
                f"job {job.id} has no weights yet (status {job.status}); they are there once it "
                "has succeeded"
            )
        return JobWeights(job.weights_key, job.weights_sha256, f"{job.id}.safetensors")
    if kind is None or not kind.candidates:
        raise UnprocessableError.one(
            "candidate",
            f"job {job.id} is a {job.kind} job; only {_kinds_with_candidates()} jobs have "
            "candidates (leave candidate out for its weights)",
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


def _kinds_with_candidates() -> str:
    return " and ".join(k.name for k in job_kinds() if k.candidates) or "no"


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
        request.kind,
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
    needs = {"dataset_id"}
    if get_kind(request.kind).needs_checkpoint:
        needs.add("checkpoint_id")
    for name in ("checkpoint_id", "dataset_id"):
        if getattr(request, name) is None and name in needs:
            errors.append(FieldError(name, f"required for a {request.kind} job"))
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
    params: Any,
    checkpoint: Checkpoint | None,
    dataset: DatasetRow | None,
) -> Any:
    """Check the params against the model and data they will meet (the kind's own checks, see
    :mod:`cartl_core.kinds.fit`), filling in what the checkpoint knows."""
    assert dataset is not None  # every kind needs one (checked by _inputs)
    inputs = Inputs(
        dataset=DatasetFacts(dataset.id, dataset.num_classes, _shape(dataset.input_shape)),
        checkpoint=None if checkpoint is None else _checkpoint_facts(checkpoint),
        given=frozenset(request.params),
    )
    try:
        return fit(get_kind(request.kind), params, inputs)
    except ConfigError as exc:
        raise UnprocessableError(
            [FieldError(request_field(e.field), str(e)) for e in (exc, *exc.more)]
        ) from None


def _checkpoint_facts(checkpoint: Checkpoint) -> CheckpointFacts:
    description = checkpoint.description or {}
    return CheckpointFacts(
        id=checkpoint.id,
        arch=checkpoint.arch,
        num_classes=checkpoint.num_classes,
        num_blocks=checkpoint.num_blocks,
        input_shape=_shape(checkpoint.input_shape),
        described=description.get("format") == FORMAT,
        pretrained_k=pretrained_k(description),
    )


def _shape(shape: list[Any]) -> tuple[int, int, int]:
    c, h, w = (int(v) for v in shape)
    return c, h, w
