"""Charts (:mod:`app.report.charts`) as a PNG file, drawn with matplotlib.

matplotlib is optional (``pip install 'cartl[plot]'``) and imported only when a PNG is asked for;
no pyplot, so no global backend or open figures. Only drawing lives here: ranges, ticks and their
text, colours, dashes, markers and labels come from the chart's description, as they do for the
report's SVG. A layout engine places the text, so no label covers another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.report.charts import Axis, Chart, Point, Series, Style
from cartl_core.errors import ConfigError

__all__ = ["save"]

_MARKERS = {
    "circle": "o",
    "square": "s",
    "triangle": "^",
    "diamond": "D",
    "cross": "x",
    "down": "v",
}
#: The description's sizes are pixels; a PNG inch is 100 of them, so 1 px is 0.72 pt.
_PX = 100
_PT = 0.72


def save(charts: Sequence[Chart], path: str | Path, *, title: str = "") -> Path:
    """``charts`` one above the other in one PNG, each as large as in the report."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'cartl[plot]'") from None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    width = max(c.width for c in charts) / _PX
    height = sum(c.height for c in charts) / _PX + (0.4 if title else 0.0)
    with matplotlib.rc_context(
        {"font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold", "legend.fontsize": 8}
    ):
        fig = Figure(figsize=(width, height), layout="constrained")
        # A subfigure each, so each chart's margins fit its own labels.
        panels = fig.subfigures(
            len(charts), 1, squeeze=False, height_ratios=[c.height for c in charts]
        )
        for panel, chart in zip(panels[:, 0], charts, strict=True):
            ax = panel.add_subplot()
            _DRAW[chart.kind](ax, chart)
            ax.set_title(chart.title, loc="left")
        if title:
            fig.suptitle(title)
        fig.savefig(out, dpi=120)
    return out


def _ticks(ax: Any, x: Axis, y: Axis) -> None:
    ax.set_xlim(x.lo, x.hi)
    ax.set_ylim(y.lo, y.hi)
    ax.set_xticks([t.value for t in x.ticks], [t.label for t in x.ticks])
    ax.set_yticks([t.value for t in y.ticks], [t.label for t in y.ticks])
    ax.set_xlabel(x.label)
    ax.set_ylabel(y.label)


def _legend(ax: Any, chart: Chart, columns: int) -> None:
    """Below the axes, clear of the tick labels and the axis label."""
    from matplotlib.transforms import offset_copy

    if not chart.legend or not chart.series:
        return
    below = offset_copy(
        ax.transAxes, fig=ax.figure, y=-34 if chart.x.label else -18, units="points"
    )
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, 0),
        bbox_transform=below,
        ncols=columns,
        frameon=False,
    )


def _line_kw(style: Style) -> dict[str, Any]:
    width = style.width * _PT
    # matplotlib scales dashes by the line width; the description's are in px.
    dash = (0, tuple(d * _PT / width for d in style.dash)) if style.dash else "solid"
    return {"color": style.colour, "linewidth": width, "linestyle": dash}


def _marker_kw(style: Style) -> dict[str, Any]:
    return {
        "marker": _MARKERS.get(style.marker, "o"),
        "markersize": 5.5,
        "markeredgecolor": style.colour,
        "markerfacecolor": style.colour,
    }


def _lines(ax: Any, chart: Chart) -> None:
    _ticks(ax, chart.x, chart.y)
    ax.grid(axis="y", color="#ddd")
    for s in chart.series:
        xs, ys = [p.x for p in s.points], [p.y for p in s.points]
        # Unclipped: a point on the frame (the first epoch, 100%) shows whole.
        kw = {"clip_on": False, **_marker_kw(s.style)}
        ax.plot(xs, ys, label=s.label, **_line_kw(s.style), **kw)
        for p in s.points:
            if p.hollow:
                ax.plot([p.x], [p.y], linestyle="none", **{**kw, "markerfacecolor": "white"})
    _legend(ax, chart, 2)


def _scatter(ax: Any, chart: Chart) -> None:
    _ticks(ax, chart.x, chart.y)
    ax.grid(axis="y", color="#ddd")
    for g in chart.guides:
        ax.axvline(g, color="#555", linewidth=0.75, linestyle=(0, (5, 4)))
    for s in chart.series:
        xs, ys = [p.x for p in s.points], [p.y for p in s.points]
        _error_bars(ax, s.points, s.style.colour)
        ax.plot(xs, ys, linestyle="none", label=s.label, clip_on=False, **_marker_kw(s.style))
    middle = (chart.x.lo + chart.x.hi) / 2
    for p in (p for s in chart.series for p in s.points if p.marked):
        ax.plot([p.x], [p.y], marker="o", markersize=14, markerfacecolor="none", color="black")
        # The label reads towards the middle of the plot, so it stays inside.
        left = p.x > middle
        ax.annotate(
            p.label,
            (p.x, p.y),
            xytext=(-10 if left else 10, 6),
            textcoords="offset points",
            ha="right" if left else "left",
            fontweight="bold",
        )
    _legend(ax, chart, max(1, len(chart.series)))


def _bars(ax: Any, chart: Chart) -> None:
    """A row per category from the top, its bars centred in it; the value beside each bar."""
    n = len(chart.series)
    thick = chart.bar / chart.row  # rows are 1 apart
    start = (1 - n * thick) / 2
    ax.set_xlim(chart.x.lo, chart.x.hi)
    ax.set_ylim(chart.y.hi, chart.y.lo)
    ax.set_xticks([t.value for t in chart.x.ticks], [t.label for t in chart.x.ticks])
    ax.set_yticks([t.value + 0.5 for t in chart.y.ticks], [t.label for t in chart.y.ticks])
    ax.tick_params(axis="y", length=0, labelsize=min(9.0, chart.row * _PT * 0.8))
    ax.grid(axis="x", color="#ccc")
    ax.set_axisbelow(True)
    for s, series in enumerate(chart.series):
        offset = start + (s + 0.5) * thick
        rows = [t.value for t in chart.y.ticks]
        _bar_series(ax, series, offset, thick, rows, font=8 if chart.bar > 8 else 6)
    _legend(ax, chart, n)


def _bar_series(
    ax: Any, series: Series, offset: float, thick: float, rows: list[float], font: float
) -> None:
    style = series.style
    fill: dict[str, Any] = {"color": style.colour}
    if style.hatch:
        fill = {"color": style.colour, "hatch": "////", "edgecolor": "white", "linewidth": 0}
    ys = [p.y + offset for p in series.points]
    widths = [max(0.0, min(1.0, p.x)) for p in series.points]
    ax.barh(ys, widths, height=thick * 0.92, label=series.label, **fill)
    ax.barh(ys, widths, height=thick * 0.92, fill=False, edgecolor="#333", linewidth=0.4)
    _error_bars(ax, [replace(p, y=y) for p, y in zip(series.points, ys, strict=True)], "#000")
    for p, y, w in zip(series.points, ys, widths, strict=True):
        # The value is written past the bar's interval.
        end = max(w, min(1.0, p.x_err[1])) if p.x_err is not None else w
        ax.text(end + 0.01, y, p.label, va="center", fontsize=font, clip_on=False)
    done = {p.y for p in series.points}
    for row in (r for r in rows if r not in done):
        ax.text(0.01, row + offset, f"{series.label}: not run", va="center", fontsize=font)


def _error_bars(ax: Any, points: Sequence[Point], colour: str) -> None:
    """Each point's 95% intervals (``x_err``, ``y_err``) as capped whiskers."""
    for p in points:
        if p.x_err is None and p.y_err is None:
            continue
        # matplotlib takes the distances either side (never negative: a rounded stored
        # interval can miss its value by a hair).
        xerr = None if p.x_err is None else [[max(0, p.x - p.x_err[0])], [max(0, p.x_err[1] - p.x)]]
        yerr = None if p.y_err is None else [[max(0, p.y - p.y_err[0])], [max(0, p.y_err[1] - p.y)]]
        ax.errorbar([p.x], [p.y], xerr=xerr, yerr=yerr, fmt="none", ecolor=colour,
                    elinewidth=0.8, capsize=2, alpha=0.8, clip_on=False)  # fmt: skip


_DRAW: dict[str, Callable[[Any, Chart], None]] = {
    "lines": _lines,
    "scatter": _scatter,
    "bars": _bars,
}
