"""PNG plots of the numbers people compare: training curves, audit results, the reproduction.

The same charts as the HTML report (:mod:`app.report.figures`), drawn by :mod:`app.report.png`
from the same plain data a job stores: the per-epoch history records and the audit's dict.
matplotlib is optional (``pip install 'cartl[plot]'``), imported only when a plot is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.report import figures, png
from app.report.format import interval_of, plain, threat_of
from cartl_core.errors import ConfigError

if TYPE_CHECKING:
    from cartl_core.reproduction import ReproductionRow

__all__ = [
    "plot_audit",
    "plot_candidates",
    "plot_comparison",
    "plot_reproduction",
    "plot_training",
]


def _audit_title(audit: Mapping[str, Any]) -> str:
    return f"audit on {plain(audit.get('samples'))} samples ({threat_of(audit).text()})"


def plot_audit(audit: Mapping[str, Any], path: str | Path) -> Path:
    """Clean accuracy and the accuracy after each attack (``audit``: ``AuditReport.to_dict()``)."""
    chart = figures.attacks_chart(audit, threat_of(audit))
    if chart is None:
        raise ConfigError("the audit lists no attacks: nothing to plot")
    return png.save([chart], path, title=_audit_title(audit))


def plot_training(
    history: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str = "training",
    audit: Mapping[str, Any] | None = None,
) -> Path:
    """Loss and accuracies per epoch (``EpochRecord.to_dict()`` records), and the final audit
    below them when given."""
    charts = [figures.loss_chart(history), figures.accuracy_chart(history)]
    if audit:
        charts.append(figures.attacks_chart(audit, threat_of(audit)))
    drawn = [c for c in charts if c is not None]
    if not drawn:
        raise ConfigError("no per-epoch numbers and no audit: nothing to plot")
    return png.save(drawn, path, title=title)


def plot_comparison(
    rows: Sequence[tuple[str, float, float]],
    path: str | Path,
    *,
    title: str = "clean and robust accuracy",
    robust_label: str = "robust",
    intervals: Sequence[tuple[Sequence[float] | None, Sequence[float] | None]] | None = None,
) -> Path:
    """Clean and robust accuracy side by side for each labelled model; ``intervals``, each
    row's (clean, robust) 95% intervals, are drawn as whiskers."""
    chart = figures.comparison_chart(
        rows, title=title, robust_label=robust_label, intervals=intervals
    )
    return png.save([chart], path)


def plot_candidates(compare: Mapping[str, Any], path: str | Path) -> Path:
    """A compare's candidates (its result's ``to_dict()``, or a job's metrics): clean and robust
    test accuracy of each, then, where costs were measured, cost against robust accuracy."""
    rows = [
        (str(c["name"]).replace("-", "\n", 1), float(c["test_clean"]), float(c["test_robust"]))
        for c in compare["candidates"]
    ]
    sel = compare.get("selection") or {}
    threat = f"{sel.get('ensemble')}, {sel.get('norm')} eps {sel.get('eps', 0):g}"
    intervals = [
        (interval_of(c, "test_clean"), interval_of(c, "test_robust")) for c in compare["candidates"]
    ]
    charts = [
        figures.comparison_chart(
            rows,
            title="clean and robust accuracy",
            robust_label=f"robust ({threat})",
            intervals=intervals,
        ),
        figures.cost_chart(compare),
    ]
    return png.save([c for c in charts if c is not None], path)


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
        intervals=[(r.clean_interval, r.robust_interval) for r in rows],
    )


def _reproduction_label(row: ReproductionRow) -> str:
    label = f"{row.source}\n{row.transfer or '(source)'}"
    return f"{label}\n{row.candidate}" if row.candidate else label
