"""Audit: clean accuracy, the attack ensemble (per-sample worst case), the paper's PGD and FGSM
as named attacks, and the masking checks, on a model's test split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cartl_core.config import AuditConfig, Precision
from cartl_core.data import ResizeMethod
from cartl_core.errors import ConfigError
from cartl_core.kinds._shared import (
    AUDIT_HELP,
    MAX_ATTACK_STEPS,
    MAX_BATCH,
    MAX_SAMPLES,
    MAX_SEED,
    Norm,
    Threat,
    audit_summary,
    jsonable,
    load_for_data,
    resize_options,
    resize_to,
    threat_model,
)
from cartl_core.kinds.base import Inputs, JobKind, JobOutcome, RunContext, register
from cartl_core.kinds.configs import build_config
from cartl_core.kinds.fit import image_size_errors
from cartl_core.options import option

__all__ = ["AUDIT", "AuditParams"]

_AU = AuditConfig()


@dataclass(frozen=True)
class AuditParams:
    """``cartl audit``: clean accuracy, the attack ensemble (per-sample worst case), the paper's
    PGD and FGSM as named attacks, and the masking checks, on the test split."""

    eps: tuple[float, ...] | None = option(None, **AUDIT_HELP["eps"])
    attacks: str = option(_AU.attacks, **AUDIT_HELP["attacks"])
    steps: int = option(_AU.steps, **AUDIT_HELP["steps"])
    alpha: float | None = option(_AU.alpha, **AUDIT_HELP["alpha"])
    restarts: int = option(_AU.restarts, **AUDIT_HELP["restarts"])
    norm: Norm | None = option(None, **AUDIT_HELP["norm"])
    precision: Precision = option(_AU.precision, **AUDIT_HELP["precision"])
    no_fgsm: bool = option(False, "skip FGSM")
    apgd_steps: int = option(
        _AU.apgd_steps, "APGD iterations per run (AutoAttack's)", ge=1, le=MAX_ATTACK_STEPS
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
        le=MAX_ATTACK_STEPS,
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
        le=MAX_SAMPLES,
    )
    batch_size: int = option(_AU.batch_size, "attack batch size", ge=1, le=MAX_BATCH)
    limit: int | None = option(
        None, "audit only the first N test samples", metavar="N", ge=1, le=MAX_SAMPLES
    )
    seed: int = option(0, "random seed", ge=0, le=MAX_SEED)
    arch: str | None = option(None, "architecture, for plain weights")
    resize: bool | int = option(False, **resize_options("model")["resize"])
    resize_method: ResizeMethod = option("bilinear", **resize_options("model")["resize_method"])

    def config(self, threat: Threat | None = None) -> AuditConfig:
        """``threat``: the checkpoint's own threat model, used where ``eps``/``norm`` are unset."""
        eps, norm = threat_model(self.eps, self.norm, threat)
        config: AuditConfig = build_config(
            self, AuditConfig, values={"eps": eps, "norm": norm, "fgsm": not self.no_fgsm}
        )
        return config

    def check(self) -> None:
        self.config()


def _run(params: AuditParams, ctx: RunContext) -> JobOutcome:
    from cartl_core import audit, load_dataset
    from cartl_core._runtime import prepare_model, resolve_device
    from cartl_core.checkpoints import read_description, trained_threat

    checkpoint = ctx.needs_checkpoint("audit")
    data = load_dataset(ctx.dataset_path, resize=resize_to(params, checkpoint, ctx.dataset_resize))
    c, h, w = data.input_shape
    # A model of another input size resamples the images inside itself: the attacks perturb
    # the images as they are.
    model = load_for_data(checkpoint, data, params.resize_method, arch=params.arch)
    model.check_input(c)
    model.check_input_size(h, w)
    prepare_model(model, resolve_device(ctx.device))
    split = data.test
    if params.limit is not None:
        split = split.subset(torch.arange(min(params.limit, len(split))))
    torch.manual_seed(params.seed)
    report = audit(
        model,
        split,
        params.config(trained_threat(read_description(checkpoint))),
        class_names=data.class_names,
        on_progress=ctx.on_audit_progress,
        seed=params.seed,
        processes=ctx.processes,
    )
    rep = jsonable(report.to_dict())
    return JobOutcome(metrics=audit_summary(rep), audit=rep)


def _fit(params: AuditParams, inputs: Inputs) -> tuple[AuditParams, list[ConfigError]]:
    return params, image_size_errors(params.resize, inputs)


AUDIT = register(
    JobKind(
        name="audit",
        summary="clean and robust accuracy: the attack ensemble, PGD, FGSM and masking checks",
        params=AuditParams,
        run=_run,
        checkpoint="model",
        fit=_fit,
        progress="none",
        makes_weights=False,
        example={
            "summary": "PGD-20 audit at two radii",
            "params": {"eps": ["4/255", "8/255"], "steps": 20},
        },
    )
)
