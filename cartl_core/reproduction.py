"""The paper's claim in about a minute on a CPU, on scikit-learn's bundled digits.

Source task: digits 0-4; target task: digits 5-9. Two sources are pre-trained with PGD (plain
adversarial training, and FDM), then each is transferred with ordinary fine-tuning (``standard``)
and with CARTL's NEFT (``cartl``), and every model is audited at the training eps: the robust
accuracy is the attack ensemble's (``attacks``, AutoAttack-grade by default), with the paper's
PGD-20 beside it. The paper's claim: standard fine-tuning of an adversarially trained source
loses most of the robustness, CARTL keeps clearly more at about the same clean accuracy.

Digits are 8x8 and coarse, so the threat model is scaled up (Linf eps 0.2 instead of 8/255) and the
schedule shortened; everything else is the paper's method with its defaults.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from cartl_core.audit import AuditReport, audit
from cartl_core.config import (
    AttackConfig,
    AuditConfig,
    FDMConfig,
    ScheduleConfig,
    TraceConfig,
    TransferConfig,
    TransferMethod,
)
from cartl_core.data.digits import digits_task
from cartl_core.training import pretrain, transfer

__all__ = ["DigitsSettings", "ReproductionRow", "digits_reproduction", "format_table"]

# No robust trace: the demo reports only its final audits, and a digits fine-tuning epoch is a
# handful of small batches, so even the trace's 64-sample floor would cost about half an epoch.
_NO_TRACE = TraceConfig(samples=0)


@dataclass(frozen=True)
class DigitsSettings:
    eps: float = 0.2
    k: int = 3
    fdm_lambda: float = 0.05
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    audit_steps: int = 20
    # APGD-CE + APGD-T, with the audit's Square probe for masking: the standard ensemble's
    # 5,000-query Square on hundreds of robust source samples takes minutes on a CPU.
    attacks: str = "fast"
    seed: int = 0
    source_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    target_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    transfers: tuple[TransferMethod, ...] = ("standard", "cartl")


@dataclass(frozen=True)
class ReproductionRow:
    source: str
    transfer: str | None
    clean_accuracy: float
    robust_accuracy: float
    seconds: float
    evaluated_on: str = field(default="target")
    pgd_accuracy: float | None = None
    ensemble: str = "fast"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def digits_reproduction(
    settings: DigitsSettings | None = None,
    *,
    device: str | torch.device | None = "cpu",
    on_row: Callable[[ReproductionRow], None] | None = None,
) -> list[ReproductionRow]:
    s = settings or DigitsSettings()
    source_data = digits_task(s.source_classes, seed=s.seed)
    target_data = digits_task(s.target_classes, seed=s.seed)
    schedule = ScheduleConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr)
    attack = AttackConfig(eps=s.eps, alpha=s.eps / 4, steps=7)
    check = AuditConfig(eps=(s.eps,), steps=s.audit_steps, attacks=s.attacks, fgsm=False)
    rows: list[ReproductionRow] = []

    def emit(row: ReproductionRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for source_name, lam in (("AT", 0.0), ("FDM", s.fdm_lambda)):
        t0 = time.monotonic()
        torch.manual_seed(s.seed)
        fdm = FDMConfig(
            k=s.k,
            fdm_lambda=lam,
            attack=attack,
            schedule=schedule,
            augmentation="none",
            trace=_NO_TRACE,
        )
        src = pretrain(source_data, "small-cnn", fdm, device=device, seed=s.seed).model
        report = audit(src, source_data.test, check)
        emit(
            ReproductionRow(
                source_name,
                None,
                report.clean_accuracy,
                report.robust_accuracy,
                time.monotonic() - t0,
                "source",
                _pgd(report),
                s.attacks,
            )
        )
        for method in s.transfers:
            t0 = time.monotonic()
            torch.manual_seed(s.seed)
            cfg = TransferConfig(
                method=method,
                k=s.k,
                schedule=schedule,
                augmentation="none",
                trace=_NO_TRACE,
            )
            tgt = transfer(src, target_data, cfg, device=device, seed=s.seed).model
            report = audit(tgt, target_data.test, check)
            emit(
                ReproductionRow(
                    source_name,
                    method,
                    report.clean_accuracy,
                    report.robust_accuracy,
                    time.monotonic() - t0,
                    "target",
                    _pgd(report),
                    s.attacks,
                )
            )
    return rows


def _pgd(report: AuditReport) -> float | None:
    """The paper's PGD (a named attack in every audit), for comparison with the ensemble."""
    name = f"pgd-{report.config.get('steps', 20)}"
    return next(
        (a.accuracy for a in report.attacks if a.name == name and a.eps == report.eps), None
    )


def format_table(rows: list[ReproductionRow]) -> str:
    ensemble = rows[0].ensemble if rows else ""
    lines = [
        f"{'source':<8}{'transfer':<12}{'evaluated on':<14}{'clean':>8}"
        f"{'robust':>9}{'PGD-20':>9}{'time s':>8}",
    ]
    for r in rows:
        pgd = f"{r.pgd_accuracy:>9.3f}" if r.pgd_accuracy is not None else f"{'-':>9}"
        lines.append(
            f"{r.source:<8}{r.transfer or '-':<12}{r.evaluated_on:<14}"
            f"{r.clean_accuracy:>8.3f}{r.robust_accuracy:>9.3f}{pgd}{r.seconds:>8.1f}"
        )
    lines.append(f"robust: the {ensemble} ensemble, per-sample worst case; PGD-20: CE, step eps/4")
    return "\n".join(lines)
