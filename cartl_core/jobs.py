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
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, cast

import torch

from cartl_core._stop import stop_when
from cartl_core.config import (
    ATTACK_NAMES,
    BN_PRESETS,
    COMPARE_BN_PRESETS,
    COMPARE_K_OFFSETS,
    COMPARE_NORM_BETAS,
    AttackConfig,
    AuditConfig,
    CompareConfig,
    FDMConfig,
    LRShape,
    LwFConfig,
    LwFTune,
    Precision,
    ScheduleConfig,
    TraceConfig,
    TransferConfig,
    TransferMethod,
    resolve_attacks,
)
from cartl_core.errors import CartlError, ConfigError
from cartl_core.models import list_models
from cartl_core.options import (
    OptionSpec,
    format_number,
    fraction_fields,
    fraction_value,
    list_fields,
    option,
    option_specs,
    out_of_range,
)

if TYPE_CHECKING:
    from cartl_core.audit import AuditEvent

__all__ = [
    "AuditParams",
    "CompareParams",
    "JobOutcome",
    "PretrainParams",
    "TransferParams",
    "describe_error",
    "normalise_values",
    "params_class",
    "parse_params",
    "run_job",
]

_A, _S, _F, _T, _AU = AttackConfig(), ScheduleConfig(), FDMConfig(), TransferConfig(), AuditConfig()
_TR = TraceConfig()
_C = CompareConfig()
Augment = Literal["auto", "paper", "crop", "crop-flip", "none"]
Norm = Literal["linf", "l2"]

SCHEDULE = "schedule (SGD, one warm-up epoch, x0.2 at 40%/70%/90% of epochs)"
TRACE = "robust trace (early-exit PGD on a fixed test subset after every epoch; monitoring only)"
AUDIT = "audit attacks"
CANDIDATES = "candidates"

# The bounds of the numeric parameters: what one GPU can do in a week on the largest realistic
# job (ImageNet-scale data, WRN-34-10 or ResNet-50), not what the demo needs. They refuse absurd
# values before a job is queued; the configs keep the checks that relate values to each other,
# to the model or to the data.
#: Test samples an audit or a trace attacks: 20x ImageNet's 50,000 validation images (the test
#: split cuts it anyway).
_MAX_SAMPLES = 1_000_000
#: Images in one batch: 65,536 MNIST-sized images through a small CNN still fit an 80 GB GPU;
#: 224-px images stop at a few thousand.
_MAX_BATCH = 65_536
#: Blocks a fine-tuning reaches: twice ResNet-152's 50 (the model's own count is checked when it
#: is built).
_MAX_BLOCKS = 100
#: Steps of one evaluation attack: 100x AutoAttack's 100; PGD-10,000 over ImageNet's validation
#: images with ResNet-50 is still about two GPU-days.
_MAX_ATTACK_STEPS = 10_000
#: Steps of an attack run on every batch or epoch (training, the trace): PGD-1,000 training of
#: WRN-34-10 on CIFAR-10 already takes hours per epoch.
_MAX_TRAINING_STEPS = 1_000
#: An L2 radius or step (an Linf one is at most 1, as the configs check): the L2 diameter of a
#: 3x512x512 image in [0, 1] is 887.
_MAX_RADIUS = 1_000.0
#: A loss term's weight: the release sums the FDM term over the batch, so the same weight
#: averaged is 0.005 x batch size, 330 at the largest batch.
_MAX_LOSS_WEIGHT = 1_000.0
#: 32 bits, as NumPy takes: the loaders multiply a seed by 1,000,003 into torch's 64-bit seed.
_MAX_SEED = 2**32 - 1
#: A spectral-norm target: the paper's are 0.4 and 0.6; above a layer's own norm a target
#: constrains nothing.
_MAX_NORM_BETA = 100.0

#: The audit's options, shared by ``audit`` (``--eps``) and a training's final audit
#: (``--audit-eps``).
_AUDIT_HELP: dict[str, dict[str, Any]] = {
    "eps": {
        "help": "attack radius, or several separated by commas",
        "default_text": "the eps the model was made robust at, from its header; else "
        f"{format_number(_AU.eps[0])}",
        "fraction": True,
        "group": AUDIT,
        "gt": 0,
        "le": _MAX_RADIUS,
    },
    "attacks": {
        "help": "the attacks behind the robust accuracy, run in sequence on the samples still "
        "robust: standard (APGD-CE, APGD-T, FAB-T, Square: AutoAttack's standard version, the "
        "number to report), fast (APGD-CE, APGD-T: 4-6x quicker, for quick runs), paper (the "
        f"paper's PGD) or a comma-separated list of {', '.join(ATTACK_NAMES)}",
        "metavar": "ENSEMBLE",
        "group": AUDIT,
    },
    "steps": {
        "help": "steps of the paper's PGD, always reported as a named attack",
        "default_text": f"{_AU.steps}; the paper's main protocol: 100",
        "group": AUDIT,
        "ge": 1,
        "le": _MAX_ATTACK_STEPS,
    },
    "alpha": {
        "help": "PGD step size",
        "default_text": "eps/4, i.e. 2/255 at 8/255",
        "fraction": True,
        "group": AUDIT,
        "gt": 0,
        "le": _MAX_RADIUS,
    },
    # AutoAttack's strongest version restarts 5 times; 100 restarts of PGD-100 over ImageNet's
    # validation images is about two GPU-days.
    "restarts": {"help": "random restarts", "group": AUDIT, "ge": 1, "le": 100},
    "precision": {
        "help": "the attacks' arithmetic: fp32 (as the reference evaluates) or bf16 (autocast "
        "on CUDA: faster, may find a little less; the report names it)",
        "group": AUDIT,
    },
    "norm": {
        "help": "threat model",
        "default_text": "the model's own, from its header; else linf",
        "group": AUDIT,
    },
}
_RESIZE_HELP = (
    "resize the images to the {what}'s input size (bilinear, antialiased) [off: images of "
    "another size are an error]"
)


@dataclass(frozen=True)
class _Schedule:
    """Optional overrides of the method's schedule; None keeps the method's default."""

    # 100x the paper's 100: 10,000 epochs of PGD-10 training of WRN-34-10 on CIFAR-10 is
    # about a GPU-week; only small datasets get that far.
    epochs: int | None = option(
        None,
        "training epochs",
        default_text=f"{_S.epochs}; lwf: 52",
        group=SCHEDULE,
        ge=1,
        le=10_000,
    )
    batch_size: int | None = option(
        None,
        "batch size",
        default_text=str(_S.batch_size),
        group=SCHEDULE,
        ge=1,
        le=_MAX_BATCH,
    )
    # Linear scaling (Goyal et al.) gives 3.2 at batch 8,192; SGD diverges well before 10.
    lr: float | None = option(
        None,
        "peak learning rate",
        default_text=f"{_S.lr}; lwf: 0.001",
        group=SCHEDULE,
        gt=0,
        le=10.0,
    )
    # 10x the largest decays in use (0.1); each SGD step shrinks the weights by lr x decay.
    weight_decay: float | None = option(
        None,
        "weight decay",
        default_text=f"{_S.weight_decay}; lwf: 2e-4",
        group=SCHEDULE,
        ge=0,
        le=1.0,
    )
    lr_schedule: LRShape = option(
        _S.shape,
        "step = the paper's warm-up and x0.2 steps; one-cycle = PyTorch's OneCycleLR curve "
        "peaking at lr (not the paper's)",
        group=SCHEDULE,
    )
    augment: Augment = option(
        "auto",
        "training augmentation: auto = paper on 3-channel images of 32 px and up, crop on "
        "other images of 16 px and up, none below; paper = crop 4 + flip + rotate 15 deg "
        "(CIFAR); crop = a crop of size/8 px (at least 1); crop-flip; none",
        group=SCHEDULE,
    )
    seed: int = option(0, "random seed", ge=0, le=_MAX_SEED)

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

    trace_samples: int = option(
        _TR.samples,
        "test samples attacked after each epoch, cut to stay under ~10% of an epoch's cost "
        f"(at least {_TR.min_samples}); 0 turns the trace off",
        group=TRACE,
        ge=0,
        le=_MAX_SAMPLES,
    )
    trace_steps: int = option(
        _TR.steps, "PGD steps of the trace, step eps/4", group=TRACE, ge=1, le=_MAX_TRAINING_STEPS
    )

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

    audit_eps: tuple[float, ...] | None = option(None, **_AUDIT_HELP["eps"])
    audit_attacks: str = option(_AU.attacks, **_AUDIT_HELP["attacks"])
    audit_steps: int = option(_AU.steps, **_AUDIT_HELP["steps"])
    audit_alpha: float | None = option(_AU.alpha, **_AUDIT_HELP["alpha"])
    audit_restarts: int = option(_AU.restarts, **_AUDIT_HELP["restarts"])
    audit_norm: Norm | None = option(None, **_AUDIT_HELP["norm"])
    audit_precision: Precision = option(_AU.precision, **_AUDIT_HELP["precision"])
    no_audit: bool = option(False, "skip the audit at the end")

    def audit_config(self, threat: Threat | None = None) -> AuditConfig:
        eps, norm = _threat_model(self.audit_eps, self.audit_norm, threat)
        return AuditConfig(
            eps=eps,
            attacks=self.audit_attacks,
            steps=self.audit_steps,
            alpha=self.audit_alpha,
            restarts=self.audit_restarts,
            norm=norm,
            precision=self.audit_precision,
        )


@dataclass(frozen=True)
class _FromSource:
    """What a transfer or a compare asks of its source: LwF's settings, and how to read plain
    weights and fit the target's images to them."""

    lwf_lambda: float = option(
        LwFConfig().lwf_lambda, "lwf feature-distance weight", ge=0, le=_MAX_LOSS_WEIGHT
    )
    lwf_tune: LwFTune = option(
        LwFConfig().tune,
        "after the head-only epochs, tune the whole model (all, the method's own) or only the "
        "last k blocks",
    )
    arch: str | None = option(None, "architecture, for a source of plain weights")
    source_classes: int | None = option(
        None,
        "class count of a plain-weights source",
        default_text="from its last layer",
        ge=1,
        le=100_000,  # ImageNet-21k has 21,841
    )
    resize: bool = option(False, _RESIZE_HELP.format(what="source"))


@dataclass(frozen=True)
class PretrainParams(_Schedule, _Trace, _FinalAudit):
    """``cartl pretrain``: FDM (or, with ``fdm_lambda`` 0, plain adversarial) training."""

    arch: str = option(
        "resnet18-cifar",
        f"architecture: {', '.join(list_models())}",
        cli_required=True,
    )
    k: int = option(_F.k, "number of last blocks that will be fine-tuned", ge=1, le=_MAX_BLOCKS)
    fdm_lambda: float = option(
        _F.fdm_lambda,
        "weight of the feature-distance term; 0 = plain adversarial training",
        ge=0,
        le=_MAX_LOSS_WEIGHT,
    )
    fdm_reduction: Literal["sum", "mean"] = option(
        _F.reduction, "sum the term over the batch (the release) or average it"
    )
    eps: float = option(_A.eps, "training attack radius (Linf)", fraction=True, gt=0, le=1.0)
    alpha: float | None = option(
        _A.alpha,
        "training attack step",
        default_text="eps/4, the paper's 2/255 at 8/255",
        fraction=True,
        gt=0,
        le=1.0,
    )
    steps: int = option(_A.steps, "training attack steps", ge=0, le=_MAX_TRAINING_STEPS)

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
class TransferParams(_FromSource, _Schedule, _Trace, _FinalAudit):
    """``cartl transfer``: fine-tune a source on the target with one of the four methods."""

    method: TransferMethod = option(_T.method, "transfer method")
    k: int = option(_T.k, "number of last blocks to fine-tune", ge=1, le=_MAX_BLOCKS)
    norm_beta: float | None = option(
        None,
        "spectral-norm target for neft/cartl",
        default_text="neft 0.6, cartl 0.4",
        gt=0,
        le=_MAX_NORM_BETA,
    )
    spectral_mode: Literal["exact", "at-most"] = option(
        _T.spectral_mode, "scale every layer to norm beta, or only those above it"
    )
    spectral_estimate: Literal["matrix", "conv"] = option(
        _T.spectral_estimate,
        "bound each kernel reshaped to a matrix (the paper) or each convolution's exact "
        "operator norm",
    )
    residual_scale: float | None = option(
        None,
        "fine-tuned residual output = s*(shortcut + residual)",
        default_text="0.5 for neft/cartl, 1 otherwise",
        gt=0,
        # Each tuned block multiplies its output by s: past a few, activations blow up with depth.
        le=10.0,
    )
    bn: str | None = option(
        None,
        "BatchNorm preset",
        default_text="standard source-stats, neft trainable, cartl frozen, lwf trainable",
        choices=tuple(BN_PRESETS),
    )

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

    eps: tuple[float, ...] | None = option(None, **_AUDIT_HELP["eps"])
    attacks: str = option(_AU.attacks, **_AUDIT_HELP["attacks"])
    steps: int = option(_AU.steps, **_AUDIT_HELP["steps"])
    alpha: float | None = option(_AU.alpha, **_AUDIT_HELP["alpha"])
    restarts: int = option(_AU.restarts, **_AUDIT_HELP["restarts"])
    norm: Norm | None = option(None, **_AUDIT_HELP["norm"])
    precision: Precision = option(_AU.precision, **_AUDIT_HELP["precision"])
    no_fgsm: bool = option(False, "skip FGSM")
    apgd_steps: int = option(
        _AU.apgd_steps, "APGD iterations per run (AutoAttack's)", ge=1, le=_MAX_ATTACK_STEPS
    )
    apgd_targets: int = option(
        _AU.apgd_targets,
        "APGD-T target classes, at most classes - 1",
        ge=1,
        le=999,  # ImageNet's classes but the true one; the audit checks the model's own count
    )
    fab_steps: int = option(
        _AU.fab_steps,
        "FAB-T iterations per target class (AutoAttack's)",
        ge=1,
        le=_MAX_ATTACK_STEPS,
    )
    # 200x AutoAttack's 5,000: a million queries per sample over CIFAR-10's test set with
    # WRN-34-10 is about a GPU-week.
    square_queries: int = option(
        _AU.square_queries, "Square Attack query budget per sample", ge=1, le=1_000_000
    )
    check_samples: int = option(
        _AU.check_samples,
        "samples the masking checks attack at other radii",
        ge=1,
        le=_MAX_SAMPLES,
    )
    batch_size: int = option(_AU.batch_size, "attack batch size", ge=1, le=_MAX_BATCH)
    limit: int | None = option(
        None, "audit only the first N test samples", metavar="N", ge=1, le=_MAX_SAMPLES
    )
    seed: int = option(0, "random seed", ge=0, le=_MAX_SEED)
    arch: str | None = option(None, "architecture, for plain weights")
    resize: bool = option(False, _RESIZE_HELP.format(what="model"))

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
            fab_steps=self.fab_steps,
            square_queries=self.square_queries,
            check_samples=self.check_samples,
            fgsm=not self.no_fgsm,
            batch_size=self.batch_size,
            precision=self.precision,
        )


#: CompareConfig's names for the options the CLI and these params name like ``transfer``'s.
_COMPARE_NAMES = {
    "ks": "k",
    "norm_betas": "norm_beta",
    "bn_presets": "bn",
    "augmentation": "augment",
}


@dataclass(frozen=True)
class CompareParams(_FromSource, _Schedule):
    """``cartl compare``: transfer candidates over methods x k x beta x BN preset, one chosen on
    a validation split of the target's training data (see :mod:`cartl_core.compare`).

    ``eps`` (required) and ``norm``: the threat model candidates are audited and chosen in.
    ``k``, ``norm_beta`` and ``bn`` are lists; left out, k lies around the k the source was
    pre-trained for and each method gets its own beta and BN preset. The schedule options
    override each method's default schedule. The chosen model then gets a full audit at ``eps``
    with ``audit_attacks`` (``no_audit`` skips it).
    """

    eps: float | None = option(
        None,
        "attack radius candidates are audited and chosen at (e.g. 8/255)",
        fraction=True,
        cli_required=True,
        gt=0,
        le=_MAX_RADIUS,
    )
    norm: Norm = option(_C.norm, "threat model")
    methods: tuple[TransferMethod, ...] = option(
        cast("tuple[TransferMethod, ...]", _C.methods),
        "transfer methods, comma-separated",
        group=CANDIDATES,
    )
    k: tuple[int, ...] | None = option(
        None,
        "k values, comma-separated",
        default_text="the k the source was pre-trained for (from its header, else "
        f"{_T.k}) {', '.join(f'{o:+d}' for o in COMPARE_K_OFFSETS)}, within the model's blocks",
        group=CANDIDATES,
        ge=1,
        le=_MAX_BLOCKS,
    )
    norm_beta: tuple[float, ...] | None = option(
        None,
        "spectral-norm targets tried with neft and cartl",
        default_text="; ".join(
            f"{m} {','.join(map(str, b))}" for m, b in COMPARE_NORM_BETAS.items()
        ),
        group=CANDIDATES,
        fraction=True,
        gt=0,
        le=_MAX_NORM_BETA,
    )
    bn: tuple[str, ...] | None = option(
        None,
        "BatchNorm presets tried with every method",
        default_text="; ".join(f"{m} {','.join(b)}" for m, b in COMPARE_BN_PRESETS.items()),
        group=CANDIDATES,
        choices=tuple(BN_PRESETS),
    )
    max_candidates: int = option(
        _C.max_candidates,
        "train at most this many, keeping the first by k, then beta, then BN preset, then "
        "method, each in its list's order",
        group=CANDIDATES,
        ge=1,
        # A week holds about a thousand ten-minute candidates (a small target, a few epochs).
        le=1_000,
    )
    max_clean_drop: float = option(
        _C.max_clean_drop,
        "the chosen one's validation clean accuracy is at most this below the best candidate's",
        group=CANDIDATES,
        ge=0,
        le=1.0,
    )
    val_fraction: float = option(
        _C.val_fraction,
        "share of each class's training images held out for validation",
        group=CANDIDATES,
        gt=0,
        lt=1.0,
    )
    audit_attacks: str = option(
        _AU.attacks,
        "the chosen model's full audit at eps: standard, fast, paper or a list",
        metavar="ENSEMBLE",
    )
    audit_precision: Precision = option(_AU.precision, **_AUDIT_HELP["precision"])
    no_audit: bool = option(
        False,
        "skip the chosen model's full audit: its numbers are then the fast ensemble's, "
        "without Square and without checks",
    )

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
            return AuditConfig(
                eps=(config.eps,),
                norm=config.norm,
                attacks=self.audit_attacks,
                precision=self.audit_precision,
            )
        except ConfigError as exc:
            field = "audit_precision" if exc.field == "precision" else "audit_attacks"
            raise ConfigError(str(exc), field=field) from None


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
    values = normalise_values(cls, raw)
    params = cls(**values)
    # The final audit first: a transfer's robust trace takes its radius from the audit's, so a
    # bad audit_eps is reported as itself, not as the trace's.
    if isinstance(params, PretrainParams | TransferParams | CompareParams) and not params.no_audit:
        params.audit_config()
    params.config()  # raises ConfigError naming the field
    return params


def normalise_values(cls: type[Params], raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with fractions written as text turned into numbers and one value where several
    are allowed (the audit's eps) made a list of one; non-finite numbers and numbers outside
    their parameter's bounds (:class:`cartl_core.options.Option`) refused.

    The one check of names' values every path runs first: the CLI, the API and :func:`run_job`.
    Raises :class:`ConfigError` naming the parameter (and, in ``more``, every other one wrong).
    """
    fractions, lists = fraction_fields(cls), list_fields(cls)
    specs = {spec.name: spec for spec in option_specs(cls)}
    out, errors = {}, []
    for name, value in raw.items():
        if name in lists and value is not None:
            value = tuple(value) if isinstance(value, list | tuple) else (value,)
        try:
            if name in fractions:
                value = _numbers(name, value, fraction_value)
            if not _finite(value):
                raise ConfigError(f"{name} must be a finite number; got {value!r}", field=name)
            if name in specs:
                _check_range(specs[name], value)
        except ConfigError as exc:
            errors.append(exc)
        out[name] = value
    if errors:
        first, *more = errors
        raise ConfigError(str(first), field=first.field, more=tuple(more))
    return out


def _numbers(name: str, value: Any, parse: Callable[[str], float]) -> Any:
    if isinstance(value, tuple):
        return tuple(_numbers(name, v, parse) for v in value)
    if isinstance(value, str):
        try:
            return parse(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}", field=name) from None
    return value


def _check_range(spec: OptionSpec, value: Any) -> None:
    items = value if isinstance(value, tuple) else (value,)
    for i, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, int | float):
            continue  # a value of another type is the type check's to name
        problem = out_of_range(spec, item)
        if problem is not None:
            where = f" (item {i})" if isinstance(value, tuple) else ""
            raise ConfigError(f"{spec.name} {problem}{where}", field=spec.name)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(_finite(v) for v in value)
    return True


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
AuditProgressFn = Callable[["AuditEvent"], None]
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


def _stoppable(run: Callable[_P, JobOutcome]) -> Callable[_P, JobOutcome]:
    """``run`` with its ``should_stop`` asked inside every long loop below it (a
    :func:`~cartl_core._stop.stop_when` block around the call)."""

    @functools.wraps(run)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> JobOutcome:
        should_stop = kwargs.get("should_stop")
        with stop_when(should_stop if callable(should_stop) else None):
            return run(*args, **kwargs)

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
@_stoppable
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
    ``should_stop`` is asked at every step of every long loop (data decoding, training batches,
    attack steps and queries): true ends the job with :class:`CancelledError` within one step.
    """
    from cartl_core import audit, load_dataset, load_model, pretrain, save_checkpoint, transfer
    from cartl_core._runtime import prepare_model, resolve_device
    from cartl_core.checkpoints import read_description, trained_threat

    # Params built in code skip parse_params: the same bounds as the CLI's and the API's.
    normalise_values(
        type(params), {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    )
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
            train_accuracy=_train_accuracy(history),
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


def _train_accuracy(history: Sequence[Mapping[str, Any]]) -> float | None:
    """The last epoch's clean accuracy on the training batches, where training measured one (a
    transfer does; adversarial pre-training measures its adversarial accuracy instead)."""
    value = history[-1].get("accuracy") if history else None
    return None if value is None else float(value)


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
        ensemble = table["selection"]["ensemble"]
        outcome.metrics = {
            "clean_accuracy": chosen.test_clean,
            "robust_accuracy": chosen.test_robust,
            "ensemble": ensemble,
            "ensemble_attacks": list(resolve_attacks(ensemble)[1]),
            "eps": table["selection"]["eps"],
            "norm": table["selection"]["norm"],
            "audited": False,
            "headline_notes": [NOT_AUDITED.format(ensemble=ensemble)],
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
            train_accuracy=_train_accuracy(chosen.history),
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


#: What stands beside a compare's numbers when the chosen model was not audited.
NOT_AUDITED = (
    "not audited: the {ensemble} ensemble's number from the candidate audit, without Square and "
    "without the audit's checks; audit the chosen model for the full number"
)


def _summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The job's headline metrics: the ensemble's robust accuracy, which ensemble ran in which
    arithmetic, each attack's own numbers, the failed checks as warnings, and what must stand
    beside the number (``headline_notes``: why it means nothing, where a model check failed)."""
    return {
        "clean_accuracy": report["clean_accuracy"],
        "robust_accuracy": report["robust_accuracy"],
        "worst_case_accuracy": report["worst_case_accuracy"],
        "ensemble": report.get("ensemble"),
        "ensemble_attacks": report.get("ensemble_attacks", []),
        "eps": report.get("eps"),
        "norm": report.get("norm"),
        "samples": report["samples"],
        "precision": report.get("precision", "fp32"),
        "audited": True,
        "attacks": [{k: a.get(k) for k in _ATTACK_SUMMARY} for a in report["attacks"]],
        "warnings": list(report.get("warnings", [])),
        "notes": list(report.get("notes", [])),
        "headline_notes": list(report.get("headline_notes", [])),
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
