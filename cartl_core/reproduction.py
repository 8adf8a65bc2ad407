"""The paper's claim in a few minutes on a CPU, on scikit-learn's bundled digits.

Source task: digits 0-4; target task: digits 5-9. Two sources are pre-trained with PGD (plain
adversarial training ``AT``, and FDM) and audited on the source task. The baseline the paper argues
against is ordinary fine-tuning (``standard``) of the AT source. CARTL's side is what a user of this
product would run: :func:`~cartl_core.compare.compare` from the FDM source, which trains candidate
transfers (methods x k around the source's k x beta x BN preset), audits each on a validation split
held out from the target's training images, and chooses the most robust one within
``max_clean_drop`` of the best validation clean accuracy. The chosen model is then audited on the
target's test split exactly like the baseline, so the two rows compare.

Every audit runs at the training eps: the robust accuracy is the attack ensemble's (``attacks``,
``fast`` by default: APGD-CE then APGD-T, AutoAttack's two gradient attacks), with the paper's
PGD-20 beside it. The paper's claim: standard fine-tuning of an adversarially trained source loses
most of the robustness, CARTL keeps clearly more at about the same clean accuracy.

Digits are 8x8 and coarse, so the threat model is scaled up (Linf eps 0.2 instead of 8/255) and the
schedule shortened; everything else is the paper's method with its defaults.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from cartl_core._runtime import model_device
from cartl_core.audit import AuditReport, audit
from cartl_core.audit import ProgressFn as AuditProgressFn
from cartl_core.compare import CompareProgressFn, CompareResult, compare
from cartl_core.config import (
    AttackConfig,
    AuditConfig,
    CompareConfig,
    FDMConfig,
    ScheduleConfig,
    TraceConfig,
    TransferConfig,
)
from cartl_core.data import Dataset
from cartl_core.data.digits import digits_task
from cartl_core.models import BlockModel
from cartl_core.stats import accuracy_cell, accuracy_interval
from cartl_core.training import pretrain, transfer
from cartl_core.training.loop import ProgressFn

__all__ = [
    "DemoResult",
    "DigitsSettings",
    "ReproductionRow",
    "digits_reproduction",
    "format_table",
]

# No robust trace: the demo reports only its final audits, and a digits fine-tuning epoch is a
# handful of small batches, so even the trace's 64-sample floor would cost about half an epoch.
_NO_TRACE = TraceConfig(samples=0)


@dataclass(frozen=True)
class DigitsSettings:
    """``k``: the k FDM separates at, the baseline's k and the centre of compare's k list.
    ``compare_methods``: the methods compare tries from the FDM source (neft is left out by
    default to keep the demo within a few minutes on a CPU; CARTL is NEFT plus FDM)."""

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
    compare_methods: tuple[str, ...] = ("standard", "cartl")
    max_clean_drop: float = CompareConfig.max_clean_drop


@dataclass(frozen=True)
class ReproductionRow:
    """One audited model. ``transfer`` is None for a source, ``"compare"`` for compare's choice
    (``candidate`` names it)."""

    source: str
    transfer: str | None
    clean_accuracy: float
    robust_accuracy: float
    seconds: float
    evaluated_on: str = field(default="target")
    pgd_accuracy: float | None = None
    ensemble: str = "fast"
    candidate: str | None = None
    #: Test images audited (0: not recorded); the intervals are 95% Wilson intervals over them.
    samples: int = 0

    @property
    def clean_interval(self) -> list[float] | None:
        return accuracy_interval(self.clean_accuracy, self.samples) if self.samples else None

    @property
    def robust_interval(self) -> list[float] | None:
        return accuracy_interval(self.robust_accuracy, self.samples) if self.samples else None

    @property
    def label(self) -> str:
        """What the row's model is, e.g. ``standard`` or ``compare: cartl-k3-b0.4-frozen``."""
        if self.transfer is None:
            return "-"
        return f"{self.transfer}: {self.candidate}" if self.candidate else self.transfer

    def to_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "clean_interval": self.clean_interval,
            "robust_interval": self.robust_interval,
        }


@dataclass
class DemoResult:
    """The audited rows (sources, the baseline, compare's choice) and the comparison behind the
    choice (every candidate with its validation and test accuracies, and the selection)."""

    rows: list[ReproductionRow]
    comparison: CompareResult
    seconds: float

    def row(self, source: str, transfer: str | None) -> ReproductionRow:
        return next(r for r in self.rows if (r.source, r.transfer) == (source, transfer))

    @property
    def chosen(self) -> ReproductionRow:
        return self.row("FDM", "compare")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "compare": self.comparison.to_dict(),
            "seconds": self.seconds,
        }

    def table(self) -> str:
        """The rows, then compare's candidates with the chosen one marked and why."""
        c = self.comparison
        return "\n".join(
            [
                format_table(self.rows),
                "",
                f"compare from the FDM source, chosen on {c.selection['val_samples']} held-out "
                f"training images ({c.selection['ensemble']} ensemble); test columns for the "
                "report only:",
                c.table(),
                f"chosen: {c.selection['reason']}",
                f"demo total {self.seconds:.0f} s",
            ]
        )


def digits_reproduction(
    settings: DigitsSettings | None = None,
    *,
    device: str | torch.device | None = "cpu",
    on_row: Callable[[ReproductionRow], None] | None = None,
    on_compare: CompareProgressFn | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_train: ProgressFn | None = None,
    on_audit: AuditProgressFn | None = None,
) -> DemoResult:
    """Run the demo; ``on_row`` gets each audited row as it is done, ``on_compare`` the
    comparison's progress (see :class:`~cartl_core.compare.CompareEvent`), ``on_stage`` a line
    as each step starts, ``on_train`` and ``on_audit`` the trainings' and audits' progress."""
    s = settings or DigitsSettings()
    started = time.monotonic()

    def stage(text: str) -> None:
        if on_stage is not None:
            on_stage(text)

    source_data = digits_task(s.source_classes, seed=s.seed)
    target_data = digits_task(s.target_classes, seed=s.seed)
    check = AuditConfig(eps=(s.eps,), steps=s.audit_steps, attacks=s.attacks, fgsm=False)
    rows: list[ReproductionRow] = []

    def audited(
        model: BlockModel,
        t0: float,
        source: str,
        transfer: str | None = None,
        candidate: str | None = None,
    ) -> None:
        on_source = transfer is None
        what = source if on_source else f"{source} -> {transfer}"
        stage(f"auditing {what} ({s.attacks} ensemble at eps {s.eps:g})")
        test = (source_data if on_source else target_data).test
        report = audit(model, test, check, on_progress=on_audit)
        row = ReproductionRow(
            source,
            transfer,
            report.clean_accuracy,
            report.robust_accuracy,
            time.monotonic() - t0,
            "source" if on_source else "target",
            _pgd(report),
            s.attacks,
            candidate,
            report.samples,
        )
        rows.append(row)
        if on_row is not None:
            on_row(row)

    t0 = time.monotonic()
    stage(f"1/4 adversarial training of the AT source on digits 0-4 (PGD-7, {s.epochs} epochs)")
    at_source = _source(s, source_data, 0.0, device, on_train)
    audited(at_source, t0, "AT")
    t0 = time.monotonic()
    stage(f"2/4 standard fine-tuning of the AT source on digits 5-9 (k {s.k}, {s.epochs} epochs)")
    torch.manual_seed(s.seed)
    baseline = TransferConfig(
        method="standard", k=s.k, schedule=_schedule(s), augmentation="none", trace=_NO_TRACE
    )
    at_standard = transfer(
        at_source, target_data, baseline, device=device, seed=s.seed, on_progress=on_train
    ).model
    audited(at_standard, t0, "AT", "standard")

    t0 = time.monotonic()
    stage(f"3/4 FDM training of the source on digits 0-4 (lambda {s.fdm_lambda:g}, k {s.k})")
    fdm_source = _source(s, source_data, s.fdm_lambda, device, on_train)
    audited(fdm_source, t0, "FDM")
    t0 = time.monotonic()
    stage(f"4/4 compare from the FDM source: {', '.join(s.compare_methods)}")
    candidates = CompareConfig(
        eps=s.eps,
        methods=s.compare_methods,
        max_clean_drop=s.max_clean_drop,
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        augmentation="none",
    )
    comparison = compare(
        fdm_source,
        target_data,
        candidates,
        device=device,
        seed=s.seed,
        centre_k=s.k,
        on_progress=on_compare,
    )
    chosen = comparison.model.to(model_device(fdm_source))
    audited(chosen, t0, "FDM", "compare", comparison.chosen.name)
    return DemoResult(rows, comparison, time.monotonic() - started)


def _schedule(s: DigitsSettings) -> ScheduleConfig:
    return ScheduleConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr)


def _source(
    s: DigitsSettings,
    data: Dataset,
    fdm_lambda: float,
    device: str | torch.device | None,
    on_train: ProgressFn | None = None,
) -> BlockModel:
    """A source pre-trained with PGD-7 (step eps/4): plain adversarial training at lambda 0."""
    torch.manual_seed(s.seed)
    fdm = FDMConfig(
        k=s.k,
        fdm_lambda=fdm_lambda,
        attack=AttackConfig(eps=s.eps, alpha=s.eps / 4, steps=7),
        schedule=_schedule(s),
        augmentation="none",
        trace=_NO_TRACE,
    )
    return pretrain(data, "small-cnn", fdm, device=device, seed=s.seed, on_progress=on_train).model


def _pgd(report: AuditReport) -> float | None:
    """The paper's PGD (a named attack in every audit), for comparison with the ensemble."""
    name = f"pgd-{report.config.get('steps', 20)}"
    return next(
        (a.accuracy for a in report.attacks if a.name == name and a.eps == report.eps), None
    )


def format_table(rows: list[ReproductionRow]) -> str:
    ensemble = rows[0].ensemble if rows else ""
    width = max([12, *(len(r.label) + 2 for r in rows)])
    lines = [
        f"{'source':<8}{'transfer':<{width}}{'evaluated on':<14}{'clean':>17}"
        f"{'robust':>18}{'PGD-20':>9}{'time s':>8}",
    ]
    for r in rows:
        pgd = f"{r.pgd_accuracy:>9.3f}" if r.pgd_accuracy is not None else f"{'-':>9}"
        clean = accuracy_cell(r.clean_accuracy, r.clean_interval)
        robust = accuracy_cell(r.robust_accuracy, r.robust_interval)
        lines.append(
            f"{r.source:<8}{r.label:<{width}}{r.evaluated_on:<14}"
            f"{clean:>17}{robust:>18}{pgd}{r.seconds:>8.1f}"
        )
    counts = sorted({(r.evaluated_on, r.samples) for r in rows if r.samples})
    ns = ", ".join(f"{where} n = {n}" for where, n in counts)
    lines.append(
        f"robust: the {ensemble} ensemble, per-sample worst case; PGD-20: CE, step eps/4"
        + (f"; in brackets: 95% Wilson intervals ({ns})" if ns else "")
    )
    return "\n".join(lines)
