"""Presentation of CARTL's results: the HTML report and the PNG plots.

``cartl_core`` returns plain, JSON-serialisable results (an audit's ``to_dict()``, the per-epoch
history, a compare's candidate table); this package renders them. One chart module
(:mod:`app.report.charts`) describes every chart as data, drawn as inline SVG for the report
(:mod:`app.report.svg`) and as PNG for ``--plot`` and ``cartl jobs plot`` (:mod:`app.report.png`).
Standard library and ``cartl_core`` only; matplotlib is imported when a PNG is drawn.
"""

from app.report.page import render_html, render_job_report
from app.report.plots import (
    plot_audit,
    plot_candidates,
    plot_comparison,
    plot_reproduction,
    plot_training,
)

__all__ = [
    "plot_audit",
    "plot_candidates",
    "plot_comparison",
    "plot_reproduction",
    "plot_training",
    "render_html",
    "render_job_report",
]
