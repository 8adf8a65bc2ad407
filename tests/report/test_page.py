"""The HTML report: self-contained, escaped, readable without colour, tolerant of old audits."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest

from app.report import render_html, render_job_report
from cartl_core.audit import SCHEMA_VERSION as AUDIT_SCHEMA_VERSION
from cartl_core.compare import SCHEMA_VERSION as COMPARE_SCHEMA_VERSION
from cartl_core.compare import CandidateResult, CompareResult, CostEstimate

EPS = 8 / 255


def _attack(name: str, role: str, accuracy: float, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "role": role,
        "norm": "linf",
        "eps": EPS,
        "steps": 100,
        "restarts": 1,
        "loss": "ce",
        "alpha": None,
        "queries": None,
        "samples": 470,
        "broke": 300,
        "accuracy": accuracy,
        "seconds": 1.2,
        **kw,
    }


#: An audit of the new shape (ensemble, by_eps, checks with their meaning, warnings).
FULL_AUDIT: dict[str, Any] = {
    "samples": 500,
    "clean_accuracy": 0.95,
    "robust_accuracy": 0.11,
    "ensemble": "standard",
    "ensemble_attacks": ["apgd-ce", "apgd-t", "square"],
    "norm": "linf",
    "eps": EPS,
    "attacks": [
        _attack("apgd-ce", "ensemble", 0.34),
        _attack("apgd-t", "ensemble", 0.13, loss="dlr-targeted"),
        _attack("square", "ensemble", 0.11, steps=None, queries=5000, loss="margin"),
        _attack("fgsm", "check", 0.5, steps=1, alpha=EPS),
    ],
    "by_eps": [
        {"eps": 4 / 255, "robust_accuracy": 0.4, "samples": 500, "attacks": "standard"},
        {"eps": EPS, "robust_accuracy": 0.11, "samples": 500, "attacks": "standard"},
        {
            "eps": 16 / 255,
            "robust_accuracy": 0.01,
            "samples": 100,
            "attacks": "apgd-ce",
            "subset": True,
        },
    ],
    "per_class": [
        {"class": 0, "name": "five", "samples": 250, "clean_accuracy": 0.9, "robust_accuracy": 0.1},
        {
            "class": 1,
            "name": "<script>alert('x')</script>",
            "samples": 250,
            "clean_accuracy": 1.0,
            "robust_accuracy": 0.12,
        },
    ],
    "checks": [
        {
            "name": "ce-pgd-gap",
            "passed": True,
            "detail": "CE PGD 0.12 vs ensemble 0.11",
            "meaning": "x",
        },
        {
            "name": "zero-gradients",
            "passed": False,
            "detail": "12% of samples have an all-zero input gradient",
            "meaning": "gradient masking: the robust accuracy is likely overstated",
        },
        {"name": "square-agrees", "passed": None, "detail": "skipped", "meaning": "y"},
    ],
    "warnings": [
        {
            "name": "few-samples",
            "detail": "500 samples: +-2 points",
            "meaning": "noisy",
            "source": "audit",
        }
    ],
    "worst_case_accuracy": 0.11,
    "seconds": 12.3,
    "device": "cpu",
    "config": {"eps": [EPS], "ensemble": "standard", "batch_size": 256},
}

#: What today's audit.py writes (PGD at each eps, FGSM, CW; checks without a meaning).
OLD_AUDIT: dict[str, Any] = {
    "samples": 64,
    "clean_accuracy": 0.8,
    "robust_accuracy": 0.5,
    "attacks": [
        {
            "name": "pgd-20-linf",
            "norm": "linf",
            "eps": e,
            "alpha": e / 4,
            "steps": 20,
            "restarts": 1,
            "loss": "ce",
            "accuracy": acc,
            "seconds": 0.5,
        }
        for e, acc in ((EPS, 0.5), (16 / 255, 0.2))
    ],
    "per_class": [
        {"class": 0, "name": "0", "samples": 32, "clean_accuracy": 0.8, "robust_accuracy": 0.5}
    ],
    "checks": [
        {"name": "fgsm-not-stronger-than-pgd", "passed": True, "detail": "FGSM 0.6 vs PGD 0.5"}
    ],
    "worst_case_accuracy": 0.45,
    "seconds": 3.0,
    "config": {"eps": [EPS, 16 / 255], "steps": 20, "alpha": None, "norm": "linf"},
}

HISTORY = [
    {
        "epoch": e,
        "lr": 0.05,
        "seconds": 2.0,
        "loss": 1.0 / e,
        "adv_accuracy": 0.3 + 0.05 * e,
        "test_accuracy": 0.6 + 0.05 * e,
        **({"trace_clean_accuracy": 0.6, "trace_robust_accuracy": 0.3} if e % 2 == 0 else {}),
    }
    for e in range(1, 5)
]


class _Structure(HTMLParser):
    """Collects tags, and fails on unbalanced ones inside the body."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs


def _parse(page: str) -> _Structure:
    parser = _Structure()
    parser.feed(page)
    parser.close()
    return parser


def test_a_full_report_has_every_section_and_loads_nothing() -> None:
    page = render_html(
        FULL_AUDIT,
        history=HISTORY,
        provenance={"seed": 3, "commit": "abc123", "dataset": {"name": "d.npz", "sha256": "f0"}},
        source={"clean_accuracy": 0.9, "robust_accuracy": 0.4, "norm": "linf", "eps": EPS},
        title="a transfer",
    )
    assert page.startswith("<!DOCTYPE html>")
    for anchor in (
        "warnings",
        "attacks",
        "eps",
        "classes",
        "checks",
        "inherited",
        "training",
        "provenance",
    ):
        assert f'<section id="{anchor}"' in page, anchor
    parsed = _parse(page)
    # Self-contained: no scripts, no links or sources to fetch, no URLs at all.
    assert "script" not in parsed.tags
    assert not {"link", "img", "iframe", "object", "embed"} & set(parsed.tags)
    assert not [a for a in parsed.attrs if a[0] in ("src", "srcset", "xlink:href")]
    assert "http://" not in page
    assert "https://" not in page
    assert [h for h in parsed.attrs if h[0] == "href" and not str(h[1]).startswith("#")] == []
    # Charts are inline SVG, each with a title and a description; tables have captions.
    assert parsed.tags.count("svg") >= 5
    assert parsed.tags.count("title") >= parsed.tags.count("svg") + 1
    assert parsed.tags.count("desc") == parsed.tags.count("svg")
    assert parsed.tags.count("caption") == parsed.tags.count("table")
    assert 'scope="col"' in page
    assert 'scope="row"' in page
    # The numbers a person looks for.
    assert "95.0%" in page
    assert "11.0%" in page
    assert "8/255" in page
    assert "apgd-t" in page
    assert "5000 queries" in page
    assert "trace: robust accuracy" in page
    assert "keeps <strong>28%</strong>" in page
    assert "abc123" in page


def test_failed_checks_and_warnings_say_WARNING_in_words() -> None:
    page = render_html(FULL_AUDIT, warnings=[{"name": "robust-overfitting", "detail": "fell"}])
    warnings = page.split('<section id="warnings"')[1].split("</section>")[0]
    assert warnings.count("WARNING") == 3  # the failed check, the audit's, the training's
    assert "zero-gradients" in warnings
    assert "few-samples" in warnings
    assert "robust-overfitting" in warnings
    checks = page.split('<section id="checks"')[1].split("</section>")[0]
    assert "WARNING" in checks
    assert "not run" in checks  # passed: null
    assert "gradient masking" in checks

    passing = {**FULL_AUDIT, "checks": FULL_AUDIT["checks"][:1], "warnings": []}
    assert "WARNING" not in render_html(passing)


def test_user_text_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    audit = {
        **OLD_AUDIT,
        "per_class": [{**OLD_AUDIT["per_class"][0], "name": evil}],
        "checks": [{"name": evil, "passed": False, "detail": f'"><img src=x onerror={evil}'}],
    }
    page = render_html(
        audit,
        title=evil,
        facts={"dataset": evil},
        provenance={"dataset": {"name": evil, "sha256": "0"}, "params": {"arch": evil}},
        warnings=[{"name": evil, "detail": evil, "meaning": evil}],
    )
    parsed = _parse(page)
    assert "script" not in parsed.tags
    assert "img" not in parsed.tags
    assert "&lt;script&gt;" in page
    assert not re.search(r"<script", page, re.IGNORECASE)


def test_an_old_minimal_audit_renders() -> None:
    page = render_html(OLD_AUDIT)
    assert "pgd-20-linf" in page
    assert "80.0%" in page
    assert "50.0%" in page
    assert "Worst case" in page
    assert "45.0%" in page
    # Two eps of one attack make a curve; the older checks get their meaning from the renderer.
    eps = page.split('<section id="eps"')[1].split("</section>")[0]
    assert "<svg" in eps
    assert "gradient masking" in page
    # Columns no attack has are left out rather than filled with n/a.
    attacks = page.split('<section id="attacks"')[1].split("</section>")[0]
    assert ">role<" not in attacks
    assert ">broke<" not in attacks


@pytest.mark.parametrize(
    "audit",
    [
        None,
        {},
        {"clean_accuracy": 0.5},
        {
            "clean_accuracy": "high",
            "robust_accuracy": float("nan"),
            "attacks": "pgd",
            "per_class": [None, {"name": 3}],
            "checks": [{"passed": "yes"}],
            "by_eps": [{"eps": None}, {"eps": 0.1, "robust_accuracy": None}],
        },
    ],
)
def test_missing_or_odd_values_do_not_break_the_page(audit: dict[str, Any] | None) -> None:
    page = render_html(audit, history=[{"epoch": 1, "loss": None}, {"note": "x"}])
    assert page.rstrip().endswith("</html>")
    _parse(page)


def test_one_eps_gives_no_curve_but_says_how_to_get_one() -> None:
    audit = {**OLD_AUDIT, "attacks": OLD_AUDIT["attacks"][:1]}
    eps = render_html(audit).split('<section id="eps"')[1].split("</section>")[0]
    assert "<svg" not in eps
    assert "--eps" in eps


def test_training_only_report_plots_every_numeric_key() -> None:
    history = [{**h, "spectral_norm": 0.4} for h in HISTORY]
    page = render_job_report(audit=None, history=history, metrics=None, title="no audit")
    assert "No audit yet" in page
    training = page.split('<section id="training"')[1].split("</section>")[0]
    for label in ("training loss", "test accuracy (clean)", "trace: clean accuracy"):
        assert label in training
    assert "spectral norm" in training
    assert "learning rate" in training
    assert training.count("<svg") >= 5  # accuracy, loss, lr, epoch time, spectral norm


def test_job_report_reads_provenance_source_and_warnings_from_metrics() -> None:
    metrics = {
        "provenance": {"seed": 7, "weights": {"name": "w.safetensors", "sha256": "ab" * 32}},
        "source": {"clean_accuracy": 0.9, "robust_accuracy": 0.5, "norm": "linf", "eps": 0.1},
        "warnings": [{"name": "robust-overfitting", "detail": "fell", "source": "training"}],
    }
    page = render_job_report(audit=OLD_AUDIT, history=HISTORY, metrics=metrics, title="t")
    assert "ab" * 32 in page
    assert "robust-overfitting" in page
    # The source was audited at another eps: the page says the two do not compare directly.
    inherited = page.split('<section id="inherited"')[1].split("</section>")[0]
    assert "not directly comparable" in inherited


def test_a_meaningless_number_says_so_beside_it_in_the_report() -> None:
    from cartl_core.audit import audit as run_audit
    from cartl_core.config import AuditConfig
    from tests.core.conftest import make_dataset
    from tests.core.masked_models import ConstantClass

    data = make_dataset(num_classes=3, n_train=3, n_test=48)
    cfg = AuditConfig(eps=(0.1,), attacks="fast", apgd_steps=5, check_samples=16)
    report = run_audit(ConstantClass(3).eval(), data.test, cfg).to_dict()
    assert report["schema_version"] == AUDIT_SCHEMA_VERSION
    page = render_html(report, title="constant")
    headline = page[page.index("The headline numbers") :]
    assert "MEANINGLESS: the model predicts (almost) one class" in headline
    assert "Arithmetic of the attacks" in headline


def test_a_compare_result_carries_its_schema_version_and_renders() -> None:
    chosen = CandidateResult("cartl-k3", "cartl", 3, 0.4, "frozen", 0.95, 0.29, 0.96, 0.25, 12.0)
    selection = {"reason": "cartl-k3: validation robust 0.290", "val_samples": 89}
    result = CompareResult([chosen], chosen, CostEstimate(1, 2.0, 6.0, []), selection, [], 9.0)
    table = result.to_dict()
    assert table["schema_version"] == COMPARE_SCHEMA_VERSION
    page = render_html(None, compare=table)
    candidates = page.split('<section id="candidates"')[1].split("</section>")[0]
    assert "cartl-k3 <strong>(chosen)</strong>" in candidates
    assert candidates.count("<svg") == 2  # validation and test


def test_a_compare_shows_each_candidates_cost_and_what_the_budget_dropped() -> None:
    def candidate(name: str, method: str, robust: float, train: float) -> CandidateResult:
        return CandidateResult(
            name, method, 3, None, "trainable", 0.95, robust, 0.96, robust, train + 9.0,
            train_seconds=train, audit_seconds=2.0, device="cpu, 2 threads",
        )  # fmt: skip

    standard = candidate("standard-k3", "standard", 0.11, 10.0)
    adversarial = candidate("adversarial-k3", "adversarial", 0.35, 80.0)
    over = {"name": "adversarial-k2", "cost_seconds": 95.0, "reason": "estimated 95 s, 8.0 s left"}
    estimate = CostEstimate(2, 90.0, 20.0, [], device="cpu, 2 threads", budget_seconds=100.0,
                            over_budget=[over])  # fmt: skip
    selection = {"reason": "adversarial-k3: validation robust 0.350", "val_samples": 89}
    result = CompareResult([standard, adversarial], adversarial, estimate, selection,
                           ["adversarial-k2"], 120.0)  # fmt: skip
    table = result.to_dict()
    assert table["candidates"][1]["cost_seconds"] == 82.0
    page = render_html(None, compare=table)
    candidates = page.split('<section id="candidates"')[1].split("</section>")[0]
    # Validation, test, and cost against robustness.
    assert candidates.count("<svg") == 3
    assert "Cost against robust accuracy of every candidate" in candidates
    assert "adversarial-k3: 82 s, robust 35.0% (chosen)" in candidates
    assert '<th scope="col">cost</th>' in candidates
    assert "Dropped before training to fit max_cost" in candidates
    assert "adversarial-k2: estimated 95 s, 8.0 s left" in candidates
    # The name max_cost dropped is not also said to be beyond max_candidates.
    assert "beyond the candidate budget" not in candidates
