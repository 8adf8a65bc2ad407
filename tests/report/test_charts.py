"""One chart description, drawn as SVG and as PNG: the axes, ticks and labels are decided once."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.report import (
    figures,
    plot_audit,
    plot_candidates,
    plot_comparison,
    plot_training,
    png,
)
from app.report.charts import Chart, nice_ticks
from app.report.format import threat_of
from app.report.svg import render
from cartl_core.errors import ConfigError
from tests.report.test_page import FULL_AUDIT, HISTORY

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(epochs: int) -> list[dict[str, Any]]:
    return [
        {"epoch": e, "lr": 0.1, "seconds": 1.0, "loss": 1 / e, "accuracy": 0.5 + 0.01 * e}
        for e in range(1, epochs + 1)
    ]


@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 7, 8, 13, 37, 250])
def test_epoch_ticks_are_whole_numbers_inside_the_axis(epochs: int) -> None:
    chart = figures.loss_chart(_history(epochs))
    assert chart is not None
    ticks = [t.value for t in chart.x.ticks]
    assert ticks, epochs
    assert all(t == int(t) for t in ticks), ticks
    assert all(chart.x.lo <= t <= chart.x.hi for t in ticks)
    assert [t.label for t in chart.x.ticks] == [f"{t:g}" for t in ticks]


def test_nice_ticks_without_integer_keep_fractions() -> None:
    assert nice_ticks(0, 1, 4) == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(1, 4, 6, integer=True) == [1, 2, 3, 4]


#: A compare's result as a job stores it, with each candidate's measured cost.
COMPARE_WITH_COSTS: dict[str, Any] = {
    "chosen": {"name": "cartl-k3"},
    "selection": {"ensemble": "fast", "norm": "linf", "eps": 0.2},
    "candidates": [
        {"name": "standard-k3", "method": "standard", "test_clean": 0.98, "test_robust": 0.11,
         "cost_seconds": 12.5, "device": "cpu, 2 threads"},
        {"name": "cartl-k3", "method": "cartl", "test_clean": 0.95, "test_robust": 0.27,
         "cost_seconds": 14.0, "device": "cpu, 2 threads"},
        {"name": "adversarial-k3", "method": "adversarial", "test_clean": 0.93,
         "test_robust": 0.35, "cost_seconds": 96.0, "device": "cpu, 2 threads"},
    ],
}  # fmt: skip


def test_the_cost_chart_puts_each_candidates_cost_against_its_robustness(
    tmp_path: Path,
) -> None:
    chart = figures.cost_chart(COMPARE_WITH_COSTS)
    assert chart is not None
    assert chart.kind == "scatter"
    points = {p.tip.split(":")[0]: p for s in chart.series for p in s.points}
    assert (points["adversarial-k3"].x, points["adversarial-k3"].y) == (96.0, 0.35)
    assert [p.label for p in points.values() if p.marked] == ["cartl-k3"]
    # Seconds, not percent, across; from 0 so that "several times the cost" reads as such.
    assert chart.x.lo == 0.0
    assert chart.x.hi >= 96.0
    assert all(t.label.endswith(" s") for t in chart.x.ticks)
    assert "cpu, 2 threads" in chart.x.label
    svg = render(chart, "cost")
    assert "adversarial-k3: 96 s, robust 35.0%" in svg
    assert "cartl-k3</text>" in svg  # the chosen one is named beside its ring
    out = plot_candidates(COMPARE_WITH_COSTS, tmp_path / "candidates.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    # Results from before costs were measured have no such chart.
    old = {**COMPARE_WITH_COSTS, "candidates": [
        {k: v for k, v in c.items() if k != "cost_seconds"}
        for c in COMPARE_WITH_COSTS["candidates"]
    ]}  # fmt: skip
    assert figures.cost_chart(old) is None


CANDIDATES_WITH_INTERVALS = {
    "chosen": {"name": "b"},
    "selection": {"best_val_clean": 0.9, "max_clean_drop": 0.05},
    "candidates": [
        {"name": "a", "method": "standard", "val_clean": 0.9, "val_robust": 0.2,
         "val_clean_interval": [0.85, 0.94], "val_robust_interval": [0.15, 0.26]},
        {"name": "b", "method": "cartl", "val_clean": 0.88, "val_robust": 0.4},
    ],
}  # fmt: skip


def test_intervals_are_drawn_as_whiskers_where_known(tmp_path: Path) -> None:
    chart = figures.candidates_chart(CANDIDATES_WITH_INTERVALS, "val", "validation")
    assert chart is not None
    points = {p.tip.split(":")[0]: p for s in chart.series for p in s.points}
    assert (points["a"].x_err, points["a"].y_err) == ((0.85, 0.94), (0.15, 0.26))
    assert (points["b"].x_err, points["b"].y_err) == (None, None)  # a result without them
    assert "robust 20.0% (15.0\u201326.0)" in points["a"].tip
    # The axes hold the whiskers, not only the points.
    assert chart.y.lo <= 0.15
    # One capped whisker per interval in the SVG (each a path of three segments).
    svg = render(chart, "w")
    assert len(re.findall(r'<path d="(?:M[\d.]+,[\d.]+L[\d.]+,[\d.]+){3}"', svg)) == 2
    bars = figures.comparison_chart(
        [("a", 0.9, 0.4)], title="t", intervals=[([0.85, 0.94], [0.3, 0.5])]
    )
    assert [s.points[0].x_err for s in bars.series] == [(0.85, 0.94), (0.3, 0.5)]
    assert "95% interval as a whisker" in bars.desc
    assert len(re.findall(r"<path d=", render(bars, "b"))) == 2
    assert png.save([chart, bars], tmp_path / "w.png").read_bytes().startswith(PNG_MAGIC)


def _charts() -> list[Chart]:
    charts = [
        figures.attacks_chart(FULL_AUDIT, threat_of(FULL_AUDIT)),
        figures.eps_chart(FULL_AUDIT),
        figures.per_class_chart(FULL_AUDIT),
        figures.accuracy_chart(HISTORY),
        figures.loss_chart(HISTORY),
        figures.comparison_chart([("a\nb", 0.9, 0.4), ("c", 0.8, 0.3)], title="t"),
        figures.comparison_chart(
            [("a", 0.9, 0.4), ("c", 0.8, 0.3)],
            title="t",
            intervals=[([0.85, 0.94], None), ([0.75, 0.84], [0.26, 0.34])],
        ),
        figures.candidates_chart(CANDIDATES_WITH_INTERVALS, "val", "validation"),
        figures.cost_chart(COMPARE_WITH_COSTS),
    ]
    assert None not in charts
    return [c for c in charts if c is not None]


def test_a_chart_is_plain_data() -> None:
    for chart in _charts():
        again = json.loads(json.dumps(chart.to_dict()))
        assert again["kind"] == chart.kind
        assert [t["label"] for t in again["x"]["ticks"]] == [t.label for t in chart.x.ticks]


def test_the_svg_shows_the_descriptions_ticks_and_labels() -> None:
    for chart in _charts():
        svg = render(chart, "c")
        texts = re.findall(r">([^<>]+)</(?:text|tspan)>", svg)
        ticks = [t.label for t in chart.x.ticks]
        if chart.kind != "bars":
            ticks += [t.label for t in chart.y.ticks] + [chart.x.label, chart.y.label]
        for label in ticks:
            assert label.replace("'", "&#x27;") in texts, (chart.title, label)


def test_every_kind_of_chart_draws_as_png(tmp_path: Path) -> None:
    out = png.save(_charts(), tmp_path / "all.png", title="every chart")
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_the_plots_read_the_stored_results(tmp_path: Path) -> None:
    """``cartl jobs plot`` and ``--plot`` hand over the history and audit as a job stores them."""
    train = plot_training(HISTORY, tmp_path / "t.png", title="transfer", audit=FULL_AUDIT)
    audit = plot_audit(FULL_AUDIT, tmp_path / "a.png")
    rows = [("transfer cartl k=4\nabc123\nlinf eps 0.0314", 0.9, 0.4), ("audit", 0.8, 0.2)]
    comparison = plot_comparison(rows, tmp_path / "c.png", robust_label="robust (standard)")
    for path in (train, audit, comparison):
        assert path.read_bytes().startswith(PNG_MAGIC)


def test_nothing_to_plot_is_said() -> None:
    with pytest.raises(ConfigError, match="nothing to plot"):
        plot_training([], "unused.png")
    with pytest.raises(ConfigError, match="nothing to plot"):
        plot_audit({"clean_accuracy": 0.5}, "unused.png")
