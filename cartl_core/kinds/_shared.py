"""What several kinds share: option groups (schedule, trace, final audit, what a transfer asks of
its source), the bounds of numeric parameters, and how a training job's result is audited,
summarised and saved."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from cartl_core.config import (
    ATTACK_NAMES,
    AuditConfig,
    LRShape,
    LwFConfig,
    LwFTune,
    Precision,
    ScheduleConfig,
    TraceConfig,
)
from cartl_core.data._types import MAX_SIDE, MIN_SIDE, Resize, ResizeMethod
from cartl_core.errors import ConfigError
from cartl_core.kinds.base import JobOutcome, RunContext
from cartl_core.kinds.configs import build_config
from cartl_core.options import format_number, option
from cartl_core.stats import accuracy_interval, interval_text

_S, _AU, _TR = ScheduleConfig(), AuditConfig(), TraceConfig()
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
MAX_SAMPLES = 1_000_000
#: Images in one batch: 65,536 MNIST-sized images through a small CNN still fit an 80 GB GPU;
#: 224-px images stop at a few thousand.
MAX_BATCH = 65_536
#: Blocks a fine-tuning reaches: twice ResNet-152's 50 (the model's own count is checked when it
#: is built).
MAX_BLOCKS = 100
#: Steps of one evaluation attack: 100x AutoAttack's 100; PGD-10,000 over ImageNet's validation
#: images with ResNet-50 is still about two GPU-days.
MAX_ATTACK_STEPS = 10_000
#: Steps of an attack run on every batch or epoch (training, the trace): PGD-1,000 training of
#: WRN-34-10 on CIFAR-10 already takes hours per epoch.
MAX_TRAINING_STEPS = 1_000
#: An L2 radius or step (an Linf one is at most 1, as the configs check): the L2 diameter of a
#: 3x512x512 image in [0, 1] is 887.
MAX_RADIUS = 1_000.0
#: A loss term's weight: the release sums the FDM term over the batch, so the same weight
#: averaged is 0.005 x batch size, 330 at the largest batch.
MAX_LOSS_WEIGHT = 1_000.0
#: 32 bits, as NumPy takes: the loaders multiply a seed by 1,000,003 into torch's 64-bit seed.
MAX_SEED = 2**32 - 1
#: A spectral-norm target: the paper's are 0.4 and 0.6; above a layer's own norm a target
#: constrains nothing.
MAX_NORM_BETA = 100.0

#: The audit's options, shared by ``audit`` (``--eps``) and a training's final audit
#: (``--audit-eps``).
AUDIT_HELP: dict[str, dict[str, Any]] = {
    "eps": {
        "help": "attack radius, or several separated by commas",
        "default_text": "the eps the model was made robust at, from its header; else "
        f"{format_number(_AU.eps[0])}",
        "fraction": True,
        "group": AUDIT,
        "gt": 0,
        "le": MAX_RADIUS,
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
        "le": MAX_ATTACK_STEPS,
    },
    "alpha": {
        "help": "PGD step size",
        "default_text": "eps/4, i.e. 2/255 at 8/255",
        "fraction": True,
        "group": AUDIT,
        "gt": 0,
        "le": MAX_RADIUS,
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
RESIZE_HELP = (
    "resize the images first: to SIDE x SIDE pixels, or (true, the flag alone) to the {what}'s "
    "input size. Off, a {what} of another input size resamples them inside itself (at the cost "
    "of a pass at its size), so training and attacks work on the images as they are"
)


def resize_options(what: str) -> dict[str, dict[str, Any]]:
    """The Options of ``resize`` and ``resize_method``, which every kind that reads a dataset
    takes (``what`` names its model: the source, the model, the initial model)."""
    return {
        "resize": {
            "help": RESIZE_HELP.format(what=what),
            "default_text": "off",
            "metavar": "SIDE",
            "ge": MIN_SIDE,
            "le": MAX_SIDE,
        },
        "resize_method": {
            "help": "how images are resized (the data by resize, or inside the model): "
            "bilinear or bicubic (antialiased when shrinking), nearest, area (the mean of the "
            "pixels covered)",
        },
    }


@dataclass(frozen=True)
class Schedule:
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
        to="schedule.epochs",
    )
    batch_size: int | None = option(
        None,
        "batch size",
        default_text=str(_S.batch_size),
        group=SCHEDULE,
        ge=1,
        le=MAX_BATCH,
        to="schedule.batch_size",
    )
    # Linear scaling (Goyal et al.) gives 3.2 at batch 8,192; SGD diverges well before 10.
    lr: float | None = option(
        None,
        "peak learning rate",
        default_text=f"{_S.lr}; lwf: 0.001",
        group=SCHEDULE,
        gt=0,
        le=10.0,
        to="schedule.lr",
    )
    # 10x the largest decays in use (0.1); each SGD step shrinks the weights by lr x decay.
    weight_decay: float | None = option(
        None,
        "weight decay",
        default_text=f"{_S.weight_decay}; lwf: 2e-4",
        group=SCHEDULE,
        ge=0,
        le=1.0,
        to="schedule.weight_decay",
    )
    lr_schedule: LRShape = option(
        _S.shape,
        "step = the paper's warm-up and x0.2 steps; one-cycle = PyTorch's OneCycleLR curve "
        "peaking at lr (not the paper's)",
        group=SCHEDULE,
        to="schedule.shape",
    )
    augment: Augment = option(
        "auto",
        "training augmentation: auto = paper on 3-channel images of 32 px and up, crop on "
        "other images of 16 px and up, none below; paper = crop 4 + flip + rotate 15 deg "
        "(CIFAR); crop = a crop of size/8 px (at least 1); crop-flip; none",
        group=SCHEDULE,
        to="augmentation",
    )
    seed: int = option(0, "random seed", ge=0, le=MAX_SEED)


@dataclass(frozen=True)
class Trace:
    """The robust trace run after every epoch (``trace_samples`` 0 turns it off)."""

    trace_samples: int = option(
        _TR.samples,
        "test samples attacked after each epoch, cut to stay under ~10% of an epoch's cost "
        f"(at least {_TR.min_samples}); 0 turns the trace off",
        group=TRACE,
        ge=0,
        le=MAX_SAMPLES,
        to="trace.samples",
    )
    trace_steps: int = option(
        _TR.steps,
        "PGD steps of the trace, step eps/4",
        group=TRACE,
        ge=1,
        le=MAX_TRAINING_STEPS,
        to="trace.steps",
    )


Threat = tuple[float, str]


def threat_model(
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
class FinalAudit:
    """The audit that ends a training job (``no_audit`` skips it).

    ``audit_eps`` and ``audit_norm`` left out: the threat model the model was made robust
    against (a pre-training's attack; a transfer's source's), else the paper's Linf 8/255.
    """

    audit_eps: tuple[float, ...] | None = option(None, **AUDIT_HELP["eps"])
    audit_attacks: str = option(_AU.attacks, **AUDIT_HELP["attacks"])
    audit_steps: int = option(_AU.steps, **AUDIT_HELP["steps"])
    audit_alpha: float | None = option(_AU.alpha, **AUDIT_HELP["alpha"])
    audit_restarts: int = option(_AU.restarts, **AUDIT_HELP["restarts"])
    audit_norm: Norm | None = option(None, **AUDIT_HELP["norm"])
    audit_precision: Precision = option(_AU.precision, **AUDIT_HELP["precision"])
    no_audit: bool = option(False, "skip the audit at the end")

    def audit_config(self, threat: Threat | None = None) -> AuditConfig:
        """The audit's own options, named with ``audit_``; the threat model resolved."""
        eps, norm = threat_model(self.audit_eps, self.audit_norm, threat)
        config: AuditConfig = build_config(
            self, AuditConfig, prefix="audit_", values={"eps": eps, "norm": norm}
        )
        return config


@dataclass(frozen=True)
class FromSource:
    """What a transfer or a compare asks of its source: LwF's settings, and how to read plain
    weights and fit the target's images to them."""

    lwf_lambda: float = option(
        LwFConfig().lwf_lambda,
        "lwf feature-distance weight",
        ge=0,
        le=MAX_LOSS_WEIGHT,
        to="lwf.lwf_lambda",
    )
    lwf_tune: LwFTune = option(
        LwFConfig().tune,
        "after the head-only epochs, tune the whole model (all, the method's own) or only the "
        "last k blocks",
        to="lwf.tune",
    )
    arch: str | None = option(None, "architecture, for a source of plain weights")
    source_classes: int | None = option(
        None,
        "class count of a plain-weights source",
        default_text="from its last layer",
        ge=1,
        le=100_000,  # ImageNet-21k has 21,841
    )
    resize: bool | int = option(False, **resize_options("source")["resize"])
    resize_method: ResizeMethod = option("bilinear", **resize_options("source")["resize_method"])


def train_accuracy(history: Sequence[Mapping[str, Any]]) -> float | None:
    """The last epoch's clean accuracy on the training batches, where training measured one (a
    transfer does; adversarial pre-training measures its adversarial accuracy instead)."""
    value = history[-1].get("accuracy") if history else None
    return None if value is None else float(value)


def threat_record(threat: Threat | None) -> dict[str, Any]:
    return {} if threat is None else {"threat": {"eps": threat[0], "norm": threat[1]}}


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


def audit_summary(report: Mapping[str, Any]) -> dict[str, Any]:
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
        # 95% Wilson intervals over the samples (computed here for a report older than them).
        "clean_interval": report.get("clean_interval")
        or accuracy_interval(report["clean_accuracy"], report["samples"]),
        "robust_interval": report.get("robust_interval")
        or accuracy_interval(report["robust_accuracy"], report["samples"]),
        "interval": report.get("interval") or interval_text(report["samples"]),
        "precision": report.get("precision", "fp32"),
        "audited": True,
        "attacks": [{k: a.get(k) for k in _ATTACK_SUMMARY} for a in report["attacks"]],
        "warnings": list(report.get("warnings", [])),
        "notes": list(report.get("notes", [])),
        "headline_notes": list(report.get("headline_notes", [])),
    }


def jsonable(obj: Any) -> Any:
    """Round-trip through JSON so tuples become lists and the result is plain data."""
    return json.loads(json.dumps(obj))


def resize_to(
    params: Any, checkpoint_path: Path | None, uploaded: Resize | None = None
) -> Resize | None:
    """How the job resizes its images: to the side ``resize`` names; to the checkpoint's input
    size where it is true and the checkpoint records one (plain weights are built at the data's
    size); else as the dataset was uploaded (``uploaded``), or not at all."""
    from cartl_core.checkpoints import read_description

    resize = getattr(params, "resize", False)
    method: ResizeMethod = getattr(params, "resize_method", "bilinear")
    if resize is False:
        return uploaded
    if resize is not True:
        return Resize(int(resize), method)
    description = None if checkpoint_path is None else read_description(checkpoint_path)
    if description is None:
        return uploaded
    return Resize(int(description["model"]["input_size"]), method)


def load_for_data(checkpoint: Path, data: Any, method: str, **kwargs: Any) -> Any:
    """:func:`cartl_core.load_model` for the job's images (``kwargs``: its other arguments),
    taking them as they are (:func:`fit_input_size`).

    A CARTL checkpoint keeps the size its header records. Plain weights are built at the size
    their published layout was trained at (``origin.trained_input_size``: 224 for an ImageNet
    model, which then upsamples 32-px images inside itself, as robust-transfer studies upsample
    CIFAR), else at the data's.
    """
    from cartl_core import load_model, read_description

    c, h, _ = data.input_shape
    model = load_model(checkpoint, in_channels=c, input_size=h, **kwargs)
    trained = (model.origin or {}).get("trained_input_size")
    if trained and trained != model.spec.input_size and read_description(checkpoint) is None:
        model = load_model(checkpoint, in_channels=c, input_size=int(trained), **kwargs)
    fit_input_size(model, data, method)
    return model


def fit_input_size(model: Any, data: Any, method: str) -> None:
    """Have ``model`` take the data's images as they are: a model built for another size
    resamples them inside itself (:meth:`cartl_core.models.BlockModel.set_input_size`), so
    training and attacks work on the data's pixels. Non-square images are refused: the model
    would be described, and later fed, at one size."""
    _, h, w = data.input_shape
    if h != w:
        raise ConfigError(
            f"the images are {h}x{w}; resize them to a square (resize, e.g. {min(h, w)})",
            field="resize",
        )
    if model.spec.input_size != h:
        model.set_input_size(h, method)


def finish_training(
    result: Any, data: Any, ctx: RunContext, params: Any, threat: Threat | None
) -> JobOutcome:
    """A pre-training's or a transfer's end: the final audit (unless ``no_audit``), the headline
    metrics and the self-describing checkpoint at ``ctx.out_path``."""
    from cartl_core import audit, save_checkpoint

    history = [r.to_dict() for r in result.history]
    outcome = JobOutcome(history=history)
    metrics: dict[str, Any] = {"history": history}
    if not params.no_audit:
        report = audit(
            result.model,
            data.test,
            params.audit_config(threat),
            class_names=data.class_names,
            train_accuracy=train_accuracy(history),
            on_progress=ctx.on_audit_progress,
            processes=ctx.processes,
        )
        outcome.audit = jsonable(report.to_dict())
        metrics.update(
            clean_accuracy=report.clean_accuracy,
            robust_accuracy=report.robust_accuracy,
            audit=outcome.audit,
        )
    outcome.metrics = audit_summary(outcome.audit) if outcome.audit else {}
    if history:
        outcome.metrics["final_epoch"] = history[-1]
    # One list of {name, meaning, detail, source} for every source; others append to it too.
    outcome.metrics.setdefault("warnings", []).extend(
        {**w, "source": "training"} for w in result.warnings
    )
    out = ctx.out_path
    assert out is not None  # the kind's run asked for it before training
    save_checkpoint(
        result.model,
        out,
        class_names=data.class_names,
        # A later audit or transfer of this model defaults to the threat model it is robust in.
        training={**result.training, **threat_record(threat)},
        metrics=metrics,
    )
    outcome.weights = out
    return outcome


def training_kwargs(params: Any, ctx: RunContext) -> dict[str, Any]:
    """The arguments :func:`cartl_core.pretrain` and :func:`cartl_core.transfer` share."""
    return {
        "device": ctx.device,
        "seed": params.seed,
        "state_path": ctx.state_path,
        "on_progress": ctx.on_progress,
        "should_stop": ctx.should_stop,
        "on_epoch": ctx.on_epoch,
        "processes": ctx.processes,
    }


def check_configs(params: Any) -> None:
    """The checks a training kind's ``check()`` runs: its final audit's config first (a
    transfer's robust trace takes its radius from the audit's, so a bad audit_eps is reported as
    itself, not as the trace's), then its own config; each error names its parameter."""
    if not params.no_audit:
        params.audit_config()
    params.config()
