"""Job requests and responses."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.schemas.common import UtcDateTime
from app.services.ids import ID_PATTERN
from app.status import JobStatus
from cartl_core.kinds import find_kind, job_kinds

__all__ = [
    "JobCreate",
    "JobKindOut",
    "JobLinks",
    "JobMetricsOut",
    "JobOut",
    "ProgressOut",
    "create_examples",
    "params_schema_names",
]

log = logging.getLogger(__name__)


def params_schema_names() -> dict[str, str]:
    """Each registered kind's params schema, by kind: the dataclass's name (``TransferParams``),
    under ``components/schemas`` in the OpenAPI document."""
    return {kind.name: kind.params.__name__ for kind in job_kinds()}


def create_examples() -> dict[str, dict[str, Any]]:
    """One example request per registered kind that gives one, for the API's documentation."""
    examples: dict[str, dict[str, Any]] = {}
    for kind in job_kinds():
        if not kind.example:
            continue
        value: dict[str, Any] = {"kind": kind.name}
        if kind.checkpoint is not None and kind.checkpoint != "init":
            value["checkpoint_id"] = "ckpt_019abc3f2e10a1b2c3d4e5"
        value["dataset_id"] = "ds_019abc3f2e10f6e5d4c3b2"
        value["params"] = dict(kind.example.get("params", {}))
        examples[kind.name] = {"summary": kind.example.get("summary", kind.summary), "value": value}
    return examples


def _kind_schema(schema: dict[str, Any]) -> None:
    """The registered kinds when the schema is built (a kind may register after import)."""
    schema["enum"] = [kind.name for kind in job_kinds()]


def _params_schema(schema: dict[str, Any]) -> None:
    names = params_schema_names().values()
    schema["anyOf"] = [{"$ref": f"#/components/schemas/{n}"} for n in names]


class JobKindOut(BaseModel):
    """A registered job kind (``cartl_core.kinds``)."""

    name: str = Field(description="The `kind` of a job request.")
    summary: str
    checkpoint: Literal["model", "source", "init"] | None = Field(
        description="What its checkpoint is: the model it examines, the source it fine-tunes "
        "(both required), optional initial weights, or null (it takes none)."
    )
    makes_weights: bool = Field(description="Whether a job of this kind produces weights.")
    candidates: bool = Field(description="Whether its result has downloadable candidates.")
    params_schema: dict[str, Any] = Field(
        description="The JSON schema of its `params`: defaults, bounds, help."
    )


class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: schema.update(
            examples=[e["value"] for e in create_examples().values()]
        ),
    )

    kind: str = Field(
        description="A job kind: pretrain, transfer, audit, compare, or another registered one.",
        json_schema_extra=_kind_schema,
    )
    checkpoint_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="Source model: required for transfer, audit and compare; for pretrain, "
        "optional initial weights.",
    )
    dataset_id: str | None = Field(
        default=None, pattern=ID_PATTERN, description="Data to train on or audit with (required)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Named like the `cartl` CLI options (`--fdm-lambda` is `fdm_lambda`), with "
        "the same defaults; see each kind's params schema (PretrainParams, TransferParams, "
        "AuditParams, CompareParams, ...). Radii and step sizes accept fractions as text "
        '(`"8/255"`).',
        json_schema_extra=_params_schema,
    )

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        names = [k.name for k in job_kinds()]
        if kind not in names:
            raise ValueError(f"unknown job kind {kind!r}; choose one of {', '.join(names)}")
        return kind


class ProgressOut(BaseModel):
    model_config = ConfigDict(extra="ignore")

    stage: str | None = Field(
        default=None, description="What the job is doing, e.g. train, audit, save."
    )
    epoch: int | None = Field(default=None, description="Current epoch (1-based).")
    epochs: int | None = Field(default=None, description="Total epochs.")
    fraction: float | None = Field(
        default=None, description="Done so far, 0..1 (during an audit: the audit's own)."
    )
    eta_s: float | None = Field(
        default=None,
        description="Estimated seconds left, from measured rates (during an audit: the audit's).",
    )
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="Latest training metrics (loss, accuracy, ...)."
    )
    candidate: int | None = Field(
        default=None, description="A compare: the candidate being trained or audited (1-based)."
    )
    candidates: int | None = Field(default=None, description="A compare: how many it trains.")
    candidate_name: str | None = Field(
        default=None, description="A compare: that candidate's name, e.g. cartl-k3-b0.4-frozen."
    )
    estimate: dict[str, Any] | None = Field(
        default=None,
        description="A compare: its cost estimate, made before the first candidate trained.",
    )
    attack: str | None = Field(
        default=None, description="During an audit: the attack running, e.g. apgd-t @ 0.0314."
    )
    audit_attack: int | None = Field(
        default=None, description="During an audit: which attack of the plan runs (1-based)."
    )
    audit_attacks: int | None = Field(
        default=None, description="During an audit: how many attacks it plans (checks too)."
    )
    audit_done: int | None = Field(
        default=None, description="During an audit: samples that attack has finished."
    )
    audit_total: int | None = Field(
        default=None, description="During an audit: samples that attack runs on."
    )
    audit_fraction: float | None = Field(
        default=None,
        description="During an audit: the running attack's progress, 0..1, counting the steps "
        "of the batch in hand.",
    )
    audit_estimate_s: float | None = Field(
        default=None,
        description="An audit's cost bound, made before its first attack: every planned attack "
        "on every sample it may attack, at the measured cost of a pass (less as samples break).",
    )


class JobLinks(BaseModel):
    self: str
    metrics: str
    report: str = Field(description="The HTML report for a person to read.")
    weights: str | None = Field(description="Null for audits, which produce no weights.")


JOB_EXAMPLE: dict[str, Any] = {
    "id": "job_019abc3f2e11c0ffee1234",
    "kind": "transfer",
    "status": "running",
    "checkpoint_id": "ckpt_019abc3f2e10a1b2c3d4e5",
    "dataset_id": "ds_019abc3f2e10f6e5d4c3b2",
    "params": {"method": "cartl", "k": 4, "epochs": 20, "seed": 0, "no_audit": False},
    "progress": {
        "stage": "train",
        "epoch": 3,
        "epochs": 20,
        "fraction": 0.15,
        "eta_s": 412.0,
        "metrics": {"loss": 1.23, "train_accuracy": 0.61},
    },
    "attempts": 1,
    "cancel_requested": False,
    "error": None,
    "metrics": None,
    "created_at": "2026-11-25T10:02:00Z",
    "enqueued_at": "2026-11-25T10:02:00Z",
    "started_at": "2026-11-25T10:02:01Z",
    "finished_at": None,
    "links": {
        "self": "/v1/jobs/job_019abc3f2e11c0ffee1234",
        "metrics": "/v1/jobs/job_019abc3f2e11c0ffee1234/metrics",
        "report": "/v1/jobs/job_019abc3f2e11c0ffee1234/report",
        "weights": "/v1/jobs/job_019abc3f2e11c0ffee1234/weights",
    },
}


class JobOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})

    id: str
    kind: str = Field(description="The job's kind (see JobCreate).")
    status: JobStatus
    checkpoint_id: str | None
    dataset_id: str | None
    params: dict[str, Any] = Field(description="Every parameter, defaults filled in.")
    progress: ProgressOut
    attempts: int = Field(description="Times a worker has started the job.")
    cancel_requested: bool = Field(description="Cancel asked; the worker stops at the next batch.")
    error: str | None = Field(description="Why the job failed.")
    metrics: dict[str, Any] | None = Field(
        description="Final metrics (clean, robust accuracy), the job's `provenance` and, for a "
        "transfer, the `source` checkpoint's own robustness."
    )
    created_at: UtcDateTime
    enqueued_at: UtcDateTime | None
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    links: JobLinks

    @classmethod
    def from_job(cls, job: Any) -> JobOut:
        """From the ORM object or a status row (:data:`app.services.jobs.STATUS_QUERY`)."""
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id,
            kind=job.kind,
            status=JobStatus(job.status),
            checkpoint_id=job.checkpoint_id,
            dataset_id=job.dataset_id,
            params=job.params,
            progress=_progress(job),
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            error=job.error,
            metrics=job.metrics,
            created_at=job.created_at,
            enqueued_at=job.enqueued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            links=JobLinks(
                self=base,
                metrics=f"{base}/metrics",
                report=f"{base}/report",
                weights=None if _makes_no_weights(job.kind) else f"{base}/weights",
            ),
        )


def _makes_no_weights(kind: str) -> bool:
    # A kind no longer registered may still have rows: show the link, whose answer says more.
    found = find_kind(kind)
    return found is not None and not found.makes_weights


def _progress(job: Any) -> ProgressOut:
    try:
        progress = ProgressOut.model_validate(job.progress or {})
    except ValidationError as exc:
        log.warning("job %s: unreadable progress %r: %s", job.id, job.progress, exc)
        progress = ProgressOut()
    if job.status == JobStatus.succeeded and progress.fraction is None:
        progress.fraction = 1.0
    return progress


class JobMetricsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "history": [
                        {"epoch": 1, "loss": 1.9, "train_accuracy": 0.31, "lr": 0.01},
                        {"epoch": 2, "loss": 1.4, "train_accuracy": 0.52, "lr": 0.01},
                    ],
                    "audit": {
                        "clean_accuracy": 0.81,
                        "robust_accuracy": 0.42,
                        "attacks": [{"name": "pgd", "eps": 0.0314, "accuracy": 0.42}],
                    },
                }
            ]
        }
    )

    history: list[dict[str, Any]] = Field(
        description="One record per finished epoch (a compare: the chosen candidate's)."
    )
    audit: dict[str, Any] | None = Field(description="The audit report, once there is one.")
    chosen: str | None = Field(
        default=None, description="A compare: the name of the chosen candidate, once done."
    )
    candidates: list[dict[str, Any]] | None = Field(
        default=None,
        description="A compare: one row per candidate (method, k, norm_beta, bn, validation "
        "and test clean and robust accuracy, seconds, its measured cost: train_seconds, "
        "audit_seconds (validation audit), cost_seconds (their sum, device-seconds) and device; "
        "weights link), once done.",
    )
    estimate: dict[str, Any] | None = Field(
        default=None,
        description="A compare: the cost estimate made before it started (over_budget: the "
        "candidates max_cost dropped, with the reason).",
    )
    selection: dict[str, Any] | None = Field(
        default=None,
        description="A compare: how the candidate was chosen: the `rule`, its `confidence`, the "
        "validation size (`val_samples`), the `preferred` candidate, each paired comparison "
        "with it (`comparisons`) and the `reason`, once done. Every accuracy row in "
        "`candidates` carries its 95% Wilson interval (`val_clean_interval`, ...).",
    )
