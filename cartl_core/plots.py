"""PNG plots of the numbers people compare: training curves, audit results, the reproduction.

matplotlib is optional (``pip install 'cartl[plot]'``), imported only when a plot is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cartl_core.errors import ConfigError

if TYPE_CHECKING:
    from cartl_core.audit import AuditReport
    from cartl_core.reproduction import ReproductionRow
    from cartl_core.training.loop import EpochRecord

__all__ = ["plot_audit", "plot_comparison", "plot_reproduction", "plot_training"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'cartl[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    _pyplot().close(fig)
    return out


def _audit_axes(ax: Any, report: AuditReport) -> None:
    names = ["clean", *(f"{a.name}\neps {a.eps:.3g}" for a in report.attacks)]
    values = [report.clean_accuracy, *(a.accuracy for a in report.attacks)]
    bars = ax.bar(range(len(values)), values, color=["#4c72b0"] + ["#dd8452"] * len(report.attacks))
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(values)), names, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(f"audit on {report.samples} samples")


def plot_audit(report: AuditReport, path: str | Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * (len(report.attacks) + 1)), 4))
    _audit_axes(ax, report)
    return _save(fig, path)


def plot_training(
    history: Sequence[EpochRecord],
    path: str | Path,
    *,
    title: str = "training",
    report: AuditReport | None = None,
) -> Path:
    """Loss and accuracies per epoch, and the final audit beside them when given."""
    plt = _pyplot()
    cols = 3 if report is not None else 2
    fig, axes = plt.subplots(1, cols, figsize=(5 * cols, 4))
    epochs = [h.epoch for h in history]
    axes[0].plot(epochs, [h.metrics.get("loss", float("nan")) for h in history], marker="o")
    axes[0].set(xlabel="epoch", ylabel="training loss", title=title)
    for key in sorted({k for h in history for k in h.metrics if "accuracy" in k}):
        axes[1].plot(
            epochs, [h.metrics.get(key, float("nan")) for h in history], marker="o", label=key
        )
    axes[1].set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.05), title="accuracy per epoch")
    axes[1].legend(fontsize=8)
    if report is not None:
        _audit_axes(axes[2], report)
    return _save(fig, path)


def plot_comparison(
    rows: Sequence[tuple[str, float, float]],
    path: str | Path,
    *,
    title: str = "clean and robust accuracy",
    robust_label: str = "robust",
) -> Path:
    """Clean and robust accuracy side by side for each labelled model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows)), 4))
    xs = range(len(rows))
    width = 0.38
    clean = ax.bar([x - width / 2 for x in xs], [r[1] for r in rows], width, label="clean")
    robust = ax.bar([x + width / 2 for x in xs], [r[2] for r in rows], width, label=robust_label)
    ax.bar_label(clean, fmt="%.2f", fontsize=8)
    ax.bar_label(robust, fmt="%.2f", fontsize=8)
    ax.set_xticks(list(xs), [r[0] for r in rows], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    # Above the axes, not inside them: inside, it covered the label of a bar near 1.0.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncols=2, frameon=False)
    return _save(fig, path)


def plot_reproduction(
    rows: Sequence[ReproductionRow], path: str | Path, *, eps: float | None = None
) -> Path:
    """Clean and robust accuracy side by side for every model the demo audited (compare's choice
    labelled with the candidate's name); ``eps``, the Linf radius, goes into the legend."""
    ensemble = f"{rows[0].ensemble} ensemble" if rows else "robust"
    radius = "" if eps is None else f", Linf eps {eps:g}"
    return plot_comparison(
        [(_reproduction_label(r), r.clean_accuracy, r.robust_accuracy) for r in rows],
        path,
        title="digits 0-4 -> 5-9: robustness kept by each transfer",
        robust_label=f"robust ({ensemble}{radius})",
    )


def _reproduction_label(row: ReproductionRow) -> str:
    label = f"{row.source}\n{row.transfer or '(source)'}"
    return f"{label}\n{row.candidate}" if row.candidate else label
