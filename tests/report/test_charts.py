"""One chart description, drawn as SVG and as PNG: the axes, ticks and labels are decided once."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.report import figures, plot_audit, plot_comparison, plot_training, png
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


def _charts() -> list[Chart]:
    charts = [
        figures.attacks_chart(FULL_AUDIT, threat_of(FULL_AUDIT)),
        figures.eps_chart(FULL_AUDIT),
        figures.per_class_chart(FULL_AUDIT),
        figures.accuracy_chart(HISTORY),
        figures.loss_chart(HISTORY),
        figures.comparison_chart([("a\nb", 0.9, 0.4), ("c", 0.8, 0.3)], title="t"),
        figures.candidates_chart(
            {
                "chosen": {"name": "b"},
                "selection": {"best_val_clean": 0.9, "max_clean_drop": 0.05},
                "candidates": [
                    {"name": "a", "method": "standard", "val_clean": 0.9, "val_robust": 0.2},
                    {"name": "b", "method": "cartl", "val_clean": 0.88, "val_robust": 0.4},
                ],
            },
            "val",
            "validation",
        ),
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
