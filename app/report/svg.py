"""Charts (:mod:`app.report.charts`) as inline SVG: no scripts, nothing to fetch.

Only drawing lives here: where the plot area sits on the canvas and how a marker, a bar or a
legend entry is drawn. What the chart shows (ranges, ticks and their text, colours, dashes,
markers, labels) comes from its description, as it does for the PNGs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.report.charts import Axis, Chart, Point, Series, Style
from app.report.format import short
from app.report.markup import esc

__all__ = ["SvgCharts", "render"]


class SvgCharts:
    """Draws a page's charts, numbering them so their ids (titles, patterns) stay unique."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, chart: Chart) -> str:
        self.count += 1
        return render(chart, f"chart{self.count}")


def render(chart: Chart, cid: str) -> str:
    """``chart`` as one ``<svg>`` element; ``cid`` prefixes its ids (unique on the page)."""
    draw = {"lines": _lines, "bars": _bars, "scatter": _scatter}[chart.kind]
    return _open(chart, cid) + draw(chart, cid) + "</svg>"


def _open(chart: Chart, cid: str) -> str:
    head = (
        f'<svg class="chart" viewBox="0 0 {chart.width} {chart.height}" width="{chart.width}" '
        f'height="{chart.height}" role="img" aria-labelledby="{cid}-t {cid}-d" '
        'font-family="system-ui, sans-serif" font-size="12">'
        f'<title id="{cid}-t">{esc(chart.title)}</title><desc id="{cid}-d">{esc(chart.desc)}</desc>'
    )
    hatched = [s.style.colour for s in chart.series if s.style.hatch]
    if hatched:
        head += (
            f'<defs><pattern id="{cid}-hatch" patternUnits="userSpaceOnUse" width="6" height="6" '
            f'patternTransform="rotate(45)"><rect width="6" height="6" fill="{hatched[0]}"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#fff" stroke-width="2"/></pattern></defs>'
        )
    return head


def _fill(cid: str, style: Style) -> str:
    return f"url(#{cid}-hatch)" if style.hatch else style.colour


def _dash(style: Style) -> str:
    if not style.dash:
        return ""
    return f' stroke-dasharray="{" ".join(f"{d:g}" for d in style.dash)}"'


def _marker(kind: str, x: float, y: float, colour: str, hollow: bool = False) -> str:
    fill = "#fff" if hollow else colour
    attrs = f'fill="{fill}" stroke="{colour}" stroke-width="1.5"'
    if kind == "square":
        return f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" {attrs}/>'
    if kind in ("triangle", "down"):
        d = -1 if kind == "triangle" else 1
        pts = f"{x:.1f},{y + 5 * d:.1f} {x - 5:.1f},{y - 4 * d:.1f} {x + 5:.1f},{y - 4 * d:.1f}"
        return f'<polygon points="{pts}" {attrs}/>'
    if kind == "diamond":
        pts = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}"
        return f'<polygon points="{pts}" {attrs}/>'
    if kind == "cross":
        return (
            f'<path d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}'
            f'M{x - 4:.1f},{y + 4:.1f}L{x + 4:.1f},{y - 4:.1f}" stroke="{colour}" '
            'stroke-width="2" fill="none"/>'
        )
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" {attrs}/>'


# --------------------------------------------------------------------------- x/y charts


@dataclass(frozen=True)
class _Frame:
    """A plot area at (left, top) of width x height px, mapping the chart's axes onto it."""

    left: float
    top: float
    width: float
    height: float
    x: Axis
    y: Axis

    def px(self, value: float) -> float:
        return self.left + self.x.fraction(value) * self.width

    def py(self, value: float) -> float:
        return self.top + (1 - self.y.fraction(value)) * self.height

    def axes(self) -> str:
        """Horizontal grid lines with y tick labels, x ticks, the frame and both axis labels."""
        left, top, bottom = self.left, self.top, self.top + self.height
        parts = [
            f'<line x1="{left}" y1="{self.py(t.value):.1f}" x2="{left + self.width}" '
            f'y2="{self.py(t.value):.1f}" stroke="#ddd"/><text x="{left - 6}" '
            f'y="{self.py(t.value) + 4:.1f}" text-anchor="end">{esc(t.label)}</text>'
            for t in self.y.ticks
        ]
        parts += [
            f'<line x1="{self.px(t.value):.1f}" y1="{bottom}" x2="{self.px(t.value):.1f}" '
            f'y2="{bottom + 4}" stroke="#333"/><text x="{self.px(t.value):.1f}" '
            f'y="{bottom + 17}" text-anchor="middle">{esc(t.label)}</text>'
            for t in self.x.ticks
        ]
        parts.append(
            f'<rect x="{left}" y="{top}" width="{self.width}" height="{self.height}" fill="none" '
            f'stroke="#333"/><text x="{left + self.width / 2:.1f}" y="{bottom + 34}" '
            f'text-anchor="middle">{esc(self.x.label)}</text><text transform="translate(14 '
            f'{top + self.height / 2:.1f}) rotate(-90)" text-anchor="middle">'
            f"{esc(self.y.label)}</text>"
        )
        return "".join(parts)


def _frame(chart: Chart, bottom: float) -> _Frame:
    left, right, top = 74, 20, 14
    return _Frame(
        left, top, chart.width - left - right, chart.height - top - bottom, chart.x, chart.y
    )


def _lines(chart: Chart, cid: str) -> str:
    rows = (len(chart.series) + 1) // 2
    frame = _frame(chart, 46 + 20 * rows)
    parts = [frame.axes()]
    for i, s in enumerate(chart.series):
        parts.append(_line(s, frame.px, frame.py))
        parts.append(_line_legend(i, s, frame.left, frame.top + frame.height + 44))
    return "".join(parts)


def _line(s: Series, px: Callable[[float], float], py: Callable[[float], float]) -> str:
    pts = " ".join(f"{px(p.x):.1f},{py(p.y):.1f}" for p in s.points)
    parts = [
        f'<polyline points="{pts}" fill="none" stroke="{s.style.colour}" '
        f'stroke-width="{s.style.width}"{_dash(s.style)}/>'
    ]
    parts += [_point(p, s.style, px(p.x), py(p.y)) for p in s.points]
    return "".join(parts)


def _point(p: Point, style: Style, x: float, y: float, extra: str = "") -> str:
    marker = _marker(style.marker, x, y, style.colour, p.hollow)
    return f"<g><title>{esc(p.tip)}</title>{marker}{extra}</g>"


def _line_legend(i: int, s: Series, left: float, y0: float) -> str:
    x = left + (i % 2) * 340
    y = y0 + (i // 2) * 20
    return (
        f'<line x1="{x}" y1="{y}" x2="{x + 30}" y2="{y}" stroke="{s.style.colour}" '
        f'stroke-width="{s.style.width}"{_dash(s.style)}/>'
        f"{_marker(s.style.marker, x + 15, y, s.style.colour)}"
        f'<text x="{x + 38}" y="{y + 4}">{esc(short(s.label, 44))}</text>'
    )


def _scatter(chart: Chart, cid: str) -> str:
    frame = _frame(chart, 66)
    top, bottom = frame.top, frame.top + frame.height
    parts = [frame.axes()]
    for g in chart.guides:
        parts.append(
            f'<line x1="{frame.px(g):.1f}" y1="{top}" x2="{frame.px(g):.1f}" y2="{bottom}" '
            'stroke="#555" stroke-dasharray="5 4"/>'
        )
    # Marked points last, so no other point hides them.
    drawn = sorted(
        ((p, s.style) for s in chart.series for p in s.points), key=lambda t: t[0].marked
    )
    for p, style in drawn:
        x, y = frame.px(p.x), frame.py(p.y)
        ring = ""
        if p.marked:
            # The label reads towards the middle of the plot, so it stays inside.
            right_half = x > frame.left + frame.width / 2
            tx, anchor = (x - 13, "end") if right_half else (x + 13, "start")
            ring = (
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="10" fill="none" stroke="#000" '
                f'stroke-width="2"/><text x="{tx:.1f}" y="{max(y - 8, top + 12):.1f}" '
                f'text-anchor="{anchor}" font-weight="bold">{esc(short(p.label, 40))}</text>'
            )
        parts.append(_whiskers(p, style, frame) + _point(p, style, x, y, ring))
    for i, s in enumerate(chart.series):
        x, y = frame.left + i * 130, bottom + 54
        parts.append(
            f"{_marker(s.style.marker, x + 6, y - 4, s.style.colour)}"
            f'<text x="{x + 16}" y="{y}">{esc(short(s.label, 16))}</text>'
        )
    return "".join(parts)


def _whiskers(p: Point, style: Style, frame: _Frame) -> str:
    """A point's 95% intervals as thin capped lines through it."""
    x, y = frame.px(p.x), frame.py(p.y)
    attrs = f'stroke="{style.colour}" stroke-width="1" stroke-opacity="0.7"'
    parts = []
    if p.x_err is not None:
        parts.append(_whisker(frame.px(p.x_err[0]), frame.px(p.x_err[1]), y, 3, attrs))
    if p.y_err is not None:
        parts.append(_whisker(frame.py(p.y_err[0]), frame.py(p.y_err[1]), x, 3, attrs, True))
    return "".join(parts)


def _whisker(
    lo: float, hi: float, at: float, cap: float, attrs: str, vertical: bool = False
) -> str:
    """A line from ``lo`` to ``hi`` at ``at`` across, capped ``cap`` px either side."""
    segments = [(lo, at, hi, at), (lo, at - cap, lo, at + cap), (hi, at - cap, hi, at + cap)]
    if vertical:  # the same, with x and y swapped
        segments = [(y0, x0, y1, x1) for x0, y0, x1, y1 in segments]
    d = "".join(f"M{x0:.1f},{y0:.1f}L{x1:.1f},{y1:.1f}" for x0, y0, x1, y1 in segments)
    return f'<path d="{d}" {attrs}/>'


# --------------------------------------------------------------------------- bars


def _bars(chart: Chart, cid: str) -> str:
    n = len(chart.series)
    names = [line for t in chart.y.ticks for line in t.label.split("\n")]
    label_w = min(300, max(60, 7 * max((len(s) for s in names), default=4)))
    left, right, top = label_w + 12, 64, 34 if chart.legend else 12
    plot_w = chart.width - left - right
    bottom = top + chart.row * len(chart.y.ticks)
    parts = []
    for t in chart.x.ticks:
        x = left + chart.x.fraction(t.value) * plot_w
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#ccc"/>'
            f'<text x="{x:.1f}" y="{bottom + 20}" text-anchor="middle">{esc(t.label)}</text>'
        )
    if chart.legend:
        parts.append(_bar_legend(cid, chart.series, left))
    for i, t in enumerate(chart.y.ticks):
        y0 = top + i * chart.row
        parts.append(_row_label(t.label, left - 8, y0, n * chart.bar, label_w // 7))
        for s, series in enumerate(chart.series):
            y = y0 + s * chart.bar
            bar = next((p for p in series.points if p.y == t.value), None)
            parts.append(_bar(cid, series, bar, left, plot_w, y, chart.bar))
    return "".join(parts)


def _row_label(label: str, x: float, y0: float, bars: float, limit: int) -> str:
    """A category's name beside its bars, a line per line of it, centred on the bars."""
    lines = label.split("\n")
    first = y0 + max(bars, 14 * len(lines)) / 2 + 4 - 7 * (len(lines) - 1)
    spans = "".join(
        f'<tspan x="{x}" y="{first + 14 * k:.1f}">{esc(short(line, limit))}</tspan>'
        for k, line in enumerate(lines)
    )
    return f'<text text-anchor="end">{spans}</text>'


def _bar(
    cid: str, series: Series, p: Point | None, left: float, plot_w: float, y: float, bar: float
) -> str:
    if p is None:
        return (
            f'<text x="{left + 4}" y="{y + bar - 2}" font-size="10">{esc(series.label)}: '
            "not run</text>"
        )
    w = max(0.0, min(1.0, p.x)) * plot_w
    whisker, end = "", w
    if p.x_err is not None:
        # The bar's 95% interval across its end; the value is written past it.
        lo, hi = (left + max(0.0, min(1.0, v)) * plot_w for v in p.x_err)
        mid = y + (bar - 1) / 2
        whisker = _whisker(lo, hi, mid, (bar - 3) / 2, 'stroke="#000" stroke-width="1"')
        end = max(w, hi - left)
    return (
        f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 1}" '
        f'fill="{_fill(cid, series.style)}" stroke="#333" stroke-width="0.5">'
        f"<title>{esc(p.tip)}</title></rect>{whisker}"
        f'<text x="{left + end + 4:.1f}" y="{y + bar - 3}" '
        f'font-size="{11 if bar > 8 else 8}">{esc(p.label)}</text>'
    )


def _bar_legend(cid: str, series: tuple[Series, ...], left: float) -> str:
    parts, x = [], left
    for s in series:
        parts.append(
            f'<rect x="{x:.1f}" y="6" width="14" height="12" fill="{_fill(cid, s.style)}" '
            f'stroke="#333" stroke-width="0.5"/><text x="{x + 19:.1f}" y="16">{esc(s.label)}</text>'
        )
        x += 34 + 7 * len(s.label)
    return "".join(parts)
