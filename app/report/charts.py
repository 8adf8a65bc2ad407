"""A chart as data: its series, axes, ticks, labels and colours, decided once.

The HTML report draws a :class:`Chart` as inline SVG (:func:`app.report.svg.render`), the CLI's
``--plot`` and ``cartl jobs plot`` as PNG (:func:`app.report.png.save`). The renderers only draw
what the description says: axis ranges, tick positions and their text, colours, dashes, markers
and every label are chosen here, so the page and the PNG show the same chart. A description is
plain data (:meth:`Chart.to_dict` is JSON), so it can be served as it is.

Three kinds: ``lines`` (x and y numeric), ``scatter`` (one series per group; ``marked`` points
are ringed and named) and ``bars``: horizontal bars, one row per category from the top. For bars
``x`` is the value axis (drawn across) and ``y`` the category axis, a point's ``x`` the bar's
length and its ``y`` the row; a row a series has no point in was not run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from app.report.format import pct, pct_ci

__all__ = [
    "Axis",
    "Chart",
    "Dot",
    "Interval",
    "Line",
    "Point",
    "Series",
    "Style",
    "Tick",
    "bar_chart",
    "line_chart",
    "nice_ticks",
    "percent",
    "scatter_chart",
]

#: Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
#: Dash patterns (on, off lengths), so lines differ without colour too.
DASHES: tuple[tuple[float, ...], ...] = ((), (7, 4), (2, 3), (9, 3, 2, 3), (4, 2), (1, 2))
MARKERS = ("circle", "square", "triangle", "diamond", "cross", "down")

#: Pixel sizes of the layout (the PNG takes 100 px as an inch).
WIDTH = 760
BAR = 13  # one bar's thickness, up to 24 rows; thinner beyond
LINE_HEIGHT = 15  # one line of a category label


@dataclass(frozen=True)
class Style:
    colour: str
    dash: tuple[float, ...] = ()
    marker: str = "circle"
    width: float = 1.6
    #: Filled with stripes (bars): the second bar series differs without colour.
    hatch: bool = False

    @classmethod
    def nth(cls, i: int, *, strong: bool = False, hatch: bool = False) -> Style:
        return cls(
            colour=PALETTE[i % len(PALETTE)],
            dash=DASHES[i % len(DASHES)],
            marker=MARKERS[i % len(MARKERS)],
            width=2.5 if strong else 1.6,
            hatch=hatch,
        )


@dataclass(frozen=True)
class Tick:
    value: float
    label: str


@dataclass(frozen=True)
class Axis:
    label: str
    lo: float
    hi: float
    ticks: tuple[Tick, ...] = ()

    def fraction(self, value: float) -> float:
        """Where ``value`` lies between ``lo`` (0) and ``hi`` (1)."""
        return (value - self.lo) / max(1e-12, self.hi - self.lo)


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    #: What pointing at it says (the SVG's tooltip).
    tip: str = ""
    #: Text drawn beside it: a bar's value, a marked point's name.
    label: str = ""
    #: Measured on a subset of the samples.
    hollow: bool = False
    #: Ringed and named (the chosen candidate).
    marked: bool = False
    #: The 95% interval of the value along x (a bar's length) and along y, drawn as whiskers.
    x_err: tuple[float, float] | None = None
    y_err: tuple[float, float] | None = None


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[Point, ...]
    style: Style


@dataclass(frozen=True)
class Chart:
    kind: Literal["lines", "bars", "scatter"]
    title: str
    #: The chart in words, for screen readers.
    desc: str
    x: Axis
    y: Axis
    series: tuple[Series, ...]
    width: int = WIDTH
    height: int = 300
    #: Vertical dashed lines at these x (a threshold).
    guides: tuple[float, ...] = ()
    legend: bool = True
    #: Bars: a row's height and a bar's thickness, in px (a row holds a bar per series).
    row: float = 0.0
    bar: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- axes


def nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values from ``lo`` to ``hi``, about ``count`` steps; whole numbers only where
    ``integer`` (epochs: there is no epoch 1.5)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in steps if m * mag >= raw)
    if integer:
        step = max(1.0, float(round(step)))
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-6:
        ticks.append(round(t, 12))
        t += step
    return ticks


def percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def general(value: float) -> str:
    return f"{value:.4g}"


def _axis(
    label: str,
    lo: float,
    hi: float,
    *,
    text: Callable[[float], str],
    count: int = 5,
    integer: bool = False,
) -> Axis:
    ticks = tuple(Tick(t, text(t)) for t in nice_ticks(lo, hi, count, integer=integer))
    return Axis(label, lo, hi, ticks)


def _padded(values: Sequence[float]) -> tuple[float, float]:
    """A range around ``values`` with a margin, from 0 when the values are near it."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    return (0.0 if lo >= 0 and lo - pad < 0 else lo - pad), hi + pad


def _zoomed(values: Sequence[float], floor: float | None) -> tuple[float, float]:
    """A 0..1 axis zoomed to the values (and the floor line), with a margin."""
    lo, hi = min(values), max(values)
    if floor is not None:
        lo, hi = min(lo, floor), max(hi, floor)
    pad = max(0.02, (hi - lo) * 0.1)
    return max(0.0, lo - pad), min(1.0, hi + pad)


# --------------------------------------------------------------------------- lines


@dataclass
class Line:
    """A line to draw: its points, and how its values read in the tooltips."""

    label: str
    points: list[tuple[float, float]]
    strong: bool = False
    hollow: set[int] = field(default_factory=set)
    x_text: Callable[[float], str] = general
    y_text: Callable[[float], str] = pct

    def series(self, i: int) -> Series:
        """The ``i``-th line of a chart, its tooltips saying each point's values."""
        points = tuple(
            Point(x, y, f"{self.label}: {self.x_text(x)} \u2192 {self.y_text(y)}",
                  hollow=j in self.hollow)
            for j, (x, y) in enumerate(self.points)
        )  # fmt: skip
        return Series(self.label, points, Style.nth(i, strong=self.strong))


def line_chart(
    title: str,
    desc: str,
    lines: Sequence[Line],
    *,
    x_label: str,
    y_label: str,
    unit_interval: bool = False,
    x_text: Callable[[float], str] = general,
    x_integer: bool = False,
    width: int = WIDTH,
    height: int = 300,
) -> Chart:
    """Lines with a distinct colour, marker and dash each; ``unit_interval``: y from 0 to 100%;
    ``x_integer``: whole-number x ticks only. ``height`` grows by a row per two legend entries."""
    xs = [x for line in lines for x, _ in line.points]
    ys = [y for line in lines for _, y in line.points]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = (0.0, 1.0) if unit_interval else _padded(ys)
    return Chart(
        "lines",
        title,
        desc,
        _axis(x_label, x_lo, x_hi, text=x_text, count=6, integer=x_integer),
        _axis(y_label, y_lo, y_hi, text=percent if unit_interval else general),
        tuple(line.series(i) for i, line in enumerate(lines)),
        width=width,
        height=height + 20 * (math.ceil(len(lines) / 2) - 1),
    )


# --------------------------------------------------------------------------- bars


Interval = tuple[float, float]


def bar_chart(
    title: str,
    desc: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    intervals: Sequence[Sequence[Interval | None]] | None = None,
) -> Chart:
    """Horizontal bars on a 0..100% axis: a row per category (a label may have several lines),
    a bar per series; the second series hatched. A None value is a bar that was not run.
    ``intervals``, a list per series like its values: each bar's 95% interval, drawn as a
    whisker across its end (None: none known)."""
    spans = intervals or [[None] * len(values) for _, values in series]
    n = len(series)
    bar = BAR if len(categories) <= 24 else 6
    lines = max((c.count("\n") + 1 for c in categories), default=1)
    row = n * bar + (8 if n > 1 else 6)
    if lines > 1:
        row = max(row, LINE_HEIGHT * lines + 12)
    height = (34 if n > 1 else 12) + row * len(categories) + 28
    out = tuple(
        Series(
            name,
            tuple(
                Point(
                    v,
                    float(i),
                    f"{' '.join(cat.split())}, {name}: {pct_ci(v, list(ci) if ci else None)}",
                    label=pct(v),
                    x_err=ci,
                )
                for i, (cat, v, ci) in enumerate(zip(categories, values, cis, strict=True))
                if v is not None
            ),
            Style.nth(s, hatch=s == 1),
        )
        for s, ((name, values), cis) in enumerate(zip(series, spans, strict=True))
    )
    values = _axis("", 0.0, 1.0, text=percent, count=4)
    ticks = tuple(Tick(float(i), c) for i, c in enumerate(categories))
    rows = Axis("", 0.0, float(len(categories)), ticks)
    return Chart(
        "bars", title, desc, values, rows, out, height=height, legend=n > 1, row=row, bar=bar
    )


# --------------------------------------------------------------------------- scatter


@dataclass(frozen=True)
class Dot:
    label: str
    group: str
    x: float
    y: float
    marked: bool = False
    tip: str = ""
    #: 95% intervals of x and y (whiskers); None where not known.
    x_err: Interval | None = None
    y_err: Interval | None = None


def scatter_chart(
    title: str,
    desc: str,
    dots: Sequence[Dot],
    *,
    x_label: str,
    y_label: str,
    x_floor: float | None = None,
    x_text: Callable[[float], str] | None = None,
) -> Chart:
    """Dots on percent axes zoomed to them, a colour and marker per group (the legend); marked
    dots are ringed and named; ``x_floor`` draws a dashed vertical line (a threshold).
    ``x_text``: x is not a fraction but a quantity (seconds, say) that these words name; its
    axis then starts at 0 (so that twice as far reads as twice as much) with a margin."""
    groups = list(dict.fromkeys(d.group for d in dots))
    series = tuple(
        Series(
            group,
            tuple(
                Point(
                    d.x,
                    d.y,
                    d.tip,
                    label=d.label if d.marked else "",
                    marked=d.marked,
                    x_err=d.x_err,
                    y_err=d.y_err,
                )
                for d in dots
                if d.group == group
            ),
            Style.nth(i),
        )
        for i, group in enumerate(groups)
    )
    # The axes hold the whiskers too.
    xs = [v for d in dots for v in (d.x, *(d.x_err or ()))]
    ys = [v for d in dots for v in (d.y, *(d.y_err or ()))]
    if x_text is None:
        x_lo, x_hi = _zoomed(xs, x_floor)
    else:
        x_lo, x_hi = _padded(xs)
        x_lo = min(0.0, x_lo)
    y_lo, y_hi = _zoomed(ys, None)
    return Chart(
        "scatter",
        title,
        desc,
        _axis(x_label, x_lo, x_hi, text=x_text or percent, count=6),
        _axis(y_label, y_lo, y_hi, text=percent),
        series,
        height=340,
        guides=() if x_floor is None else (x_floor,),
    )
