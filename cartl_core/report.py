"""A robustness report a person reads: one self-contained HTML page.

Clean and robust accuracy per attack, robustness against eps, per-class accuracy, the sanity checks
with what a failure means, a transfer source's robustness next to the target's, the training
curves with the robust trace, and provenance. Charts are inline SVG drawn here (no matplotlib, no
scripts, no network), every number is also in a table, and failures say WARNING in words, so the
page reads in a text browser, a screen reader or a black-and-white printout.

Every value may come from a user (class names, file names), so all text goes through
:func:`html.escape`. The input is the plain data a job stores (``JobOutcome.audit``, ``.history``,
``.metrics``); keys an older audit lacks are skipped, not errors.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["render_html", "render_job_report"]

Record = Mapping[str, Any]

#: Okabe-Ito: distinguishable with the common colour-vision deficiencies.
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_DASHES = ("", "7 4", "2 3", "9 3 2 3", "4 2", "1 2")
_MARKERS = ("circle", "square", "triangle", "diamond", "cross", "down")

#: What a failure of the audit's older checks means (newer audits carry their own ``meaning``).
_MEANINGS = {
    "fgsm-not-stronger-than-pgd": "A one-step attack beating a many-step one points to gradient "
    "masking: the robust accuracy is likely overstated.",
    "accuracy-falls-with-eps": "Accuracy rising with a larger eps means the attack is not "
    "finding the worst case: the robust accuracy is likely overstated.",
    "robust-not-above-clean": "An attack that leaves more samples correct than no attack at all "
    "is broken; do not trust these numbers.",
    "nonzero-input-gradients": "Zero input gradients stop gradient attacks without making the "
    "model robust (gradient masking): the robust accuracy is likely overstated.",
    "outputs-are-logits": "A model that outputs probabilities weakens cross-entropy attacks: "
    "the robust accuracy is likely overstated; make it return logits.",
}

#: Readable names of the per-epoch history keys we know.
_HISTORY_LABELS = {
    "loss": "training loss",
    "accuracy": "training accuracy",
    "train_accuracy": "training accuracy",
    "adv_accuracy": "training accuracy under attack",
    "test_accuracy": "test accuracy (clean)",
    "trace_clean_accuracy": "trace: clean accuracy",
    "trace_robust_accuracy": "trace: robust accuracy",
    "lr": "learning rate",
    "seconds": "epoch time (s)",
    "trace_seconds": "trace time (s)",
}


# --------------------------------------------------------------------------- formatting


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    """A finite number, or None for anything else (missing, text, NaN, bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _pct(value: Any) -> str:
    v = _num(value)
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _eps(value: Any) -> str:
    """An eps as a decimal, with its k/255 form when it is one (8/255 reads better)."""
    v = _num(value)
    if v is None:
        return "n/a"
    k = round(v * 255)
    if 0 < v < 1 and abs(k / 255 - v) < 1e-9:
        return f"{v:.4g} ({k}/255)"
    return f"{v:.4g}"


def _plain(value: Any) -> str:
    """Any value as short text: numbers to 4 significant digits, lists joined, maps as JSON."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value) or "none"
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _seconds(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "n/a"
    if v < 120:
        return f"{v:.1f} s"
    return f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.1f} h"


def _records(value: Any) -> list[Record]:
    if not isinstance(value, list | tuple):
        return []
    return [v for v in value if isinstance(v, Mapping)]


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# --------------------------------------------------------------------------- tables


def _table(caption: str, head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Rows of already-escaped cells; the first cell of each row is its header."""
    body = []
    for row in rows:
        first, *rest = row
        cells = "".join(f"<td>{c}</td>" for c in rest)
        body.append(f'<tr><th scope="row">{first}</th>{cells}</tr>')
    heads = "".join(f'<th scope="col">{_e(h)}</th>' for h in head)
    attr = f' class="{cls}"' if cls else ""
    return (
        f"<table{attr}><caption>{_e(caption)}</caption><thead><tr>{heads}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _kv_table(caption: str, items: Iterable[tuple[str, Any]]) -> str:
    # In settings, None means "the default" (alpha None: eps/4; arch None: the checkpoint's).
    rows = [(_e(k), f"<code>{_e('default' if v is None else _plain(v))}</code>") for k, v in items]
    return _table(caption, ("setting", "value"), rows, cls="kv")


# --------------------------------------------------------------------------- charts (SVG)


def _nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-6:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _tick_text(value: float, percent: bool) -> str:
    return f"{100 * value:.0f}%" if percent else f"{value:.4g}"


def _marker(kind: str, x: float, y: float, colour: str, hollow: bool = False) -> str:
    fill = "#fff" if hollow else colour
    style = f'fill="{fill}" stroke="{colour}" stroke-width="1.5"'
    if kind == "square":
        return f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" {style}/>'
    if kind in ("triangle", "down"):
        d = -1 if kind == "triangle" else 1
        pts = f"{x:.1f},{y + 5 * d:.1f} {x - 5:.1f},{y - 4 * d:.1f} {x + 5:.1f},{y - 4 * d:.1f}"
        return f'<polygon points="{pts}" {style}/>'
    if kind == "diamond":
        pts = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}"
        return f'<polygon points="{pts}" {style}/>'
    if kind == "cross":
        return (
            f'<path d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}'
            f'M{x - 4:.1f},{y + 4:.1f}L{x + 4:.1f},{y - 4:.1f}" stroke="{colour}" '
            'stroke-width="2" fill="none"/>'
        )
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" {style}/>'


@dataclass
class _Charts:
    """Draws the page's charts, numbering them so ids (titles, patterns) stay unique."""

    count: int = 0

    def _open(self, width: int, height: int, title: str, desc: str) -> tuple[str, str]:
        self.count += 1
        cid = f"chart{self.count}"
        head = (
            f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-labelledby="{cid}-t {cid}-d" '
            'font-family="system-ui, sans-serif" font-size="12">'
            f'<title id="{cid}-t">{_e(title)}</title><desc id="{cid}-d">{_e(desc)}</desc>'
            f'<defs><pattern id="{cid}-hatch" patternUnits="userSpaceOnUse" width="6" height="6" '
            f'patternTransform="rotate(45)"><rect width="6" height="6" fill="{_COLOURS[1]}"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#fff" stroke-width="2"/></pattern></defs>'
        )
        return cid, head

    @staticmethod
    def _fill(cid: str, series: int) -> str:
        # The second series is hatched, so two bar kinds differ without colour.
        if series == 1:
            return f"url(#{cid}-hatch)"
        return _COLOURS[series % len(_COLOURS)]

    def bars(
        self,
        title: str,
        desc: str,
        labels: Sequence[str],
        series: Sequence[tuple[str, Sequence[float | None]]],
    ) -> str:
        """Horizontal bars on a 0..100% axis: one group per label, one bar per series."""
        n = len(series)
        bar = 13 if len(labels) <= 24 else 6
        group = n * bar + (8 if n > 1 else 6)
        label_w = min(300, max(60, 7 * max((len(s) for s in labels), default=4)))
        left, right, top = label_w + 12, 64, 34 if n > 1 else 12
        width = 760
        plot_w = width - left - right
        height = top + group * len(labels) + 28
        cid, out = self._open(width, height, title, desc)
        parts = [out]
        for t in (0.0, 0.25, 0.5, 0.75, 1.0):
            x = left + t * plot_w
            parts.append(
                f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 24}" '
                'stroke="#ccc"/>'
                f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle">'
                f"{_tick_text(t, True)}</text>"
            )
        if n > 1:
            parts.append(self._bar_legend(cid, [name for name, _ in series], left))
        for i, label in enumerate(labels):
            y0 = top + i * group
            parts.append(
                f'<text x="{left - 8}" y="{y0 + n * bar / 2 + 4:.1f}" text-anchor="end">'
                f"{_e(_short(label, label_w // 7))}</text>"
            )
            for s, (name, values) in enumerate(series):
                parts.append(self._bar(cid, s, name, label, values[i], left, plot_w, y0, bar))
        parts.append("</svg>")
        return "".join(parts)

    def _bar(
        self,
        cid: str,
        s: int,
        name: str,
        label: str,
        value: float | None,
        left: int,
        plot_w: int,
        y0: int,
        bar: int,
    ) -> str:
        y = y0 + s * bar
        v = _num(value)
        if v is None:
            return (
                f'<text x="{left + 4}" y="{y + bar - 2}" font-size="10">{_e(name)}: not run</text>'
            )
        w = max(0.0, min(1.0, v)) * plot_w
        text = f"{_e(label)}, {_e(name)}: {_pct(v)}"
        return (
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 1}" '
            f'fill="{self._fill(cid, s)}" stroke="#333" stroke-width="0.5"><title>{text}</title>'
            f'</rect><text x="{left + w + 4:.1f}" y="{y + bar - 3}" font-size="'
            f'{11 if bar > 8 else 8}">{_pct(v)}</text>'
        )

    def _bar_legend(self, cid: str, names: Sequence[str], left: int) -> str:
        parts, x = [], float(left)
        for s, name in enumerate(names):
            parts.append(
                f'<rect x="{x:.1f}" y="6" width="14" height="12" fill="{self._fill(cid, s)}" '
                f'stroke="#333" stroke-width="0.5"/><text x="{x + 19:.1f}" y="16">{_e(name)}</text>'
            )
            x += 34 + 7 * len(name)
        return "".join(parts)

    def lines(
        self,
        title: str,
        desc: str,
        series: Sequence[_Line],
        *,
        x_label: str,
        y_label: str,
        unit_interval: bool = False,
        x_text: Callable[[float], str] = lambda v: f"{v:.4g}",
        x_integer: bool = False,
        width: int = 760,
        height: int = 300,
    ) -> str:
        """Lines with a distinct marker and dash per series; ``unit_interval``: y in 0..100%."""
        xs = [x for s in series for x, _ in s.points]
        ys = [y for s in series for _, y in s.points]
        x_lo, x_hi = min(xs), max(xs)
        if x_hi == x_lo:
            x_lo, x_hi = x_lo - 1, x_hi + 1
        if unit_interval:
            y_lo, y_hi = 0.0, 1.0
        else:
            y_lo, y_hi = min(ys), max(ys)
            pad = (y_hi - y_lo) * 0.08 or abs(y_hi) * 0.1 or 1.0
            y_lo, y_hi = (0.0 if y_lo >= 0 and y_lo - pad < 0 else y_lo - pad), y_hi + pad
        legend_rows = math.ceil(len(series) / 2)
        left, right, top, bottom = 74, 20, 14, 46 + 20 * legend_rows
        plot_w, plot_h = width - left - right, height - top - bottom
        total_h = height

        def px(x: float) -> float:
            return left + (x - x_lo) / (x_hi - x_lo) * plot_w

        def py(y: float) -> float:
            return top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

        _, out = self._open(width, total_h, title, desc)
        frame = _Frame(left, top, plot_w, plot_h, px, py)
        parts = [
            out,
            frame.axes(
                _nice_ticks(y_lo, y_hi),
                _nice_ticks(x_lo, x_hi, 6, integer=x_integer),
                y_text=lambda t: _tick_text(t, unit_interval),
                x_text=x_text,
                x_label=x_label,
                y_label=y_label,
            ),
        ]
        for i, s in enumerate(series):
            parts.append(self._line(i, s, px, py))
            parts.append(self._line_legend(i, s, left, top + plot_h + 44))
        parts.append("</svg>")
        return "".join(parts)

    @staticmethod
    def _line(i: int, s: _Line, px: Callable[[float], float], py: Callable[[float], float]) -> str:
        colour, dash = _COLOURS[i % len(_COLOURS)], _DASHES[i % len(_DASHES)]
        marker = _MARKERS[i % len(_MARKERS)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts = [
            f'<polyline points="{pts}" fill="none" stroke="{colour}" '
            f'stroke-width="{2.5 if s.strong else 1.6}"{dash_attr}/>'
        ]
        for j, (x, y) in enumerate(s.points):
            hollow = j in s.hollow
            parts.append(
                f"<g><title>{_e(s.label)}: {_e(s.x_text(x))} \u2192 {_e(s.y_text(y))}</title>"
                f"{_marker(marker, px(x), py(y), colour, hollow)}</g>"
            )
        return "".join(parts)

    @staticmethod
    def _line_legend(i: int, s: _Line, left: int, y0: int) -> str:
        colour, dash = _COLOURS[i % len(_COLOURS)], _DASHES[i % len(_DASHES)]
        x = left + (i % 2) * 340
        y = y0 + (i // 2) * 20
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        return (
            f'<line x1="{x}" y1="{y}" x2="{x + 30}" y2="{y}" stroke="{colour}" '
            f'stroke-width="{2.5 if s.strong else 1.6}"{dash_attr}/>'
            f"{_marker(_MARKERS[i % len(_MARKERS)], x + 15, y, colour)}"
            f'<text x="{x + 38}" y="{y + 4}">{_e(_short(s.label, 44))}</text>'
        )


def _scatter_axis(values: Sequence[float], floor: float | None) -> tuple[float, float]:
    """A 0..1 axis zoomed to the points (and the floor line), with a margin."""
    lo, hi = min(values), max(values)
    if floor is not None:
        lo, hi = min(lo, floor), max(hi, floor)
    pad = max(0.02, (hi - lo) * 0.1)
    return max(0.0, lo - pad), min(1.0, hi + pad)


@dataclass(frozen=True)
class _Point:
    label: str
    group: str
    x: float
    y: float
    marked: bool = False


@dataclass(frozen=True)
class _Frame:
    """A plot area at (left, top) of plot_w x plot_h, with its data-to-pixel maps."""

    left: float
    top: float
    plot_w: float
    plot_h: float
    px: Callable[[float], float]
    py: Callable[[float], float]

    def axes(
        self,
        y_ticks: Sequence[float],
        x_ticks: Sequence[float],
        *,
        y_text: Callable[[float], str],
        x_text: Callable[[float], str],
        x_label: str,
        y_label: str,
    ) -> str:
        """Horizontal grid lines with y tick labels, x ticks, the frame and both axis labels."""
        left, top, plot_w, plot_h, px, py = (
            self.left, self.top, self.plot_w, self.plot_h, self.px, self.py
        )  # fmt: skip
        parts = [
            f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + plot_w}" y2="{py(t):.1f}" '
            f'stroke="#ddd"/><text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">'
            f"{y_text(t)}</text>"
            for t in y_ticks
        ]
        parts += [
            f'<line x1="{px(t):.1f}" y1="{top + plot_h}" x2="{px(t):.1f}" '
            f'y2="{top + plot_h + 4}" stroke="#333"/><text x="{px(t):.1f}" '
            f'y="{top + plot_h + 17}" text-anchor="middle">{_e(x_text(t))}</text>'
            for t in x_ticks
        ]
        parts.append(
            f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
            f'stroke="#333"/><text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 34}" '
            f'text-anchor="middle">{_e(x_label)}</text><text transform="translate(14 '
            f'{top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle">{_e(y_label)}</text>'
        )
        return "".join(parts)


def _scatter(
    charts: _Charts,
    title: str,
    desc: str,
    points: Sequence[_Point],
    *,
    x_label: str,
    y_label: str,
    x_floor: float | None = None,
    width: int = 760,
    height: int = 340,
) -> str:
    """Points on zoomed percent axes, one colour and marker per group; marked points get a ring
    and their label; ``x_floor`` draws a dashed vertical line (a threshold)."""
    groups = list(dict.fromkeys(p.group for p in points))
    x_lo, x_hi = _scatter_axis([p.x for p in points], x_floor)
    y_lo, y_hi = _scatter_axis([p.y for p in points], None)
    left, right, top, bottom = 74, 20, 14, 66
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_lo) / max(1e-9, x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y_lo) / max(1e-9, y_hi - y_lo)) * plot_h

    _, out = charts._open(width, height, title, desc)

    def percent(t: float) -> str:
        return _tick_text(t, True)

    frame = _Frame(left, top, plot_w, plot_h, px, py)
    parts = [
        out,
        frame.axes(
            _nice_ticks(y_lo, y_hi),
            _nice_ticks(x_lo, x_hi, 6),
            y_text=percent,
            x_text=percent,
            x_label=x_label,
            y_label=y_label,
        ),
    ]
    if x_floor is not None:
        parts.append(
            f'<line x1="{px(x_floor):.1f}" y1="{top}" x2="{px(x_floor):.1f}" '
            f'y2="{top + plot_h}" stroke="#555" stroke-dasharray="5 4"/>'
        )
    # Marked points last, so no other point hides them.
    for p in sorted(points, key=lambda p: p.marked):
        i = groups.index(p.group)
        colour, marker = _COLOURS[i % len(_COLOURS)], _MARKERS[i % len(_MARKERS)]
        x, y = px(p.x), py(p.y)
        ring = ""
        if p.marked:
            # The label reads towards the middle of the plot, so it stays inside.
            right_half = x > left + plot_w / 2
            tx, anchor = (x - 13, "end") if right_half else (x + 13, "start")
            ring = (
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="10" fill="none" stroke="#000" '
                f'stroke-width="2"/><text x="{tx:.1f}" y="{max(y - 8, top + 12):.1f}" '
                f'text-anchor="{anchor}" font-weight="bold">{_e(_short(p.label, 40))}</text>'
            )
        parts.append(
            f"<g><title>{_e(p.label)}: clean {_pct(p.x)}, robust {_pct(p.y)}"
            f"{' (chosen)' if p.marked else ''}</title>"
            f"{_marker(marker, x, y, colour)}{ring}</g>"
        )
    for i, group in enumerate(groups):
        colour, marker = _COLOURS[i % len(_COLOURS)], _MARKERS[i % len(_MARKERS)]
        x = left + i * 130
        y = top + plot_h + 54
        parts.append(
            f"{_marker(marker, x + 6, y - 4, colour)}"
            f'<text x="{x + 16}" y="{y}">{_e(_short(group, 16))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


@dataclass
class _Line:
    label: str
    points: list[tuple[float, float]]
    strong: bool = False
    hollow: set[int] = field(default_factory=set)
    x_text: Callable[[float], str] = field(default=lambda v: f"{v:.4g}")
    y_text: Callable[[float], str] = field(default=_pct)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


# --------------------------------------------------------------------------- the audit


@dataclass(frozen=True)
class _Threat:
    norm: str | None
    eps: float | None

    def text(self) -> str:
        norm = {"linf": "L\u221e", "l2": "L2"}.get(str(self.norm), str(self.norm or "?"))
        return f"{norm}, eps {_eps(self.eps)}"


def _threat(audit: Record) -> _Threat:
    """The main threat model: the new audit names it; an older one's is its first attack's."""
    config = audit.get("config") if isinstance(audit.get("config"), Mapping) else {}
    attacks = _records(audit.get("attacks"))
    first = attacks[0] if attacks else {}
    eps = audit.get("eps")
    if eps is None:
        conf_eps = config.get("eps") if config else None
        eps = conf_eps[0] if isinstance(conf_eps, list | tuple) and conf_eps else conf_eps
    if eps is None:
        eps = first.get("eps")
    norm = audit.get("norm") or (config or {}).get("norm") or first.get("norm")
    return _Threat(norm, _num(eps))


def _summary(audit: Record, threat: _Threat) -> str:
    if not audit:
        return (
            "<p>No audit yet: this job has no final audit (it was skipped, or has not run "
            "yet). The training curves and provenance below are what there is.</p>"
        )
    samples, clean, robust = audit.get("samples"), audit.get("clean_accuracy"), None
    robust = audit.get("robust_accuracy")
    worst = audit.get("worst_case_accuracy")
    ensemble = audit.get("ensemble")
    members = audit.get("ensemble_attacks")
    sentence = (
        f'<p class="lead">On {_e(_plain(samples))} test samples the model is right on '
        f"<strong>{_pct(clean)}</strong> of clean inputs and on <strong>{_pct(robust)}</strong> "
        f"under attack ({_e(threat.text())}).</p>"
    )
    # Beside the number, never below the fold: why it means nothing for this model.
    meaningless = "".join(
        f'<br><strong class="warn">MEANINGLESS: {_e(note)}</strong>'
        for note in audit.get("headline_notes") or []
    )
    rows: list[tuple[str, str]] = [
        ("Clean accuracy", _pct(clean)),
        ("Robust accuracy", _pct(robust) + meaningless),
    ]
    w, r = _num(worst), _num(robust)
    if w is not None and (r is None or abs(w - r) > 1e-9):
        rows.append(("Worst case over every attack at this eps", _pct(w)))
    rows.append(("Threat model", _e(threat.text())))
    if ensemble or members:
        rows.append(("Attack ensemble", _e(" ".join(filter(None, (ensemble, _members(members)))))))
    rows.append(("Samples", _e(_plain(samples))))
    if audit.get("device") is not None:
        rows.append(("Device", _e(audit["device"])))
    if audit.get("precision") is not None:
        rows.append(("Arithmetic of the attacks", _e(audit["precision"])))
    for note in audit.get("notes") or []:
        rows.append(("Note", _e(note)))
    if audit.get("seconds") is not None:
        rows.append(("Audit time", _seconds(audit.get("seconds"))))
    return sentence + _table(
        "The headline numbers", ("measure", "value"), [(_e(k), v) for k, v in rows], cls="kv"
    )


def _members(members: Any) -> str:
    if isinstance(members, list | tuple) and members:
        return "(" + ", ".join(str(m) for m in members) + ")"
    return ""


def _attack_label(a: Record) -> str:
    role = a.get("role")
    tag = f" ({role})" if role and role != "ensemble" else ""
    return f"{a.get('name', '?')} @ {_eps(a.get('eps'))}{tag}"


def _charted(attacks: list[Record], threat: _Threat) -> list[Record]:
    """The attacks of the main threat model (ensemble and named); the ones run for the eps curve
    or the checks are in the table only."""
    main = [
        a
        for a in attacks
        if a.get("role", "ensemble") in ("ensemble", "named")
        and (threat.eps is None or _num(a.get("eps")) == threat.eps)
    ]
    return main or attacks


def _attacks_section(audit: Record, threat: _Threat, charts: _Charts) -> str:
    attacks = _records(audit.get("attacks"))
    if not attacks:
        return "<p>This audit lists no attacks.</p>"
    has_roles = any("role" in a for a in attacks)
    shown = _charted(attacks, threat) if has_roles else attacks
    labels = ["clean", *(_attack_label(a) for a in shown)]
    values = [_num(audit.get("clean_accuracy")), *(_num(a.get("accuracy")) for a in shown)]
    svg = charts.bars(
        "Accuracy per attack",
        "Horizontal bars: clean accuracy, then the accuracy after each attack. "
        + "; ".join(f"{lab}: {_pct(v)}" for lab, v in zip(labels, values, strict=True)),
        labels,
        [("accuracy", values)],
    )
    note = (
        f" At the main threat model ({threat.text()}). For the ensemble's attacks the accuracy "
        "is cumulative: what is still right after that attack and every one before it, each "
        "attack running only on the samples its predecessors did not break. Named attacks show "
        "their own accuracy. The attacks run for the eps curve and the checks are in the table."
        if has_roles
        else " Each attack runs only on the samples still correct (clean-misclassified ones "
        "count as broken)."
    )
    return _figure(svg, "Clean accuracy and the accuracy after each attack." + _e(note)) + (
        _attacks_table(attacks)
    )


_ATTACK_COLUMNS: tuple[tuple[str, str, Callable[[Record], str]], ...] = (
    ("role", "role", lambda a: _e(a.get("role", "n/a"))),
    ("", "threat model", lambda a: _e(_attack_threat(a))),
    ("steps", "steps", lambda a: _e(_plain(a.get("steps")))),
    ("restarts", "restarts", lambda a: _e(_plain(a.get("restarts")))),
    ("loss", "loss", lambda a: _e(_plain(a.get("loss")))),
    ("samples", "run on", lambda a: _e(_plain(a.get("samples")))),
    ("broke", "broke", lambda a: _e(_plain(a.get("broke")))),
    ("", "accuracy", lambda a: _pct(a.get("accuracy"))),
    ("seconds", "time", lambda a: _seconds(a.get("seconds"))),
)


def _attack_threat(a: Record) -> str:
    extra = []
    if a.get("alpha") is not None:
        extra.append(f"step {_eps(a.get('alpha'))}")
    if a.get("queries") is not None:
        extra.append(f"{_plain(a.get('queries'))} queries")
    threat = _Threat(a.get("norm"), _num(a.get("eps"))).text()
    return threat + ("; " + ", ".join(extra) if extra else "")


def _attacks_table(attacks: list[Record]) -> str:
    # Older audits lack some keys (role, samples, broke): their columns are left out.
    columns = [c for c in _ATTACK_COLUMNS if not c[0] or any(c[0] in a for a in attacks)]
    rows = [[_e(a.get("name", "?")), *(cell(a) for _, _, cell in columns)] for a in attacks]
    head = ["attack", *(title for _, title, _ in columns)]
    return _table("Every attack the audit ran, in order", head, rows)


def _eps_curves(audit: Record) -> tuple[list[_Line], list[Record]]:
    """Robust accuracy against eps: the audit's ``by_eps``, else each attack run at several eps.

    Points measured on all samples make one line from clean accuracy at eps 0; points measured
    on a subset (cheaper attacks at larger radii) another, with hollow markers.
    """
    clean = _num(audit.get("clean_accuracy"))
    by_eps = sorted(
        (r for r in _records(audit.get("by_eps")) if _num(r.get("eps")) is not None),
        key=lambda r: (float(r["eps"]), bool(r.get("subset"))),
    )
    start = [(0.0, clean)] if clean is not None else []
    lines: list[_Line] = []
    if by_eps:
        for subset in (False, True):
            rows = [r for r in by_eps if bool(r.get("subset")) == subset]
            pts = [
                (float(r["eps"]), acc)
                for r in rows
                if (acc := _num(r.get("robust_accuracy"))) is not None
            ]
            if not pts:
                continue
            if subset:
                label = (
                    f"on a subset of {_plain(rows[0].get('samples'))} samples "
                    f"({_plain(rows[0].get('attacks'))} attacks)"
                )
                lines.append(_Line(label, pts, hollow=set(range(len(pts)))))
            else:
                label = f"robust accuracy ({_plain(rows[0].get('attacks'))} attacks)"
                lines.append(_Line(label, start + pts, strong=True))
        return lines, by_eps
    runs: dict[str, list[tuple[float, float]]] = {}
    for a in _records(audit.get("attacks")):
        eps, acc = _num(a.get("eps")), _num(a.get("accuracy"))
        if eps is not None and acc is not None:
            runs.setdefault(str(a.get("name", "?")), []).append((eps, acc))
    for name, pts in runs.items():
        if len({e for e, _ in pts}) >= 2:
            lines.append(_Line(name, start + sorted(pts), strong=not lines))
    return lines, []


def _eps_section(audit: Record, charts: _Charts) -> str:
    lines, by_eps = _eps_curves(audit)
    if len({x for s in lines for x, _ in s.points if x > 0}) < 2:
        return (
            "<p>The audit ran at one eps only, so there is no curve. Give several radii "
            "(<code>--eps 4/255,8/255,16/255</code>) to see how fast robustness falls.</p>"
        )
    desc = (
        "Line chart of robust accuracy (y, 0 to 100%) against the attack radius eps (x); eps 0 "
        "is clean accuracy. "
        + "; ".join(
            f"{s.label}: " + ", ".join(f"{_eps(x)} {_pct(y)}" for x, y in s.points) for s in lines
        )
    )
    # Linf radii are usually k/255: an axis in 255ths reads as the paper's numbers do.
    per255 = all(
        0 <= x < 1 and abs(x * 255 - round(x * 255)) < 1e-6 for s in lines for x, _ in s.points
    )
    for s in lines:
        if per255:
            s.points = [(x * 255, y) for x, y in s.points]
            s.x_text = lambda v: _eps(v / 255)
        else:
            s.x_text = _eps
    svg = charts.lines(
        "Robust accuracy against eps",
        desc,
        lines,
        x_label="eps (attack radius), in 255ths" if per255 else "eps (attack radius)",
        y_label="robust accuracy",
        unit_interval=True,
        x_text=(lambda v: f"{v:g}/255" if v else "0") if per255 else (lambda v: f"{v:.3g}"),
    )
    caption = "Robust accuracy against the attack radius; the point at eps 0 is clean accuracy."
    if any(s.hollow for s in lines):
        caption += " Hollow markers: measured on a subset of the samples (see the table)."
    out = _figure(svg, _e(caption))
    if by_eps:
        rows = [
            (
                _e(_eps(r.get("eps"))),
                _pct(r.get("robust_accuracy")),
                _e(_plain(r.get("samples"))),
                _e(_plain(r.get("attacks"))),
                "subset" if r.get("subset") else "all samples",
            )
            for r in by_eps
        ]
        out += _table(
            "Robust accuracy at each eps",
            ("eps", "robust accuracy", "samples", "attacks", "measured on"),
            rows,
        )
    return out


def _per_class_section(audit: Record, charts: _Charts) -> str:
    classes = _records(audit.get("per_class"))
    if not classes:
        return "<p>This audit has no per-class breakdown.</p>"
    labels = [f"{c.get('class', '?')}: {c.get('name', '')}" for c in classes]
    clean = [_num(c.get("clean_accuracy")) for c in classes]
    robust = [_num(c.get("robust_accuracy")) for c in classes]
    svg = charts.bars(
        "Accuracy per class, clean and under attack",
        "Horizontal bars, two per class: clean accuracy (solid) and robust accuracy (hatched). "
        + "; ".join(
            f"{lab}: clean {_pct(c)}, robust {_pct(r)}"
            for lab, c, r in zip(labels, clean, robust, strict=True)
        ),
        labels,
        [("clean", clean), ("robust", robust)],
    )
    caption = "Clean (solid) and robust (hatched) accuracy per class, at the main eps."
    known = [(r, lab) for r, lab in zip(robust, labels, strict=True) if r is not None]
    if known:
        r, lab = min(known)
        caption += f" Weakest under attack: {lab} ({_pct(r)})."
    rows = [
        (
            _e(c.get("class", "?")),
            _e(c.get("name", "")),
            _e(_plain(c.get("samples"))),
            _pct(c.get("clean_accuracy")),
            _pct(c.get("robust_accuracy")),
        )
        for c in classes
    ]
    return _figure(svg, _e(caption)) + _table(
        "Accuracy per class",
        ("class", "name", "samples", "clean accuracy", "robust accuracy"),
        rows,
    )


def _verdict(passed: Any) -> str:
    if passed is True:
        return "passed"
    if passed is False:
        return '<strong class="warn">WARNING: failed</strong>'
    return "not run"


def _checks_section(audit: Record) -> str:
    checks = _records(audit.get("checks"))
    if not checks:
        return "<p>This audit ran no sanity checks.</p>"
    rows = [
        (
            _e(c.get("name", "?")),
            _verdict(c.get("passed")),
            _e(c.get("detail", "")),
            _e(c.get("meaning") or _MEANINGS.get(str(c.get("name")), "")),
        )
        for c in checks
    ]
    return (
        "<p>Checks for the ways an audit overstates robustness (after AutoAttack's "
        "<code>checks.py</code>). A failure does not make the model weak; it makes its robust "
        "accuracy untrustworthy.</p>"
        + _table(
            "Sanity checks",
            ("check", "result", "what was measured", "what a failure means"),
            rows,
        )
    )


# --------------------------------------------------------------------------- warnings


def _all_warnings(audit: Record, extra: Any) -> list[Record]:
    """Failed checks, the audit's warnings and the training's, without repeats."""
    out: list[Record] = []
    for c in _records(audit.get("checks")):
        if c.get("passed") is False:
            meaning = c.get("meaning") or _MEANINGS.get(str(c.get("name")), "")
            out.append({**c, "meaning": meaning, "source": "check"})
    out += [{"source": "audit", **w} for w in _records(audit.get("warnings"))]
    out += _records(extra)
    seen: set[tuple[str, str]] = set()
    unique = []
    for w in out:
        key = (str(w.get("name")), str(w.get("detail")))
        if key not in seen:
            seen.add(key)
            unique.append(w)
    return unique


def _warnings_section(warnings: list[Record], has_checks: bool) -> str:
    if not warnings:
        if not has_checks:
            return "<p>No warnings were recorded.</p>"
        return "<p>No warnings: every sanity check that ran passed.</p>"
    items = []
    for w in warnings:
        source = f" ({_e(w['source'])})" if w.get("source") else ""
        meaning = f" <em>What it means: {_e(w['meaning'])}</em>" if w.get("meaning") else ""
        items.append(
            f'<li><strong class="warn">WARNING</strong> <code>{_e(w.get("name", "?"))}</code>'
            f"{source}: {_e(str(w.get('detail', '')).rstrip('.'))}.{meaning}</li>"
        )
    return f'<ul class="warnings">{"".join(items)}</ul>'


# --------------------------------------------------------------------------- transfer


def _inherited_section(audit: Record, threat: _Threat, source: Record, charts: _Charts) -> str:
    src_threat = _Threat(source.get("norm"), _num(source.get("eps")))
    names = ("source (its own test data)", "this model (target test data)")
    clean = [_num(source.get("clean_accuracy")), _num(audit.get("clean_accuracy"))]
    robust = [_num(source.get("robust_accuracy")), _num(audit.get("robust_accuracy"))]
    svg = charts.bars(
        "Source robustness against target robustness",
        f"Bars: {names[0]} clean {_pct(clean[0])}, robust {_pct(robust[0])}; "
        f"{names[1]} clean {_pct(clean[1])}, robust {_pct(robust[1])}.",
        ["clean accuracy", "robust accuracy"],
        [(names[0], [clean[0], robust[0]]), (names[1], [clean[1], robust[1]])],
    )
    model = " ".join(str(v) for v in (source.get("arch"), source.get("method")) if v)
    rows = [
        (
            _e(names[0]),
            _e(model or "n/a"),
            _pct(clean[0]),
            _pct(robust[0]),
            _e(src_threat.text()),
            _e(_plain(source.get("samples"))),
        ),
        (
            _e(names[1]),
            "",
            _pct(clean[1]),
            _pct(robust[1]),
            _e(threat.text()),
            _e(_plain(audit.get("samples"))),
        ),
    ]
    out = (
        "<p>How much of the source's robustness the fine-tuned model kept. The two were "
        "measured on different test sets (the source's and the target's), so compare the "
        "robust share of clean accuracy as much as the raw numbers.</p>"
        + _figure(
            svg, "Clean and robust accuracy of the source (solid) and of this model (hatched)."
        )
        + _table(
            "Inherited robustness",
            ("model", "architecture, training", "clean", "robust", "threat model", "samples"),
            rows,
        )
    )
    return out + _retained(src_threat, threat, robust)


def _retained(src: _Threat, tgt: _Threat, robust: list[float | None]) -> str:
    s, t = robust
    if s is None or t is None:
        return ""
    same = src.norm == tgt.norm and (
        src.eps is not None and tgt.eps is not None and abs(src.eps - tgt.eps) < 1e-9
    )
    if not same:
        return (
            f'<p><strong class="warn">WARNING</strong> the source was audited at '
            f"{_e(src.text())} and this model at {_e(tgt.text())}; the two robust accuracies "
            "are not directly comparable.</p>"
        )
    if s <= 0:
        return "<p>The source had no robust accuracy to inherit.</p>"
    return (
        f"<p>This model keeps <strong>{100 * t / s:.0f}%</strong> of the source's robust "
        f"accuracy ({_pct(t)} of {_pct(s)}) at {_e(tgt.text())}.</p>"
    )


# --------------------------------------------------------------------------- compare


def _mapping(value: Any) -> Record:
    return value if isinstance(value, Mapping) else {}


def _compare_section(compare: Record, charts: _Charts) -> str:
    rows = _records(compare.get("candidates"))
    chosen = _mapping(compare.get("chosen"))
    name = chosen.get("name")
    selection = _mapping(compare.get("selection"))
    best, drop = _num(selection.get("best_val_clean")), _num(selection.get("max_clean_drop"))
    floor = best - drop if best is not None and drop is not None else None
    threat = _Threat(selection.get("norm"), _num(selection.get("eps")))
    ensemble = selection.get("ensemble") or "fast"
    out = [
        f"<p>Every candidate was trained on the target's training data less a held-out "
        f"validation split ({_e(_plain(selection.get('val_samples')))} images), audited on that "
        f"split and on the test split with the {_e(ensemble)} ensemble at {_e(threat.text())}. "
        f"The choice used the validation split only; the test numbers are for this report.</p>"
    ]
    if chosen.get("reason"):
        out.append(f'<p class="lead">Chosen: <strong>{_e(chosen["reason"])}</strong></p>')
    for split, label in (("val", "validation"), ("test", "test")):
        points = [
            _Point(str(r.get("name")), str(r.get("method")), x, y, r.get("name") == name)
            for r in rows
            if (x := _num(r.get(f"{split}_clean"))) is not None
            and (y := _num(r.get(f"{split}_robust"))) is not None
        ]
        if not points:
            continue
        line = floor if split == "val" else None
        svg = _scatter(
            charts,
            f"Clean against robust accuracy of every candidate ({label} split)",
            f"One point per candidate; the chosen one, {name}, is ringed and labelled."
            + (f" The dashed line is the clean-accuracy floor, {_pct(floor)}." if line else ""),
            points,
            x_label=f"clean accuracy ({label})",
            y_label=f"robust accuracy ({label})",
            x_floor=line,
        )
        caption = (
            f"{label.capitalize()} split: one point per candidate, coloured by method; the "
            "chosen candidate is ringed."
        )
        if line is not None:
            caption += " Candidates left of the dashed line lose too much clean accuracy."
        out.append(_figure(svg, _e(caption)))
    table_rows = [
        (
            _e(r.get("name")) + (" <strong>(chosen)</strong>" if r.get("name") == name else ""),
            _e(_plain(r.get("method"))),
            _e(_plain(r.get("k"))),
            _e(_plain(r.get("norm_beta")) if r.get("norm_beta") is not None else "-"),
            _e(_plain(r.get("bn"))),
            _pct(r.get("val_clean")),
            _pct(r.get("val_robust")),
            _pct(r.get("test_clean")),
            _pct(r.get("test_robust")),
            _seconds(r.get("seconds")),
        )
        for r in rows
    ]
    head = ("candidate", "method", "k", "beta", "BN", "val clean", "val robust",
            "test clean", "test robust", "time")  # fmt: skip
    table = _table("Candidates, in the order they were trained", head, table_rows)
    out.append(f'<div class="scroll">{table}</div>')
    dropped = compare.get("dropped")
    if isinstance(dropped, list) and dropped:
        out.append(
            f"<p>Not trained (beyond the candidate budget): {_e(', '.join(map(str, dropped)))}.</p>"
        )
    estimate = compare.get("estimate")
    if isinstance(estimate, Mapping):
        out.append(
            f"<p>Estimated before the start: training {_seconds(estimate.get('train_seconds'))}, "
            f"audits at most {_seconds(estimate.get('audit_seconds_max'))} (every sample "
            "surviving every attack step; real audits stop on a sample once it breaks).</p>"
        )
    return "".join(out)


# --------------------------------------------------------------------------- training


def _history_keys(history: list[Record]) -> list[str]:
    keys: list[str] = []
    for row in history:
        for k, v in row.items():
            if k != "epoch" and k not in keys and _num(v) is not None:
                keys.append(k)
    return keys


def _history_label(key: str) -> str:
    return _HISTORY_LABELS.get(key, key.replace("_", " "))


def _series(history: list[Record], key: str, **kw: Any) -> _Line:
    pts = []
    for i, row in enumerate(history):
        x = _num(row.get("epoch"))
        y = _num(row.get(key))
        if y is not None:
            pts.append((x if x is not None else float(i + 1), y))
    return _Line(_history_label(key), pts, x_text=lambda v: f"epoch {v:g}", **kw)


def _training_section(history: list[Record], charts: _Charts) -> str:
    keys = _history_keys(history)
    accuracy = sorted(
        (k for k in keys if "accuracy" in k),
        # The trace first (the strongest lines), clean before robust.
        key=lambda k: ("trace" not in k, "robust" in k or "adv" in k, k),
    )
    loss = [k for k in keys if "loss" in k]
    other = [k for k in keys if k not in accuracy and k not in loss]
    out = []
    if accuracy:
        lines = [_series(history, k, strong="trace" in k) for k in accuracy]
        out.append(
            _figure(
                charts.lines(
                    "Accuracy per epoch",
                    "Line chart, y from 0 to 100%: " + ", ".join(s.label for s in lines) + ".",
                    lines,
                    x_label="epoch",
                    y_label="accuracy",
                    unit_interval=True,
                    x_integer=True,
                ),
                "Accuracy per epoch. The trace (when recorded) is measured on held-out samples "
                "with and without attack: a robust trace that falls while training accuracy "
                "rises is robust overfitting.",
            )
        )
    if loss:
        lines = [_series(history, k, y_text=lambda v: f"{v:.4g}") for k in loss]
        out.append(
            _figure(
                charts.lines(
                    "Loss per epoch",
                    "Line chart: " + ", ".join(s.label for s in lines) + ".",
                    lines,
                    x_label="epoch",
                    y_label="loss",
                    x_integer=True,
                ),
                "Training loss per epoch.",
            )
        )
    small = []
    for k in other:
        line = _series(history, k, y_text=lambda v: f"{v:.4g}")
        svg = charts.lines(
            _history_label(k).capitalize() + ", by epoch",
            f"Line chart of {_history_label(k)} per epoch.",
            [line],
            x_label="epoch",
            y_label=_history_label(k),
            x_integer=True,
            width=380,
            height=240,
        )
        small.append(_figure(svg, _e(_history_label(k).capitalize()) + ", by epoch."))
    if small:
        out.append(f'<div class="small-multiples">{"".join(small)}</div>')
    out.append(_history_table(history, keys))
    return "".join(out)


def _history_table(history: list[Record], keys: list[str]) -> str:
    rows = []
    for i, row in enumerate(history):
        cells = [_e(_plain(row.get("epoch", i + 1)))]
        for k in keys:
            v = _num(row.get(k))
            if v is None:
                cells.append("")
            elif "accuracy" in k:
                cells.append(_pct(v))
            else:
                cells.append(f"{v:.4g}")
        rows.append(cells)
    table = _table(
        "Every epoch", ["epoch", *(_history_label(k) for k in keys)], rows, cls="history"
    )
    return f'<div class="scroll">{table}</div>'


# --------------------------------------------------------------------------- provenance

_PROVENANCE_LABELS = (
    ("cartl_version", "cartl version"),
    ("commit", "commit"),
    ("python", "Python"),
    ("torch", "PyTorch"),
    ("platform", "platform"),
    ("kind", "job kind"),
    ("seed", "seed"),
    ("device", "device"),
    ("device_name", "device name"),
    ("started_at", "started (UTC)"),
    ("finished_at", "finished (UTC)"),
    ("wall_seconds", "wall time"),
)


def _file_text(value: Any) -> str:
    if not isinstance(value, Mapping):
        return "n/a" if value is None else str(value)
    size = value.get("bytes")
    size_text = f", {size:,} bytes" if isinstance(size, int) else ""
    return f"{value.get('name', '?')}{size_text}, sha256 {value.get('sha256', '?')}"


def _provenance_section(provenance: Record, audit: Record) -> str:
    rows: list[tuple[str, str]] = []
    for key, label in _PROVENANCE_LABELS:
        if key not in provenance:
            continue
        value = provenance[key]
        if key == "commit" and value is None:
            text = "unknown (not a git checkout; set CARTL_COMMIT in builds)"
        elif key == "wall_seconds":
            text = _seconds(value)
        else:
            text = _plain(value)
        rows.append((_e(label), f"<code>{_e(text)}</code>"))
    for key, label in (
        ("dataset", "dataset file"),
        ("checkpoint", "input checkpoint"),
        ("weights", "written weights"),
    ):
        if provenance.get(key) is not None:
            rows.append((_e(label), f"<code>{_e(_file_text(provenance[key]))}</code>"))
    out = []
    if rows:
        out.append(_table("Where these numbers come from", ("what", "value"), rows, cls="kv"))
    settings = provenance.get("attack_settings") or audit.get("config")
    if isinstance(settings, Mapping) and settings:
        out.append(_kv_table("Attack settings of the audit", sorted(settings.items())))
    params = provenance.get("params")
    if isinstance(params, Mapping) and params:
        out.append(_kv_table("Job parameters", sorted(params.items())))
    return "".join(out) or "<p>No provenance was recorded for this job.</p>"


# --------------------------------------------------------------------------- the page

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;line-height:1.45;
color:#1a1a1a;background:#fff;max-width:62rem;margin:0 auto;padding:1rem 1.25rem 3rem}
h1{font-size:1.6rem;margin:.5rem 0}h2{font-size:1.25rem;margin-top:2.2rem;
border-bottom:2px solid #1a1a1a;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}
caption{text-align:left;font-weight:600;padding:.3rem 0;caption-side:top}
th,td{border:1px solid #999;padding:.25rem .5rem;text-align:left;vertical-align:top}
thead th{background:#eee}tbody tr:nth-child(even){background:#f7f7f7}
table.kv code{word-break:break-all}
.scroll{overflow-x:auto}figure{margin:1rem 0}figcaption{font-size:.9rem;color:#333}
svg.chart{width:100%;height:auto;display:block}
.warn{color:#a00000}.lead{font-size:1.1rem}
ul.warnings{padding-left:1.2rem}ul.warnings li{margin:.3rem 0}
nav ol{columns:2;font-size:.95rem}dl.facts{display:grid;grid-template-columns:max-content auto;
gap:.1rem 1rem}dl.facts dt{font-weight:600}dl.facts dd{margin:0}
.small-multiples{display:grid;grid-template-columns:repeat(auto-fit,minmax(22rem,1fr));gap:.5rem}
footer{margin-top:3rem;font-size:.85rem;color:#444}
@media print{nav{display:none}h2{break-after:avoid}figure,table{break-inside:avoid}}
"""


@dataclass
class _Page:
    title: str
    sections: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, anchor: str, heading: str, body: str) -> None:
        self.sections.append((anchor, heading, body))

    def html(self, intro: str) -> str:
        toc = "".join(f'<li><a href="#{a}">{_e(h)}</a></li>' for a, h, _ in self.sections)
        body = "".join(
            f'<section id="{a}" aria-labelledby="{a}-h"><h2 id="{a}-h">{_e(h)}</h2>{b}</section>'
            for a, h, b in self.sections
        )
        from cartl_core.provenance import package_version

        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="cartl {_e(package_version())}">'
            f"<title>{_e(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{_e(self.title)}</h1>{intro}</header>"
            f'<nav aria-label="Contents"><ol>{toc}</ol></nav><main>{body}</main>'
            f"<footer>Made by cartl {_e(package_version())}. One self-contained file: "
            "nothing here loads from the network.</footer></body></html>\n"
        )


def _facts(facts: Mapping[str, Any] | None) -> str:
    if not facts:
        return ""
    items = "".join(
        f"<dt>{_e(k)}</dt><dd>{_e(_plain(v))}</dd>" for k, v in facts.items() if v is not None
    )
    return f'<dl class="facts">{items}</dl>'


def render_html(
    audit: Mapping[str, Any] | None,
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
    provenance: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    warnings: Sequence[Mapping[str, Any]] | None = None,
    title: str = "CARTL robustness report",
    facts: Mapping[str, Any] | None = None,
    compare: Mapping[str, Any] | None = None,
) -> str:
    """The report as one HTML document (no scripts, no external references).

    ``audit`` is an audit report's dict (``AuditReport.to_dict()``, ``JobOutcome.audit``);
    ``history`` the per-epoch records; ``source`` a transfer source's own robustness
    (:func:`cartl_core.provenance.source_summary`); ``warnings`` training warnings
    (``{name, detail, meaning, source}``), shown with the audit's and the failed checks;
    ``facts`` a few lines under the title (job id, status, files); ``compare`` a compare's
    candidate table and choice (``chosen``, ``candidates``, ``selection``, ``estimate``,
    ``dropped``), drawn as clean against robust accuracy per candidate.
    """
    audit = audit if isinstance(audit, Mapping) else {}
    rows = _records(history)
    charts = _Charts()
    threat = _threat(audit)
    page = _Page(title)
    warned = _all_warnings(audit, warnings)
    page.add("warnings", "Warnings", _warnings_section(warned, bool(audit.get("checks"))))
    if isinstance(compare, Mapping) and _records(compare.get("candidates")):
        page.add(
            "candidates", "Candidates: clean against robust", _compare_section(compare, charts)
        )
    if audit:
        page.add("attacks", "Accuracy per attack", _attacks_section(audit, threat, charts))
        page.add("eps", "Robustness against eps", _eps_section(audit, charts))
        page.add("classes", "Accuracy per class", _per_class_section(audit, charts))
        page.add("checks", "Sanity checks", _checks_section(audit))
    if isinstance(source, Mapping) and source:
        page.add(
            "inherited",
            "Inherited robustness: source against target",
            _inherited_section(audit, threat, source, charts),
        )
    if rows:
        page.add("training", "Training curves", _training_section(rows, charts))
    page.add("provenance", "Provenance", _provenance_section(provenance or {}, audit))
    return page.html(_facts(facts) + _summary(audit, threat))


def render_job_report(
    *,
    audit: Mapping[str, Any] | None,
    history: Sequence[Mapping[str, Any]] | None,
    metrics: Mapping[str, Any] | None,
    title: str,
    facts: Mapping[str, Any] | None = None,
) -> str:
    """The report of a job from what it stored: ``metrics`` carries the provenance, the
    transfer source's robustness and the training warnings (see :func:`cartl_core.jobs.run_job`).
    """
    metrics = metrics or {}
    return render_html(
        audit,
        history=history,
        provenance=metrics.get("provenance"),
        source=metrics.get("source"),
        warnings=metrics.get("warnings"),
        title=title,
        facts=facts,
        compare=metrics if metrics.get("candidates") else None,
    )
