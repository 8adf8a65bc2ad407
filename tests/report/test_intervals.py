"""Every reported accuracy carries its 95% Wilson interval, and a compare states its rule, its
confidence and its validation size: the audit's data and text, the job metrics, the CLI's
candidate table and the HTML report."""

from __future__ import annotations

from typing import Any

from app.report import render_html
from cartl_core.audit import AuditReport
from cartl_core.compare import CandidateResult, CompareResult, CostEstimate, candidate_table
from cartl_core.kinds._shared import audit_summary
from cartl_core.stats import wilson_interval

#: An audit as written before intervals: no interval keys anywhere.
OLD_AUDIT: dict[str, Any] = {
    "samples": 200,
    "clean_accuracy": 0.9,
    "robust_accuracy": 0.3,
    "worst_case_accuracy": 0.3,
    "attacks": [],
    "per_class": [
        {"class": 0, "name": "a", "samples": 100, "clean_accuracy": 0.95, "robust_accuracy": 0.4}
    ],
    "checks": [],
    "seconds": 1.0,
    "eps": 0.1,
    "norm": "linf",
}


def test_an_audit_carries_its_intervals_even_when_written_before_them() -> None:
    report = AuditReport.from_dict(OLD_AUDIT)
    assert report.clean_interval == list(wilson_interval(180, 200))
    assert report.robust_interval == list(wilson_interval(60, 200))
    assert report.interval == "95% Wilson interval, n = 200"
    text = report.table()
    assert "(0.851-0.934)" in text  # the clean row
    assert "0.3000 (0.241-0.367)" in text  # the headline
    summary = audit_summary(OLD_AUDIT)
    assert summary["robust_interval"] == list(wilson_interval(60, 200))
    assert summary["interval"] == "95% Wilson interval, n = 200"


def test_the_report_shows_intervals_for_the_headline_and_per_class() -> None:
    page = render_html(OLD_AUDIT)
    headline = page[page.index("The headline numbers") :]
    # 30.0% over 200 images: 24.1-36.7.
    assert "30.0% (24.1\u201336.7)" in headline
    assert "95% Wilson" in page
    per_class = page[page.index("Accuracy per class") :]
    low, high = wilson_interval(40, 100)
    assert f"40.0% ({100 * low:.1f}\u2013{100 * high:.1f})" in per_class


def _candidate(name: str, robust: float) -> CandidateResult:
    return CandidateResult(
        name, name.split("-")[0], 3, None, "trainable", 0.95, robust, 0.96, robust, 9.0,
        val_samples=200, test_samples=500,
    )  # fmt: skip


def test_a_compare_states_its_rule_confidence_and_validation_size() -> None:
    standard, cartl = _candidate("standard-k3", 0.20), _candidate("cartl-k3", 0.23)
    rows = [standard.to_dict(), cartl.to_dict()]
    assert rows[1]["val_robust_interval"] == list(wilson_interval(46, 200))
    assert rows[1]["test_robust_interval"] == list(wilson_interval(115, 500))
    text = candidate_table(rows, "standard-k3")
    assert "0.230 (.18-.29)" in text
    assert "validation n = 200, test n = 500" in text

    selection = {
        "rule": "paired, on the same validation images: ...",
        "confidence": 0.95,
        "val_samples": 200,
        "val_half_width": 0.0688,
        "preferred": "standard-k3",
        "reason": "standard-k3 (first in the grid's order; validation robust 0.200): no "
        "candidate is more robust beyond noise on 200 validation images",
        "comparisons": [
            {
                "name": "cartl-k3",
                "wins": 12,
                "losses": 6,
                "p_value": 0.119,
                "better": False,
                "resolvable": 0.045,
                "val_robust_difference": 0.03,
            }
        ],
    }
    result = CompareResult([standard, cartl], standard, CostEstimate(2, 2.0, 6.0, []),
                           selection, [], 9.0)  # fmt: skip
    page = render_html(None, compare=result.to_dict())
    section = page.split('<section id="candidates"')[1].split("</section>")[0]
    assert "Rule, at 95% confidence on 200 validation images" in section
    assert "no candidate is more robust beyond noise on 200 validation images" in section
    assert "Each candidate against the preferred one, standard-k3" in section
    assert "+3.0 points" in section
    assert "4.5 points" in section
    # The validation robust accuracy of cartl-k3 with its interval: 46 of 200.
    assert "23.0% (17.7\u201329.3)" in section
