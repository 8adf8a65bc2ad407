"""Transfer: fine-tune a source on the target with one of the six methods (standard, LwF,
NEFT, CARTL, adversarial and TRADES fine-tuning), then audit the result in the source's threat
model (an adversarially fine-tuned model's: its training attack's)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, cast

from cartl_core.config import (
    ADVERSARIAL_METHODS,
    BN_PRESETS,
    AttackConfig,
    TransferConfig,
    TransferMethod,
)
from cartl_core.errors import ConfigError
from cartl_core.kinds._shared import (
    MAX_BLOCKS,
    MAX_LOSS_WEIGHT,
    MAX_NORM_BETA,
    MAX_RADIUS,
    MAX_TRAINING_STEPS,
    FinalAudit,
    FromSource,
    Norm,
    Schedule,
    Threat,
    Trace,
    check_configs,
    finish_training,
    load_for_data,
    resize_to,
    threat_model,
    training_kwargs,
)
from cartl_core.kinds.base import Inputs, JobKind, JobOutcome, RunContext, register
from cartl_core.kinds.configs import build_config
from cartl_core.kinds.fit import image_size_errors, k_in_range, residual_scale_error
from cartl_core.options import option

__all__ = ["TRANSFER", "TransferParams"]

_T, _A = TransferConfig(), AttackConfig()
ADVERSARIAL = "adversarial and TRADES fine-tuning's training attack (PGD; other methods ignore it)"


@dataclass(frozen=True)
class TransferParams(FromSource, Schedule, Trace, FinalAudit):
    """``cartl transfer``: fine-tune a source on the target with one of the six methods.

    ``train_eps``/``train_norm`` left out: adversarial fine-tuning trains in the source's threat
    model (from its header), else the paper's Linf 8/255."""

    method: TransferMethod = option(_T.method, "transfer method")
    k: int | None = option(
        None,
        "number of last blocks to fine-tune",
        default_text=f"the k the source was pre-trained for, from its header; else {_T.k}",
        ge=1,
        le=MAX_BLOCKS,
    )
    source_eps: float | None = option(
        None,
        "the radius the source is robust at, for weights that do not record it (RobustBench, "
        "MadryLab robustness, timm files: e.g. 8/255 for RobustBench's Linf CIFAR-10 entries); "
        "the final audit's, the trace's and adversarial fine-tuning's default, recorded in the "
        "result",
        default_text="the source's, from its header; none for plain weights",
        fraction=True,
        gt=0,
        le=MAX_RADIUS,
    )
    source_norm: Norm | None = option(
        None, "the threat model of source_eps", default_text="linf with source_eps"
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
        default_text="standard source-stats, neft trainable, cartl frozen, lwf, adversarial "
        "and trades trainable",
        choices=tuple(BN_PRESETS),
    )
    train_eps: float | None = option(
        None,
        "attack radius adversarial fine-tuning trains against",
        default_text="the source's, from its header; else 8/255",
        fraction=True,
        group=ADVERSARIAL,
        gt=0,
        le=MAX_RADIUS,
        to="attack.eps",
    )
    train_norm: Norm | None = option(
        None,
        "threat model adversarial fine-tuning trains against",
        default_text="the source's, from its header; else linf",
        group=ADVERSARIAL,
        to="attack.norm",
    )
    train_steps: int = option(
        _A.steps,
        "PGD steps per training batch",
        group=ADVERSARIAL,
        ge=1,
        le=MAX_TRAINING_STEPS,
        to="attack.steps",
    )
    train_alpha: float | None = option(
        None,
        "PGD step size",
        default_text="train eps/4",
        fraction=True,
        group=ADVERSARIAL,
        gt=0,
        le=MAX_RADIUS,
        to="attack.alpha",
    )
    trades_beta: float = option(
        _T.trades_beta,
        "TRADES' weight of KL(f(x') || f(x)) beside the clean CE (Zhang et al.'s CIFAR-10 value)",
        group=ADVERSARIAL,
        ge=0,
        le=MAX_LOSS_WEIGHT,
    )

    def config(self, threat: Threat | None = None) -> TransferConfig:
        """``threat``: the source's threat model, the trace's radius unless the audit names one.
        The schedule options override the method's own schedule."""
        train = self.training_threat(threat)
        if train is not None:
            _check_training_threat(train)  # before the trace, which takes its radius from it
            threat = train  # what the model is made robust in, so what the audit judges
        eps, norm = threat_model(self.audit_eps, self.audit_norm, threat)
        # The threat model the final audit will judge it by (its first radius).
        values: dict[str, object] = {"trace.eps": eps[0] if eps else None, "trace.norm": norm}
        if train is not None:
            values.update({"attack.eps": train[0], "attack.norm": train[1]})
        config: TransferConfig = build_config(
            self,
            TransferConfig,
            bases={"schedule": TransferConfig(method=self.method).resolved_schedule()},
            values=values,
        )
        if train is None:
            config = config.with_(attack=None)  # clean methods train against no attack
        return config

    def training_threat(self, threat: Threat | None) -> Threat | None:
        """The threat model adversarial (and TRADES) fine-tuning trains in: as given, else the
        source's (``threat``), else the paper's; None for the methods that train on clean data."""
        if self.method not in ADVERSARIAL_METHODS:
            return None
        eps, norm = threat_model(
            None if self.train_eps is None else (self.train_eps,), self.train_norm, threat
        )
        return eps[0], norm

    def source_threat(self, recorded: Threat | None) -> Threat | None:
        """The source's threat model: as the user states it (``source_eps``, ``source_norm``),
        else as its header records it (``recorded``); None for plain weights stated nothing of."""
        if self.source_eps is None:
            if self.source_norm is not None:
                raise ConfigError(
                    "source_norm needs source_eps, the radius the source is robust at",
                    field="source_eps",
                )
            return recorded
        norm = self.source_norm or "linf"
        if norm == "linf" and self.source_eps > 1:
            raise ConfigError(
                f"source_eps {self.source_eps:g} is beyond the [0, 1] image range for linf; "
                "give it on that scale (8/255, not 8)",
                field="source_eps",
            )
        return self.source_eps, norm

    def check(self) -> None:
        self.source_threat(None)
        check_configs(self)


def _check_training_threat(threat: Threat) -> None:
    try:
        AttackConfig(eps=threat[0], norm=cast(Norm, threat[1]))
    except ConfigError as exc:
        field = None if exc.field is None else f"train_{exc.field}"
        raise ConfigError(str(exc), field=field) from None


def _run(params: TransferParams, ctx: RunContext) -> JobOutcome:
    from cartl_core import load_dataset, transfer
    from cartl_core.checkpoints import read_description, trained_threat
    from cartl_core.compare import pretrained_k

    out = ctx.needs_out("transfer")
    checkpoint = ctx.needs_checkpoint("transfer", "source checkpoint")
    data = load_dataset(ctx.dataset_path, resize=resize_to(params, checkpoint, ctx.dataset_resize))
    source = load_for_data(
        checkpoint, data, params.resize_method, arch=params.arch, num_classes=params.source_classes
    )
    description = read_description(checkpoint)
    if params.k is None:
        params = replace(params, k=source_k(pretrained_k(description)))
    # Published weights do not record their threat model: the user states it.
    threat = params.source_threat(trained_threat(description))
    result = transfer(source, data, params.config(threat), **training_kwargs(params, ctx))
    # An adversarially fine-tuned model is robust in its own training attack's threat model.
    threat = params.training_threat(threat) or threat
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
        summary="fine-tune a source on the target: standard, LwF, NEFT, CARTL, adversarial or "
        "TRADES fine-tuning",
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
