"""Pre-training: FDM (the paper's robust source), or plain adversarial training with
``fdm_lambda`` 0, of a new model or of given initial weights."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from cartl_core.config import AttackConfig, FDMConfig
from cartl_core.data import ResizeMethod
from cartl_core.errors import CartlError, ConfigError
from cartl_core.kinds._shared import (
    MAX_BLOCKS,
    MAX_LOSS_WEIGHT,
    MAX_TRAINING_STEPS,
    FinalAudit,
    Schedule,
    Threat,
    Trace,
    check_configs,
    finish_training,
    load_for_data,
    resize_options,
    resize_to,
    training_kwargs,
)
from cartl_core.kinds.base import Inputs, JobKind, JobOutcome, RunContext, register
from cartl_core.kinds.configs import build_config
from cartl_core.kinds.fit import RESIZE_WITHOUT_MODEL, image_size_errors, k_in_range
from cartl_core.models import list_models, model_info
from cartl_core.options import option

__all__ = ["PRETRAIN", "PretrainParams"]

_A, _F = AttackConfig(), FDMConfig()


@dataclass(frozen=True)
class PretrainParams(Schedule, Trace, FinalAudit):
    """``cartl pretrain``: FDM (or, with ``fdm_lambda`` 0, plain adversarial) training."""

    arch: str = option(
        "resnet18-cifar",
        f"architecture: {', '.join(list_models())}",
        cli_required=True,
    )
    k: int = option(_F.k, "number of last blocks that will be fine-tuned", ge=1, le=MAX_BLOCKS)
    fdm_lambda: float = option(
        _F.fdm_lambda,
        "weight of the feature-distance term; 0 = plain adversarial training",
        ge=0,
        le=MAX_LOSS_WEIGHT,
    )
    fdm_reduction: Literal["sum", "mean"] = option(
        _F.reduction, "sum the term over the batch (the release) or average it", to="reduction"
    )
    eps: float = option(
        _A.eps, "training attack radius (Linf)", fraction=True, gt=0, le=1.0, to="attack.eps"
    )
    alpha: float | None = option(
        _A.alpha,
        "training attack step",
        default_text="eps/4, the paper's 2/255 at 8/255",
        fraction=True,
        gt=0,
        le=1.0,
        to="attack.alpha",
    )
    steps: int = option(
        _A.steps, "training attack steps", ge=0, le=MAX_TRAINING_STEPS, to="attack.steps"
    )
    resize: bool | int = option(False, **resize_options("initial model")["resize"])
    resize_method: ResizeMethod = option(
        "bilinear", **resize_options("initial model")["resize_method"]
    )

    @property
    def threat(self) -> Threat:
        return (self.eps, _A.norm)

    def config(self) -> FDMConfig:
        """The trace's radius left unset: the training attack's."""
        config: FDMConfig = build_config(self, FDMConfig)
        return config

    def check(self) -> None:
        check_configs(self)


def _run(params: PretrainParams, ctx: RunContext) -> JobOutcome:
    from cartl_core import load_dataset, pretrain

    out = ctx.needs_out("pretrain")
    if params.resize is True and ctx.checkpoint_path is None:
        raise ConfigError(RESIZE_WITHOUT_MODEL, field="resize")
    data = load_dataset(
        ctx.dataset_path, resize=resize_to(params, ctx.checkpoint_path, ctx.dataset_resize)
    )
    init = None
    if ctx.checkpoint_path is not None:
        init = load_for_data(ctx.checkpoint_path, data, params.resize_method, arch=params.arch)
    result = pretrain(data, params.arch, params.config(), init=init, **training_kwargs(params, ctx))
    return finish_training(result, data, replace(ctx, out_path=out), params, params.threat)


def _fit(params: PretrainParams, inputs: Inputs) -> tuple[PretrainParams, list[ConfigError]]:
    """The architecture is the initial weights' where there are some; k within its blocks."""
    errors = image_size_errors(params.resize, inputs)
    if inputs.checkpoint is not None:
        return params, k_in_range(params.k, inputs.checkpoint.num_blocks) + errors
    c, size = inputs.dataset.input_shape[0], inputs.dataset.input_shape[1]
    if params.resize is not False and params.resize is not True:
        size = params.resize  # the model is built for the resized images
    try:
        blocks = model_info(params.arch, max(inputs.dataset.num_classes, 2), c, size).num_blocks
    except CartlError as exc:
        return params, [ConfigError(str(exc), field="arch"), *errors]
    return params, k_in_range(params.k, blocks) + errors


PRETRAIN = register(
    JobKind(
        name="pretrain",
        summary="FDM pre-training of a robust source (fdm_lambda 0: plain adversarial training)",
        params=PretrainParams,
        run=_run,
        checkpoint="init",
        fit=_fit,
        example={
            "summary": "FDM pre-training of a new resnet18-cifar",
            "params": {"arch": "resnet18-cifar", "k": 4, "fdm_lambda": 0.005, "eps": "8/255"},
        },
    )
)
