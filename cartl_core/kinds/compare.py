"""Compare: transfer candidates over methods x k x beta x BN preset, one chosen on a validation
split of the target's training data (see :mod:`cartl_core.compare`), then fully audited."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from cartl_core.config import (
    BN_PRESETS,
    COMPARE_BN_PRESETS,
    COMPARE_CENTRE_K_ONLY,
    COMPARE_K_OFFSETS,
    COMPARE_NORM_BETAS,
    AuditConfig,
    CompareConfig,
    Precision,
    TransferConfig,
    TransferMethod,
    resolve_attacks,
)
from cartl_core.errors import ConfigError
from cartl_core.kinds._shared import (
    AUDIT_HELP,
    CANDIDATES,
    MAX_BLOCKS,
    MAX_NORM_BETA,
    MAX_RADIUS,
    NOT_AUDITED,
    FromSource,
    Norm,
    Schedule,
    audit_summary,
    jsonable,
    load_for_data,
    resize_to,
    threat_record,
    train_accuracy,
)
from cartl_core.kinds.base import Inputs, JobKind, JobOutcome, RunContext, register
from cartl_core.kinds.configs import build_config
from cartl_core.kinds.fit import image_size_errors, k_in_range, residual_scale_error
from cartl_core.options import option
from cartl_core.stats import interval_text

__all__ = ["COMPARE", "CompareParams"]

_AU, _C, _T = AuditConfig(), CompareConfig(), TransferConfig()


@dataclass(frozen=True)
class CompareParams(FromSource, Schedule):
    """``cartl compare``: transfer candidates over methods x k x beta x BN preset, one chosen on
    a validation split of the target's training data (see :mod:`cartl_core.compare`).

    ``eps`` (required) and ``norm``: the threat model candidates are audited and chosen in.
    ``k``, ``norm_beta`` and ``bn`` are lists; left out, k lies around the k the source was
    pre-trained for and each method gets its own beta and BN preset. The schedule options
    override each method's default schedule. The chosen model then gets a full audit at ``eps``
    with ``audit_attacks`` (``no_audit`` skips it). ``max_cost``: device-seconds for all the
    candidates' training and validation audits; candidates whose estimate does not fit are
    dropped before anything trains (``CompareConfig.max_cost_seconds``; on a CPU, 2 h unless
    named).
    """

    eps: float | None = option(
        None,
        "attack radius candidates are audited and chosen at (e.g. 8/255)",
        fraction=True,
        cli_required=True,
        gt=0,
        le=MAX_RADIUS,
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
        f"{_T.k}) {', '.join(f'{o:+d}' for o in COMPARE_K_OFFSETS)}, within the model's blocks "
        f"({' and '.join(COMPARE_CENTRE_K_ONLY)}: the first only)",
        group=CANDIDATES,
        ge=1,
        le=MAX_BLOCKS,
        to="ks",
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
        le=MAX_NORM_BETA,
        to="norm_betas",
    )
    bn: tuple[str, ...] | None = option(
        None,
        "BatchNorm presets tried with every method",
        default_text="; ".join(f"{m} {','.join(b)}" for m, b in COMPARE_BN_PRESETS.items()),
        group=CANDIDATES,
        choices=tuple(BN_PRESETS),
        to="bn_presets",
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
        "leave out candidates whose validation clean accuracy is below the best candidate's by "
        "more than this, beyond noise (at the choice's confidence)",
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
    min_val_samples: int = option(
        _C.min_val_samples,
        "hold out at least this many training images for validation where val_fraction gives "
        "fewer (never more than a third of them): 200 bound one accuracy's 95% interval at "
        "+-6.9 points",
        group=CANDIDATES,
        ge=0,
        le=1_000_000,
    )
    confidence: float = option(
        _C.confidence,
        "the choice keeps the preferred (least training work) candidate unless another is more "
        "robust on validation at this one-sided confidence (paired exact test, Holm-corrected)",
        group=CANDIDATES,
        gt=0.5,
        lt=1.0,
    )
    max_cost: float | None = option(
        None,
        "budget in device-seconds for every candidate's training and validation audit, "
        "together: candidates whose estimated cost does not fit (in priority order) are dropped "
        "before training, and the estimate names them",
        default_text="2 h (7200) on a CPU, none on a GPU",
        group=CANDIDATES,
        gt=0,
        # Thirty days of one device: longer runs are split into several comparisons.
        le=30 * 24 * 3600,
        to="max_cost_seconds",
    )
    audit_attacks: str = option(
        _AU.attacks,
        "the chosen model's full audit at eps: standard, fast, paper or a list",
        metavar="ENSEMBLE",
    )
    audit_precision: Precision = option(_AU.precision, **AUDIT_HELP["precision"])
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
        config: CompareConfig = build_config(self, CompareConfig)
        return config

    def audit_config(self) -> AuditConfig:
        """The chosen model's full audit, in the comparison's threat model."""
        config = self.config()
        audit: AuditConfig = build_config(
            self, AuditConfig, prefix="audit_", values={"eps": (config.eps,), "norm": config.norm}
        )
        return audit

    def check(self) -> None:
        self.config()
        if not self.no_audit:
            self.audit_config()


def _run(params: CompareParams, ctx: RunContext) -> JobOutcome:
    """Candidates to ``ctx.extra_dir`` (default: beside the output), the chosen one (with its
    full audit) to ``ctx.out_path``."""
    from cartl_core import audit, load_dataset, read_description, save_checkpoint
    from cartl_core._runtime import prepare_model, resolve_device
    from cartl_core.compare import compare, pretrained_k
    from cartl_core.provenance import sha256_file

    out_path = ctx.needs_out("compare")
    checkpoint_path = ctx.needs_checkpoint("compare", "source checkpoint")
    data = load_dataset(
        ctx.dataset_path, resize=resize_to(params, checkpoint_path, ctx.dataset_resize)
    )
    source = load_for_data(
        checkpoint_path,
        data,
        params.resize_method,
        arch=params.arch,
        num_classes=params.source_classes,
    )
    result = compare(
        source,
        data,
        params.config(),
        device=ctx.device,
        seed=params.seed,
        centre_k=pretrained_k(read_description(checkpoint_path)),
        out_dir=ctx.extra_dir or out_path.parent,
        on_progress=ctx.on_progress,
        should_stop=ctx.should_stop,
        processes=ctx.processes,
    )
    table = jsonable(result.to_dict())
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
            "samples": chosen.test_samples,
            "clean_interval": table["chosen"]["test_clean_interval"],
            "robust_interval": table["chosen"]["test_robust_interval"],
            "interval": interval_text(chosen.test_samples),
            "audited": False,
            "headline_notes": [NOT_AUDITED.format(ensemble=ensemble)],
            "warnings": [],
        }
        metrics.update(clean_accuracy=chosen.test_clean, robust_accuracy=chosen.test_robust)
    else:
        model = result.model
        prepare_model(model, resolve_device(ctx.device))
        torch.manual_seed(params.seed)
        report = audit(
            model,
            data.test,
            params.audit_config(),
            class_names=data.class_names,
            train_accuracy=train_accuracy(chosen.history),
            on_progress=ctx.on_audit_progress,
            seed=params.seed,
            processes=ctx.processes,
        )
        outcome.audit = jsonable(report.to_dict())
        outcome.metrics = audit_summary(outcome.audit)
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
            **threat_record(None if params.eps is None else (params.eps, params.norm)),
        },
        metrics=metrics,
    )
    # chosen.safetensors holds the full audit the candidate's own file lacks: another file.
    table["chosen"]["sha256"] = sha256_file(out_path)
    outcome.weights = out_path
    return outcome


def _fit(params: CompareParams, inputs: Inputs) -> tuple[CompareParams, list[ConfigError]]:
    checkpoint = inputs.checkpoint
    assert checkpoint is not None  # a source is required
    errors = k_in_range(params.k, checkpoint.num_blocks)
    if {"neft", "cartl"} & set(params.methods):  # they average the tuned blocks' residuals
        errors += residual_scale_error(checkpoint, "methods", "leave neft and cartl out")
    return params, errors + image_size_errors(params.resize, inputs)


COMPARE = register(
    JobKind(
        name="compare",
        summary="train transfer candidates (methods x k x beta x BN) and choose one on held-out "
        "training data",
        params=CompareParams,
        run=_run,
        checkpoint="source",
        fit=_fit,
        progress="candidates",
        candidates=True,
        example={
            "summary": "Choose among standard, LwF, NEFT and CARTL transfers at k 3 and 4",
            "params": {"eps": "8/255", "k": [3, 4], "epochs": 20, "max_clean_drop": 0.05},
        },
    )
)
