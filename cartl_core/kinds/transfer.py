"""Transfer: fine-tune a source on the target with one of the four methods (standard, LwF,
NEFT, CARTL), then audit the result in the source's threat model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from cartl_core.config import BN_PRESETS, TransferConfig, TransferMethod
from cartl_core.errors import ConfigError
from cartl_core.kinds._shared import (
    MAX_BLOCKS,
    MAX_NORM_BETA,
    FinalAudit,
    FromSource,
    Schedule,
    Threat,
    Trace,
    check_configs,
    finish_training,
    resize_to,
    threat_model,
    training_kwargs,
)
from cartl_core.kinds.base import Inputs, JobKind, JobOutcome, RunContext, register
from cartl_core.kinds.configs import build_config
from cartl_core.kinds.fit import image_size_errors, k_in_range, residual_scale_error
from cartl_core.options import option

__all__ = ["TRANSFER", "TransferParams"]

_T = TransferConfig()


@dataclass(frozen=True)
class TransferParams(FromSource, Schedule, Trace, FinalAudit):
    """``cartl transfer``: fine-tune a source on the target with one of the four methods."""

    method: TransferMethod = option(_T.method, "transfer method")
    k: int | None = option(
        None,
        "number of last blocks to fine-tune",
        default_text=f"the k the source was pre-trained for, from its header; else {_T.k}",
        ge=1,
        le=MAX_BLOCKS,
    )
    norm_beta: float | None = option(
        None,
        "spectral-norm target for neft/cartl",
        default_text="neft 0.6, cartl 0.4",
        gt=0,
        le=MAX_NORM_BETA,
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
        """``threat``: the source's threat model, the trace's radius unless the audit names one.
        The schedule options override the method's own schedule."""
        eps, norm = threat_model(self.audit_eps, self.audit_norm, threat)
        config: TransferConfig = build_config(
            self,
            TransferConfig,
            bases={"schedule": TransferConfig(method=self.method).resolved_schedule()},
            # The threat model the final audit will judge it by (its first radius).
            values={"trace.eps": eps[0] if eps else None, "trace.norm": norm},
        )
        return config

    def check(self) -> None:
        check_configs(self)


def _run(params: TransferParams, ctx: RunContext) -> JobOutcome:
    from cartl_core import load_dataset, load_model, transfer
    from cartl_core.checkpoints import read_description, trained_threat
    from cartl_core.compare import pretrained_k

    out = ctx.needs_out("transfer")
    checkpoint = ctx.needs_checkpoint("transfer", "source checkpoint")
    data = load_dataset(ctx.dataset_path, resize=resize_to(params, checkpoint))
    c, h, _ = data.input_shape
    source = load_model(
        checkpoint, arch=params.arch, num_classes=params.source_classes, in_channels=c, input_size=h
    )
    description = read_description(checkpoint)
    if params.k is None:
        params = replace(params, k=source_k(pretrained_k(description)))
    threat = trained_threat(description)
    result = transfer(source, data, params.config(threat), **training_kwargs(params, ctx))
    return finish_training(result, data, replace(ctx, out_path=out), params, threat)


def source_k(pretrained: int | None) -> int:
    """The k a transfer that names none tunes: the one its source was pre-trained for (FDM
    shaped those blocks' input features; compare centres its k values on it), else the paper's."""
    return _T.k if pretrained is None else pretrained


def _fit(params: TransferParams, inputs: Inputs) -> tuple[TransferParams, list[ConfigError]]:
    checkpoint = inputs.checkpoint
    assert checkpoint is not None  # a source is required
    if params.k is None:  # stored resolved, so the job's params say which k it tunes
        params = replace(params, k=source_k(checkpoint.pretrained_k))
    errors = k_in_range(params.k, checkpoint.num_blocks)
    if params.config().resolved_residual_scale() != 1.0:
        errors += residual_scale_error(checkpoint, "residual_scale", "set residual_scale to 1")
    return params, errors + image_size_errors(params.resize, inputs)


TRANSFER = register(
    JobKind(
        name="transfer",
        summary="fine-tune a source on the target: standard, LwF, NEFT or CARTL",
        params=TransferParams,
        run=_run,
        checkpoint="source",
        fit=_fit,
        example={
            "summary": "CARTL transfer of the last 4 blocks",
            "params": {"method": "cartl", "k": 4, "epochs": 20, "audit_eps": "8/255"},
        },
    )
)
