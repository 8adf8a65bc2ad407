"""The charts of a job's results, as descriptions (:mod:`app.report.charts`).

Read from the plain data a job stores (an audit's ``to_dict()``, the per-epoch history, a
compare's candidate table), tolerant of older shapes: keys an older result lacks are skipped. The
report's sections put these charts on the page beside their tables; the PNGs
(:mod:`app.report.plots`) draw the same charts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from app.report.charts import (
    Chart,
    Dot,
    Interval,
    Line,
    bar_chart,
    line_chart,
    scatter_chart,
)
from app.report.format import (
    Record,
    Threat,
    eps_text,
    interval_of,
    mapping,
    num,
    pct,
    pct_ci,
    plain,
    records,
)

#: Readable names of the per-epoch history keys we know.
HISTORY_LABELS = {
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

#: The two models of the inherited-robustness chart.
INHERITED = ("source (its own test data)", "this model (target test data)")


# --------------------------------------------------------------------------- the audit


def attack_label(a: Record) -> str:
    role = a.get("role")
    tag = f" ({role})" if role and role != "ensemble" else ""
    return f"{a.get('name', '?')} @ {eps_text(a.get('eps'))}{tag}"


def _charted(attacks: list[Record], threat: Threat) -> list[Record]:
    """The attacks of the main threat model (ensemble and named); the ones run for the eps curve
    or the checks are in the table only. An older audit (no roles): every attack."""
    if not any("role" in a for a in attacks):
        return attacks
    main = [
        a
        for a in attacks
        if a.get("role", "ensemble") in ("ensemble", "named")
        and (threat.eps is None or num(a.get("eps")) == threat.eps)
    ]
    return main or attacks


def attacks_chart(audit: Record, threat: Threat) -> Chart | None:
    """Clean accuracy, then the accuracy after each attack of the main threat model."""
    shown = _charted(records(audit.get("attacks")), threat)
    if not shown:
        return None
    labels = ["clean", *(attack_label(a) for a in shown)]
    values = [num(audit.get("clean_accuracy")), *(num(a.get("accuracy")) for a in shown)]
    return bar_chart(
        "Accuracy per attack",
        "Horizontal bars: clean accuracy, then the accuracy after each attack. "
        + "; ".join(f"{lab}: {pct(v)}" for lab, v in zip(labels, values, strict=True)),
        labels,
        [("accuracy", values)],
    )


def by_eps(audit: Record) -> list[Record]:
    """The audit's robust accuracy at each eps, by eps (all samples before a subset's)."""
    return sorted(
        (r for r in records(audit.get("by_eps")) if num(r.get("eps")) is not None),
        key=lambda r: (float(r["eps"]), bool(r.get("subset"))),
    )


def _eps_lines(audit: Record) -> list[Line]:
    """Robust accuracy against eps: the audit's ``by_eps``, else each attack run at several eps.

    Points measured on all samples make one line from clean accuracy at eps 0; points measured
    on a subset (cheaper attacks at larger radii) another, with hollow markers.
    """
    clean = num(audit.get("clean_accuracy"))
    start = [(0.0, clean)] if clean is not None else []
    rows = by_eps(audit)
    lines: list[Line] = []
    for subset in (False, True) if rows else ():
        part = [r for r in rows if bool(r.get("subset")) == subset]
        pts = [
            (float(r["eps"]), acc)
            for r in part
            if (acc := num(r.get("robust_accuracy"))) is not None
        ]
        if not pts:
            continue
        attacks = plain(part[0].get("attacks"))
        if subset:
            label = f"on a subset of {plain(part[0].get('samples'))} samples ({attacks} attacks)"
            lines.append(Line(label, pts, hollow=set(range(len(pts)))))
        else:
            lines.append(Line(f"robust accuracy ({attacks} attacks)", start + pts, strong=True))
    if rows:
        return lines
    runs: dict[str, list[tuple[float, float]]] = {}
    for a in records(audit.get("attacks")):
        eps, acc = num(a.get("eps")), num(a.get("accuracy"))
        if eps is not None and acc is not None:
            runs.setdefault(str(a.get("name", "?")), []).append((eps, acc))
    for name, pts in runs.items():
        if len({e for e, _ in pts}) >= 2:
            lines.append(Line(name, start + sorted(pts), strong=not lines))
    return lines


def eps_chart(audit: Record) -> Chart | None:
    """Robust accuracy against the attack radius; None below two radii (no curve)."""
    lines = _eps_lines(audit)
    if len({x for s in lines for x, _ in s.points if x > 0}) < 2:
        return None
    desc = (
        "Line chart of robust accuracy (y, 0 to 100%) against the attack radius eps (x); eps 0 "
        "is clean accuracy. "
        + "; ".join(
            f"{s.label}: " + ", ".join(f"{eps_text(x)} {pct(y)}" for x, y in s.points)
            for s in lines
        )
    )
    # Linf radii are usually k/255: an axis in 255ths reads as the paper's numbers do.
    per255 = all(
        0 <= x < 1 and abs(x * 255 - round(x * 255)) < 1e-6 for s in lines for x, _ in s.points
    )
    for s in lines:
        if per255:
            s.points = [(x * 255, y) for x, y in s.points]
            s.x_text = lambda v: eps_text(v / 255)
        else:
            s.x_text = eps_text
    return line_chart(
        "Robust accuracy against eps",
        desc,
        lines,
        x_label="eps (attack radius), in 255ths" if per255 else "eps (attack radius)",
        y_label="robust accuracy",
        unit_interval=True,
        x_text=(lambda v: f"{v:g}/255" if v else "0") if per255 else (lambda v: f"{v:.3g}"),
    )


def class_labels(audit: Record) -> list[str]:
    return [f"{c.get('class', '?')}: {c.get('name', '')}" for c in records(audit.get("per_class"))]


def per_class_chart(audit: Record) -> Chart | None:
    classes = records(audit.get("per_class"))
    if not classes:
        return None
    labels = class_labels(audit)
    clean = [num(c.get("clean_accuracy")) for c in classes]
    robust = [num(c.get("robust_accuracy")) for c in classes]
    return bar_chart(
        "Accuracy per class, clean and under attack",
        "Horizontal bars, two per class: clean accuracy (solid) and robust accuracy (hatched). "
        + "; ".join(
            f"{lab}: clean {pct(c)}, robust {pct(r)}"
            for lab, c, r in zip(labels, clean, robust, strict=True)
        ),
        labels,
        [("clean", clean), ("robust", robust)],
    )


def inherited_chart(audit: Record, source: Record) -> Chart:
    """A transfer source's clean and robust accuracy beside the fine-tuned model's."""
    clean = [num(source.get("clean_accuracy")), num(audit.get("clean_accuracy"))]
    robust = [num(source.get("robust_accuracy")), num(audit.get("robust_accuracy"))]
    spans = [
        [
            _span(interval_of(r, key, r.get("samples")))
            for key in ("clean_accuracy", "robust_accuracy")
        ]
        for r in (source, audit)
    ]
    return bar_chart(
        "Source robustness against target robustness",
        f"Bars: {INHERITED[0]} clean {pct(clean[0])}, robust {pct(robust[0])}; "
        f"{INHERITED[1]} clean {pct(clean[1])}, robust {pct(robust[1])}.",
        ["clean accuracy", "robust accuracy"],
        [(INHERITED[0], [clean[0], robust[0]]), (INHERITED[1], [clean[1], robust[1]])],
        intervals=spans,
    )


def comparison_chart(
    rows: Sequence[tuple[str, float, float]],
    *,
    title: str,
    robust_label: str = "robust",
    intervals: Sequence[tuple[Sequence[float] | None, Sequence[float] | None]] | None = None,
) -> Chart:
    """Clean and robust accuracy of each labelled model (a label may have several lines);
    ``intervals``: each row's (clean, robust) 95% intervals, drawn as whiskers."""
    spans = [(_span(c), _span(r)) for c, r in intervals] if intervals else None
    return bar_chart(
        title,
        "Horizontal bars, two per model: clean accuracy (solid) and robust accuracy (hatched)"
        + (", each with its 95% interval as a whisker." if spans else "."),
        [r[0] for r in rows],
        [("clean", [r[1] for r in rows]), (robust_label, [r[2] for r in rows])],
        intervals=[[c for c, _ in spans], [r for _, r in spans]] if spans else None,
    )


# --------------------------------------------------------------------------- compare


def clean_floor(compare: Record) -> float | None:
    """The lowest validation clean accuracy a chosen candidate may have."""
    selection = mapping(compare.get("selection"))
    best, drop = num(selection.get("best_val_clean")), num(selection.get("max_clean_drop"))
    return best - drop if best is not None and drop is not None else None


def candidates_chart(compare: Record, split: str, label: str) -> Chart | None:
    """Clean against robust accuracy of every candidate on ``split`` (``val`` draws the floor)."""
    name = mapping(compare.get("chosen")).get("name")
    floor = clean_floor(compare) if split == "val" else None
    dots = _candidate_dots(
        compare, f"{split}_clean", f"{split}_robust", lambda x: f"clean {pct(x)}"
    )
    if not dots:
        return None
    return scatter_chart(
        f"Clean against robust accuracy of every candidate ({label} split)",
        f"One point per candidate; the chosen one, {name}, is ringed and labelled."
        + (
            f" The dashed line, {pct(floor)}, is the best clean accuracy less the drop allowed; "
            "a candidate left of it is ruled out only where its drop is beyond noise."
            if floor
            else ""
        ),
        dots,
        x_label=f"clean accuracy ({label})",
        y_label=f"robust accuracy ({label})",
        x_floor=floor,
    )


def cost_chart(compare: Record, split: str = "test", label: str = "test") -> Chart | None:
    """Each candidate's measured cost (device-seconds of its training and validation audit)
    against its robust accuracy on ``split``; None for results from before costs were measured."""
    name = mapping(compare.get("chosen")).get("name")
    dots = [d for d in _candidate_dots(compare, "cost_seconds", f"{split}_robust", _cost_text)
            if d.x > 0]  # fmt: skip
    if not dots:
        return None
    devices = {str(r.get("device")) for r in records(compare.get("candidates")) if r.get("device")}
    where = f" on {', '.join(sorted(devices))}" if devices else ""
    return scatter_chart(
        f"Cost against robust accuracy of every candidate ({label} split)",
        f"One point per candidate: its device-seconds of training and validation audit{where} "
        f"across, its robust accuracy ({label}) up; the chosen one, {name}, is ringed and "
        "labelled.",
        dots,
        x_label=f"cost: device-seconds of training and validation audit{where}",
        y_label=f"robust accuracy ({label})",
        x_text=_cost_text,
    )


def _cost_text(value: float) -> str:
    return f"{value:.3g} s"


def _candidate_dots(
    compare: Record, x_key: str, y_key: str, x_text: Callable[[float], str]
) -> list[Dot]:
    """One dot per candidate that has both numbers, the chosen one marked; its tip reads
    "NAME: X_TEXT, robust Y"."""
    name = mapping(compare.get("chosen")).get("name")
    dots = []
    for r in records(compare.get("candidates")):
        x, y = num(r.get(x_key)), num(r.get(y_key))
        if x is None or y is None:
            continue
        chosen = r.get("name") == name
        y_interval = interval_of(r, y_key)
        x_err, y_err = _span(interval_of(r, x_key)), _span(y_interval)
        tip = f"{r.get('name')}: {x_text(x)}, robust {pct_ci(y, y_interval)}"
        tip += " (chosen)" if chosen else ""
        dots.append(Dot(str(r.get("name")), str(r.get("method")), x, y, marked=chosen, tip=tip,
                        x_err=x_err, y_err=y_err))  # fmt: skip
    return dots


def _span(interval: Sequence[float] | None) -> Interval | None:
    return None if interval is None else (interval[0], interval[1])


# --------------------------------------------------------------------------- training


def history_keys(history: Sequence[Record]) -> list[str]:
    """Every numeric per-epoch key, in the order they first appear."""
    keys: list[str] = []
    for row in history:
        for k, v in row.items():
            if k != "epoch" and k not in keys and num(v) is not None:
                keys.append(k)
    return keys


def history_label(key: str) -> str:
    return HISTORY_LABELS.get(key, key.replace("_", " "))


def _history_line(history: Sequence[Record], key: str, **kw: Any) -> Line:
    pts = []
    for i, row in enumerate(history):
        x, y = num(row.get("epoch")), num(row.get(key))
        if y is not None:
            pts.append((x if x is not None else float(i + 1), y))
    return Line(history_label(key), pts, x_text=lambda v: f"epoch {v:g}", **kw)


def _epochs(title: str, desc: str, lines: list[Line], y_label: str, **kw: Any) -> Chart:
    return line_chart(title, desc, lines, x_label="epoch", y_label=y_label, x_integer=True, **kw)


def accuracy_chart(history: Sequence[Record]) -> Chart | None:
    """Every accuracy per epoch: the trace first (the strongest lines), clean before robust."""
    keys = sorted(
        (k for k in history_keys(history) if "accuracy" in k),
        key=lambda k: ("trace" not in k, "robust" in k or "adv" in k, k),
    )
    if not keys:
        return None
    lines = [_history_line(history, k, strong="trace" in k) for k in keys]
    desc = "Line chart, y from 0 to 100%: " + ", ".join(s.label for s in lines) + "."
    return _epochs("Accuracy per epoch", desc, lines, "accuracy", unit_interval=True)


def loss_chart(history: Sequence[Record]) -> Chart | None:
    keys = [k for k in history_keys(history) if "loss" in k]
    if not keys:
        return None
    lines = [_history_line(history, k, y_text=lambda v: f"{v:.4g}") for k in keys]
    desc = "Line chart: " + ", ".join(s.label for s in lines) + "."
    return _epochs("Loss per epoch", desc, lines, "loss")


def other_charts(history: Sequence[Record]) -> list[Chart]:
    """A small chart for every other per-epoch number (learning rate, epoch time, ...)."""
    keys = [k for k in history_keys(history) if "accuracy" not in k and "loss" not in k]
    return [
        _epochs(
            history_label(k).capitalize() + ", by epoch",
            f"Line chart of {history_label(k)} per epoch.",
            [_history_line(history, k, y_text=lambda v: f"{v:.4g}")],
            history_label(k),
            width=380,
            height=240,
        )
        for k in keys
    ]
