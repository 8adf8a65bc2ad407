"""A robustness report a person reads: one self-contained HTML page.

Clean and robust accuracy per attack, robustness against eps, per-class accuracy, the sanity checks
with what a failure means, a transfer source's robustness next to the target's, the training
curves with the robust trace, and provenance. Charts are inline SVG (no scripts, no network),
every number is also in a table, and failures say WARNING in words, so the page reads in a text
browser, a screen reader or a black-and-white printout.

The input is the plain data a job stores (``JobOutcome.audit``, ``.history``, ``.metrics``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from app.report import job, sections
from app.report.format import plain, records, threat_of
from app.report.markup import esc
from app.report.svg import SvgCharts

__all__ = ["render_html", "render_job_report"]


@functools.cache
def _css() -> str:
    """The page's style (``report.css`` beside this module, shipped as package data)."""
    return resources.files(__package__).joinpath("report.css").read_text(encoding="utf-8")


@dataclass
class _Page:
    title: str
    sections: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, anchor: str, heading: str, body: str) -> None:
        self.sections.append((anchor, heading, body))

    def html(self, intro: str) -> str:
        from cartl_core.provenance import package_version

        toc = "".join(f'<li><a href="#{a}">{esc(h)}</a></li>' for a, h, _ in self.sections)
        body = "".join(
            f'<section id="{a}" aria-labelledby="{a}-h"><h2 id="{a}-h">{esc(h)}</h2>{b}</section>'
            for a, h, b in self.sections
        )
        version = esc(package_version())
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="cartl {version}">'
            f"<title>{esc(self.title)}</title><style>{_css()}</style></head><body>"
            f"<header><h1>{esc(self.title)}</h1>{intro}</header>"
            f'<nav aria-label="Contents"><ol>{toc}</ol></nav><main>{body}</main>'
            f"<footer>Made by cartl {version}. One self-contained file: "
            "nothing here loads from the network.</footer></body></html>\n"
        )


def _facts(facts: Mapping[str, Any] | None) -> str:
    if not facts:
        return ""
    items = "".join(
        f"<dt>{esc(k)}</dt><dd>{esc(plain(v))}</dd>" for k, v in facts.items() if v is not None
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
    rows = records(history)
    svg = SvgCharts()
    threat = threat_of(audit)
    page = _Page(title)
    warned = sections.all_warnings(audit, warnings)
    page.add("warnings", "Warnings", sections.warnings(warned, bool(audit.get("checks"))))
    if isinstance(compare, Mapping) and records(compare.get("candidates")):
        page.add("candidates", "Candidates: clean against robust", job.candidates(compare, svg))
    if audit:
        page.add("attacks", "Accuracy per attack", sections.attacks(audit, threat, svg))
        page.add("eps", "Robustness against eps", sections.eps(audit, svg))
        page.add("classes", "Accuracy per class", sections.per_class(audit, svg))
        page.add("checks", "Sanity checks", sections.checks(audit))
    if isinstance(source, Mapping) and source:
        page.add(
            "inherited",
            "Inherited robustness: source against target",
            job.inherited(audit, threat, source, svg),
        )
    if rows:
        page.add("training", "Training curves", job.training(rows, svg))
    page.add("provenance", "Provenance", job.provenance(provenance or {}, audit))
    return page.html(_facts(facts) + sections.summary(audit, threat))


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
