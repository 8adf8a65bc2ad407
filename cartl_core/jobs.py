"""Whole jobs (pre-training, transfer, audit, compare) from flat parameters named like the CLI
options.

This is the one place that turns ``--fdm-lambda 0.005``-style settings into the config
dataclasses, so the ``cartl`` CLI, the REST API's ``params`` and the worker share names, defaults
and validation. Every default comes from :mod:`cartl_core.config`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, ParamSpec, cast

import torch

from cartl_core.config import (
    AttackConfig,
    AuditConfig,
    CompareConfig,
    FDMConfig,
    LRShape,
    LwFConfig,
    LwFTune,
    ScheduleConfig,
    TraceConfig,
    TransferConfig,
    TransferMethod,
)
from cartl_core.errors import CartlError, ConfigError

__all__ = [
    "FRACTION_FIELDS",
    "AuditParams",
    "CompareParams",
    "JobOutcome",
    "PretrainParams",
    "TransferParams",
    "describe_error",
    "params_class",
    "parse_params",
    "run_job",
]

_A, _S, _F, _T, _AU = AttackConfig(), ScheduleConfig(), FDMConfig(), TransferConfig(), AuditConfig()
_TR = TraceConfig()
_C = CompareConfig()
Augment = Literal["auto", "paper", "crop", "crop-flip", "none"]
Norm = Literal["linf", "l2"]

#: Fields that accept a fraction written as text, such as ``"8/255"``.
FRACTION_FIELDS = frozenset({"eps", "alpha", "audit_eps", "audit_alpha"})


@dataclass(frozen=True)
class _Schedule:
    """Optional overrides of the method's schedule; None keeps the method's default."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    lr_schedule: LRShape = "step"
    augment: Augment = "auto"
    seed: int = 0

    def schedule(self, base: ScheduleConfig) -> ScheduleConfig:
        changes: dict[str, object] = {
            name: getattr(self, name)
            for name in ("epochs", "batch_size", "lr", "weight_decay")
            if getattr(self, name) is not None
        }
        return base.with_(**changes, shape=self.lr_schedule)


@dataclass(frozen=True)
class _Trace:
    """The robust trace run after every epoch (``trace_samples`` 0 turns it off)."""

    trace_samples: int = _TR.samples
    trace_steps: int = _TR.steps

    def trace(self, eps: float | None = None, norm: Norm | None = None) -> TraceConfig:
        return TraceConfig(samples=self.trace_samples, steps=self.trace_steps, eps=eps, norm=norm)


Threat = tuple[float, str]


def _threat_model(
    eps: tuple[float, ...] | None, norm: Norm | None, threat: Threat | None
) -> tuple[tuple[float, ...], Norm]:
    """The audit's radii and norm: as given, else the model's own threat model, else the paper's.

    A given norm without radii keeps the paper's radius rather than borrow one from another norm.
    """
    if eps is not None:  # an empty list is the user's, and AuditConfig refuses it by name
        return tuple(eps), norm or _AU.norm
    if threat is not None and norm in (None, threat[1]):
        return (threat[0],), cast(Norm, threat[1])
    return _AU.eps, norm or _AU.norm


@dataclass(frozen=True)
class _FinalAudit:
    """The audit that ends a training job (``no_audit`` skips it).

    ``audit_eps`` and ``audit_norm`` left out: the threat model the model was made robust
    against (a pre-training's attack; a transfer's source's), else the paper's Linf 8/255.
    """

    audit_eps: tuple[float, ...] | None = None
    audit_attacks: str = _AU.attacks
    audit_steps: int = _AU.steps
    audit_alpha: float | None = _AU.alpha
    audit_restarts: int = _AU.restarts
    audit_norm: Norm | None = None
    no_audit: bool = False

    def audit_config(self, threat: Threat | None = None) -> AuditConfig:
        eps, norm = _threat_model(self.audit_eps, self.audit_norm, threat)
        return AuditConfig(
            eps=eps,
            attacks=self.audit_attacks,
            steps=self.audit_steps,
            alpha=self.audit_alpha,
            restarts=self.audit_restarts,
            norm=norm,
        )


@dataclass(frozen=True)
class PretrainParams(_Schedule, _Trace, _FinalAudit):
    """``cartl pretrain``: FDM (or, with ``fdm_lambda`` 0, plain adversarial) training."""

    arch: str = "resnet18-cifar"
    k: int = _F.k
    fdm_lambda: float = _F.fdm_lambda
    fdm_reduction: Literal["sum", "mean"] = _F.reduction
    eps: float = _A.eps
    alpha: float | None = _A.alpha
    steps: int = _A.steps

    @property
    def threat(self) -> Threat:
        return (self.eps, _A.norm)

    def config(self) -> FDMConfig:
        return FDMConfig(
            k=self.k,
            fdm_lambda=self.fdm_lambda,
            reduction=self.fdm_reduction,
            attack=AttackConfig(eps=self.eps, alpha=self.alpha, steps=self.steps),
            schedule=self.schedule(ScheduleConfig()),
            augmentation=self.augment,
            trace=self.trace(),  # in the training attack's threat model
        )


@dataclass(frozen=True)
class TransferParams(_Schedule, _Trace, _FinalAudit):
    """``cartl transfer``: fine-tune a source on the target with one of the four methods."""

    method: Literal["standard", "neft", "cartl", "lwf"] = _T.method
    k: int = _T.k
    norm_beta: float | None = None
    spectral_mode: Literal["exact", "at-most"] = _T.spectral_mode
    spectral_estimate: Literal["matrix", "conv"] = _T.spectral_estimate
    residual_scale: float | None = None
    bn: str | None = None
    lwf_lambda: float = LwFConfig().lwf_lambda
    lwf_tune: LwFTune = LwFConfig().tune
    arch: str | None = None
    source_classes: int | None = None
    resize: bool = False

    def config(self, threat: Threat | None = None) -> TransferConfig:
        """``threat``: the source's threat model, the trace's radius unless the audit names one."""
        base = TransferConfig(method=self.method).resolved_schedule()
        eps, norm = _threat_model(self.audit_eps, self.audit_norm, threat)
        return TransferConfig(
            method=self.method,
            k=self.k,
            norm_beta=self.norm_beta,
            spectral_mode=self.spectral_mode,
            spectral_estimate=self.spectral_estimate,
            residual_scale=self.residual_scale,
            bn=self.bn,
            schedule=self.schedule(base),
            lwf=LwFConfig(lwf_lambda=self.lwf_lambda, tune=self.lwf_tune),
            augmentation=self.augment,
            # The threat model the final audit will judge it by (its first radius).
            trace=self.trace(eps[0] if eps else None, norm),
        )


@dataclass(frozen=True)
class AuditParams:
    """``cartl audit``: clean accuracy, the attack ensemble (per-sample worst case), the paper's
    PGD and FGSM as named attacks, and the masking checks, on the test split."""

    eps: tuple[float, ...] | None = None
    attacks: str = _AU.attacks
    steps: int = _AU.steps
    alpha: float | None = _AU.alpha
    restarts: int = _AU.restarts
    norm: Norm | None = None
    apgd_steps: int = _AU.apgd_steps
    apgd_targets: int = _AU.apgd_targets
    square_queries: int = _AU.square_queries
    check_samples: int = _AU.check_samples
    no_fgsm: bool = False
    batch_size: int = _AU.batch_size
    limit: int | None = None
    seed: int = 0
    arch: str | None = None
    resize: bool = False

    def config(self, threat: Threat | None = None) -> AuditConfig:
        """``threat``: the checkpoint's own threat model, used where ``eps``/``norm`` are unset."""
        eps, norm = _threat_model(self.eps, self.norm, threat)
        return AuditConfig(
            eps=eps,
            steps=self.steps,
            alpha=self.alpha,
            restarts=self.restarts,
            norm=norm,
            attacks=self.attacks,
            apgd_steps=self.apgd_steps,
            apgd_targets=self.apgd_targets,
            square_queries=self.square_queries,
            check_samples=self.check_samples,
            fgsm=not self.no_fgsm,
            batch_size=self.batch_size,
        )


#: CompareConfig's names for the options the CLI and these params name like ``transfer``'s.
_COMPARE_NAMES = {
    "ks": "k",
    "norm_betas": "norm_beta",
    "bn_presets": "bn",
    "augmentation": "augment",
}


@dataclass(frozen=True)
class CompareParams(_Schedule):
    """``cartl compare``: transfer candidates over methods x k x beta x BN preset, one chosen on
    a validation split of the target's training data (see :mod:`cartl_core.compare`).

    ``eps`` (required) and ``norm``: the threat model candidates are audited and chosen in.
    ``k``, ``norm_beta`` and ``bn`` are lists; left out, k lies around the k the source was
    pre-trained for and each method gets its own beta and BN preset. The schedule options
    override each method's default schedule. The chosen model then gets a full audit at ``eps``
    with ``audit_attacks`` (``no_audit`` skips it).
    """

    eps: float | None = None
    norm: Norm = _C.norm
    methods: tuple[TransferMethod, ...] = cast("tuple[TransferMethod, ...]", _C.methods)
    k: tuple[int, ...] | None = None
    norm_beta: tuple[float, ...] | None = None
    bn: tuple[str, ...] | None = None
    max_candidates: int = _C.max_candidates
    max_clean_drop: float = _C.max_clean_drop
    val_fraction: float = _C.val_fraction
    lwf_lambda: float = LwFConfig().lwf_lambda
    lwf_tune: LwFTune = LwFConfig().tune
    audit_attacks: str = _AU.attacks
    no_audit: bool = False
    arch: str | None = None
    source_classes: int | None = None
    resize: bool = False

    def config(self) -> CompareConfig:
        if self.eps is None:
            raise ConfigError(
                "a compare needs eps, the attack radius candidates are chosen at", field="eps"
            )
        try:
            return CompareConfig(
                eps=self.eps,
                norm=self.norm,
                methods=tuple(self.methods),
                ks=self.k,
                norm_betas=self.norm_beta,
                bn_presets=self.bn,
                max_candidates=self.max_candidates,
                max_clean_drop=self.max_clean_drop,
                val_fraction=self.val_fraction,
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                weight_decay=self.weight_decay,
                lr_schedule=self.lr_schedule,
                augmentation=self.augment,
                lwf=LwFConfig(lwf_lambda=self.lwf_lambda, tune=self.lwf_tune),
            )
        except ConfigError as exc:
            if exc.field in _COMPARE_NAMES:
                raise ConfigError(str(exc), field=_COMPARE_NAMES[exc.field]) from None
            raise

    def audit_config(self) -> AuditConfig:
        """The chosen model's full audit, in the comparison's threat model."""
        config = self.config()
        try:
            return AuditConfig(eps=(config.eps,), norm=config.norm, attacks=self.audit_attacks)
        except ConfigError as exc:
            raise ConfigError(str(exc), field="audit_attacks") from None


Params = PretrainParams | TransferParams | AuditParams | CompareParams
_CLASSES: dict[str, type[Params]] = {
    "pretrain": PretrainParams,
    "transfer": TransferParams,
    "audit": AuditParams,
    "compare": CompareParams,
}


def params_class(kind: str) -> type[Params]:
    try:
        return _CLASSES[kind]
    except KeyError:
        raise ConfigError(
            f"unknown job kind {kind!r}; choose one of {', '.join(_CLASSES)}", field="kind"
        ) from None


def parse_params(kind: str, raw: Mapping[str, Any]) -> Params:
    """Build and check the parameters of a ``kind`` job from JSON-like values.

    Raises :class:`ConfigError` with ``field`` set to the offending parameter. Type checking of
    each value is the caller's (the API validates types with pydantic first).
    """
    cls = params_class(kind)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"unknown parameter {unknown[0]!r} for a {kind} job; known: {', '.join(sorted(known))}",
            field=unknown[0],
        )
    values = {k: _fraction(k, v) if k in FRACTION_FIELDS else v for k, v in raw.items()}
    # One eps where several are allowed (the audit's) is a list of one.
    for f in dataclasses.fields(cls):
        if str(f.type).startswith("tuple") and f.name in values:
            v = values[f.name]
            if isinstance(v, list):
                values[f.name] = tuple(v)
            elif not (isinstance(v, tuple) or v is None):
                values[f.name] = (v,)
    params = cls(**values)
    # The final audit first: a transfer's robust trace takes its radius from the audit's, so a
    # bad audit_eps is reported as itself, not as the trace's.
    if isinstance(params, PretrainParams | TransferParams | CompareParams) and not params.no_audit:
        params.audit_config()
    params.config()  # raises ConfigError naming the field
    return params


def _fraction(name: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return tuple(_fraction(name, v) for v in value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"{name} must be a number or a fraction like 8/255; got {value!r}", field=name
            ) from None
    return value


@dataclass
class JobOutcome:
    """What a job produced: final metrics, per-epoch history, the audit, the weights written.

    ``provenance`` (:func:`cartl_core.provenance.collect`) and, for a transfer, ``source`` (the
    source checkpoint's own robustness) are also in ``metrics``, which the service stores.
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[str, Any] | None = None
    weights: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] | None = None


ProgressFn = Callable[[Any], None]
AuditProgressFn = Callable[[str, int, int], None]
_P = ParamSpec("_P")


def _with_provenance(run: Callable[_P, JobOutcome]) -> Callable[_P, JobOutcome]:
    """``run``, with where its outcome came from attached (see :mod:`cartl_core.provenance`)."""
    signature = inspect.signature(run)

    @functools.wraps(run)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> JobOutcome:
        started, t0 = datetime.now(UTC), time.monotonic()
        outcome = run(*args, **kwargs)
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        _add_provenance(outcome, call.arguments, started, time.monotonic() - t0)
        return outcome

    return wrapper


def _add_provenance(
    outcome: JobOutcome, call: Mapping[str, Any], started: datetime, wall_seconds: float
) -> None:
    from cartl_core._runtime import resolve_device
    from cartl_core.checkpoints import read_description
    from cartl_core.provenance import collect, source_summary

    params, checkpoint = call["params"], call["checkpoint_path"]
    dev = resolve_device(call["device"])
    outcome.provenance = collect(
        kind=call["kind"],
        params=_jsonable(dataclasses.asdict(params)),
        device=str(dev),
        device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        started=started,
        wall_seconds=wall_seconds,
        dataset_path=Path(call["dataset_path"]),
        checkpoint_path=None if checkpoint is None else Path(checkpoint),
        weights_path=outcome.weights,
        attack_settings=(outcome.audit or {}).get("config"),
    )
    outcome.metrics["provenance"] = outcome.provenance
    if isinstance(params, TransferParams | CompareParams) and checkpoint is not None:
        outcome.source = source_summary(read_description(checkpoint))
        if outcome.source is not None:
            outcome.metrics["source"] = outcome.source


@_with_provenance
def run_job(
    kind: str,
    params: Params,
    *,
    dataset_path: Path,
    checkpoint_path: Path | None,
    out_path: Path | None = None,
    state_path: Path | None = None,
    device: str = "auto",
    on_progress: ProgressFn | None = None,
    on_audit_progress: AuditProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch: Callable[[Any, Any], None] | None = None,
    candidates_dir: Path | None = None,
) -> JobOutcome:
    """Run one job end to end; training jobs write a self-describing checkpoint to ``out_path``.

    The ``cartl`` CLI and the service's worker both run jobs through here. A compare writes the
    chosen model to ``out_path`` and every candidate to ``candidates_dir`` (default: beside
    ``out_path``); its ``on_progress`` gets :class:`cartl_core.compare.CompareEvent` objects.
    """
    from cartl_core import audit, load_dataset, load_model, pretrain, save_checkpoint, transfer
    from cartl_core._runtime import prepare_model, resolve_device
    from cartl_core.checkpoints import read_description, trained_threat

    data = load_dataset(dataset_path, resize=_resize_to(params, checkpoint_path))
    c, h, w = data.input_shape
    if isinstance(params, AuditParams):
        if checkpoint_path is None:
            raise ConfigError("an audit needs a checkpoint", field="checkpoint_id")
        model = load_model(checkpoint_path, arch=params.arch, in_channels=c, input_size=h)
        model.check_input(c)
        model.check_input_size(h, w)
        prepare_model(model, resolve_device(device))
        split = data.test
        if params.limit is not None:
            split = split.subset(torch.arange(min(params.limit, len(split))))
        torch.manual_seed(params.seed)
        report = audit(
            model,
            split,
            params.config(trained_threat(read_description(checkpoint_path))),
            class_names=data.class_names,
            on_progress=on_audit_progress,
        )
        rep = _jsonable(report.to_dict())
        return JobOutcome(
            metrics=_summary(rep),
            audit=rep,
        )
    if out_path is None:
        raise ConfigError(f"a {kind} job needs an output path for its weights", field="out")
    if isinstance(params, CompareParams):
        return _run_compare(
            params,
            data,
            checkpoint_path,
            out_path,
            candidates_dir or out_path.parent,
            device=device,
            on_progress=on_progress,
            on_audit_progress=on_audit_progress,
            should_stop=should_stop,
        )
    kw: dict[str, Any] = {
        "device": device,
        "seed": params.seed,
        "state_path": state_path,
        "on_progress": on_progress,
        "should_stop": should_stop,
        "on_epoch": on_epoch,
    }
    if isinstance(params, PretrainParams):
        init = None
        if checkpoint_path is not None:
            init = load_model(checkpoint_path, arch=params.arch, in_channels=c, input_size=h)
        result = pretrain(data, params.arch, params.config(), init=init, **kw)
        threat: Threat | None = params.threat
    else:
        if checkpoint_path is None:
            raise ConfigError("a transfer needs a source checkpoint", field="checkpoint_id")
        source = load_model(
            checkpoint_path,
            arch=params.arch,
            num_classes=params.source_classes,
            in_channels=c,
            input_size=h,
        )
        threat = trained_threat(read_description(checkpoint_path))
        result = transfer(source, data, params.config(threat), **kw)
    history = [r.to_dict() for r in result.history]
    outcome = JobOutcome(history=history)
    metrics: dict[str, Any] = {"history": history}
    if not params.no_audit:
        report = audit(
            result.model,
            data.test,
            params.audit_config(threat),
            class_names=data.class_names,
            on_progress=on_audit_progress,
        )
        outcome.audit = _jsonable(report.to_dict())
        metrics.update(
            clean_accuracy=report.clean_accuracy,
            robust_accuracy=report.robust_accuracy,
            audit=outcome.audit,
        )
    outcome.metrics = _summary(outcome.audit) if outcome.audit else {}
    if history:
        outcome.metrics["final_epoch"] = history[-1]
    # One list of {name, meaning, detail, source} for every source; others append to it too.
    outcome.metrics.setdefault("warnings", []).extend(
        {**w, "source": "training"} for w in result.warnings
    )
    save_checkpoint(
        result.model,
        out_path,
        class_names=data.class_names,
        # A later audit or transfer of this model defaults to the threat model it is robust in.
        training={**result.training, **_threat_record(threat)},
        metrics=metrics,
    )
    outcome.weights = out_path
    return outcome


def _threat_record(threat: Threat | None) -> dict[str, Any]:
    return {} if threat is None else {"threat": {"eps": threat[0], "norm": threat[1]}}


def _run_compare(
    params: CompareParams,
    data: Any,
    checkpoint_path: Path | None,
    out_path: Path,
    candidates_dir: Path,
    *,
    device: str,
    on_progress: ProgressFn | None,
    on_audit_progress: AuditProgressFn | None,
    should_stop: Callable[[], bool] | None,
) -> JobOutcome:
    """Candidates to ``candidates_dir``, the chosen one (with its full audit) to ``out_path``."""
    from cartl_core import audit, load_model, read_description, save_checkpoint
    from cartl_core._runtime import prepare_model, resolve_device
    from cartl_core.compare import compare, pretrained_k
    from cartl_core.provenance import sha256_file

    if checkpoint_path is None:
        raise ConfigError("a compare needs a source checkpoint", field="checkpoint_id")
    c, h, _ = data.input_shape
    source = load_model(
        checkpoint_path,
        arch=params.arch,
        num_classes=params.source_classes,
        in_channels=c,
        input_size=h,
    )
    result = compare(
        source,
        data,
        params.config(),
        device=device,
        seed=params.seed,
        centre_k=pretrained_k(read_description(checkpoint_path)),
        out_dir=candidates_dir,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    table = _jsonable(result.to_dict())
    table["chosen"]["path"] = str(out_path)
    chosen = result.chosen
    outcome = JobOutcome(history=chosen.history)
    metrics: dict[str, Any] = {"history": chosen.history}
    if params.no_audit:
        outcome.metrics = {
            "clean_accuracy": chosen.test_clean,
            "robust_accuracy": chosen.test_robust,
            "ensemble": table["selection"]["ensemble"],
            "eps": table["selection"]["eps"],
            "norm": table["selection"]["norm"],
            "warnings": [],
        }
        metrics.update(clean_accuracy=chosen.test_clean, robust_accuracy=chosen.test_robust)
    else:
        model = result.model
        prepare_model(model, resolve_device(device))
        torch.manual_seed(params.seed)
        report = audit(
            model,
            data.test,
            params.audit_config(),
            class_names=data.class_names,
            on_progress=on_audit_progress,
        )
        outcome.audit = _jsonable(report.to_dict())
        outcome.metrics = _summary(outcome.audit)
        metrics.update(
            clean_accuracy=report.clean_accuracy,
            robust_accuracy=report.robust_accuracy,
            audit=outcome.audit,
        )
    # The candidate table and the choice, beside the chosen model's own numbers.
    outcome.metrics.update(
        chosen=table["chosen"],
        candidates=table["candidates"],
        estimate=table["estimate"],
        selection=table["selection"],
        dropped=table["dropped"],
    )
    summary = {k: table[k] for k in ("candidates", "selection")}
    # A file cannot name its own hash; its name and place are the reader's anyway.
    summary["chosen"] = {k: v for k, v in table["chosen"].items() if k not in ("path", "sha256")}
    save_checkpoint(
        result.model,
        out_path,
        class_names=data.class_names,
        # Chosen in this threat model, so that is the one later audits default to.
        training={
            **chosen.training,
            "compare_result": summary,
            **_threat_record(None if params.eps is None else (params.eps, params.norm)),
        },
        metrics=metrics,
    )
    # chosen.safetensors holds the full audit the candidate's own file lacks: another file.
    table["chosen"]["sha256"] = sha256_file(out_path)
    outcome.weights = out_path
    return outcome


_ATTACK_SUMMARY = (
    "name",
    "role",
    "norm",
    "eps",
    "alpha",
    "steps",
    "restarts",
    "accuracy",
    "seconds",
)


def _summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The job's headline metrics: the ensemble's robust accuracy, which ensemble ran, each
    attack's own numbers, and the failed checks as warnings."""
    return {
        "clean_accuracy": report["clean_accuracy"],
        "robust_accuracy": report["robust_accuracy"],
        "worst_case_accuracy": report["worst_case_accuracy"],
        "ensemble": report.get("ensemble"),
        "ensemble_attacks": report.get("ensemble_attacks", []),
        "eps": report.get("eps"),
        "norm": report.get("norm"),
        "samples": report["samples"],
        "attacks": [{k: a.get(k) for k in _ATTACK_SUMMARY} for a in report["attacks"]],
        "warnings": list(report.get("warnings", [])),
    }


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so tuples become lists and the result is plain data."""
    return json.loads(json.dumps(obj))


def _resize_to(params: Params, checkpoint_path: Path | None) -> int | None:
    """The side to resize the images to: the checkpoint's input size, where the job asks for a
    resize and the checkpoint records one (plain weights are built at the data's size)."""
    from cartl_core.checkpoints import read_description

    if not getattr(params, "resize", False) or checkpoint_path is None:
        return None
    description = read_description(checkpoint_path)
    return None if description is None else int(description["model"]["input_size"])


def describe_error(exc: BaseException) -> str:
    """A one-line message for a failed job: CartlError messages as they are, others typed."""
    if isinstance(exc, CartlError):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc}"
