"""The audit's sections of the report: the headline, each attack, eps, classes, checks, warnings.

Each function returns an HTML fragment for the page (:mod:`app.report.page`) from an audit's
plain data (``AuditReport.to_dict()``); keys an older audit lacks are skipped, not errors. Every
number a chart shows is also in a table, and a failure says WARNING in words.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.report import figures
from app.report.format import (
    Record,
    Threat,
    eps_text,
    interval_of,
    num,
    pct,
    pct_ci,
    plain,
    records,
    seconds,
)
from app.report.markup import esc, figure, table
from app.report.svg import SvgCharts

#: What a failure of the audit's older checks means (newer audits carry their own ``meaning``).
MEANINGS = {
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


def summary(audit: Record, threat: Threat) -> str:
    """The headline sentence and numbers, with why they mean nothing beside them where so."""
    if not audit:
        return (
            "<p>No audit yet: this job has no final audit (it was skipped, or has not run "
            "yet). The training curves and provenance below are what there is.</p>"
        )
    samples, clean = audit.get("samples"), audit.get("clean_accuracy")
    robust = audit.get("robust_accuracy")
    clean_ci = interval_of(audit, "clean_accuracy", samples)
    robust_ci = interval_of(audit, "robust_accuracy", samples)
    sentence = (
        f'<p class="lead">On {esc(plain(samples))} test samples the model is right on '
        f"<strong>{pct(clean)}</strong> of clean inputs and on <strong>{pct(robust)}</strong> "
        f"under attack ({esc(threat.text())}). Every accuracy below carries its 95% Wilson "
        "interval in brackets: where the accuracy on many more images like these would lie, "
        "given how many were measured.</p>"
    )
    # Beside the number, never below the fold: why it means nothing for this model.
    meaningless = "".join(
        f'<br><strong class="warn">MEANINGLESS: {esc(note)}</strong>'
        for note in audit.get("headline_notes") or []
    )
    rows: list[tuple[str, str]] = [
        ("Clean accuracy", esc(pct_ci(clean, clean_ci))),
        ("Robust accuracy", esc(pct_ci(robust, robust_ci)) + meaningless),
    ]
    w, r = num(audit.get("worst_case_accuracy")), num(robust)
    if w is not None and (r is None or abs(w - r) > 1e-9):
        rows.append(("Worst case over every attack at this eps", pct(w)))
    rows.append(("Threat model", esc(threat.text())))
    ensemble, members = audit.get("ensemble"), audit.get("ensemble_attacks")
    if ensemble or members:
        rows.append(("Attack ensemble", esc(" ".join(filter(None, (ensemble, _members(members)))))))
    rows.append(("Samples", esc(plain(samples))))
    if audit.get("device") is not None:
        rows.append(("Device", esc(audit["device"])))
    if audit.get("precision") is not None:
        rows.append(("Arithmetic of the attacks", esc(audit["precision"])))
    rows += [("Note", esc(note)) for note in audit.get("notes") or []]
    if audit.get("seconds") is not None:
        rows.append(("Audit time", seconds(audit.get("seconds"))))
    return sentence + table(
        "The headline numbers", ("measure", "value"), [(esc(k), v) for k, v in rows], cls="kv"
    )


def _members(members: Any) -> str:
    if isinstance(members, list | tuple) and members:
        return "(" + ", ".join(str(m) for m in members) + ")"
    return ""


# --------------------------------------------------------------------------- attacks


def attacks(audit: Record, threat: Threat, svg: SvgCharts) -> str:
    ran = records(audit.get("attacks"))
    chart = figures.attacks_chart(audit, threat)
    if not ran or chart is None:
        return "<p>This audit lists no attacks.</p>"
    note = (
        f" At the main threat model ({threat.text()}). For the ensemble's attacks the accuracy "
        "is cumulative: what is still right after that attack and every one before it, each "
        "attack running only on the samples its predecessors did not break. Named attacks show "
        "their own accuracy. The attacks run for the eps curve and the checks are in the table."
        if any("role" in a for a in ran)
        else " Each attack runs only on the samples still correct (clean-misclassified ones "
        "count as broken)."
    )
    caption = "Clean accuracy and the accuracy after each attack." + esc(note)
    # An attack's accuracy is over all the audit's samples (intervals from their count).
    n = audit.get("samples")
    return figure(svg(chart), caption) + _attacks_table([{**a, "_n": n} for a in ran])


_ATTACK_COLUMNS: tuple[tuple[str, str, Callable[[Record], str]], ...] = (
    ("role", "role", lambda a: esc(a.get("role", "n/a"))),
    ("", "threat model", lambda a: esc(_attack_threat(a))),
    ("steps", "steps", lambda a: esc(plain(a.get("steps")))),
    ("restarts", "restarts", lambda a: esc(plain(a.get("restarts")))),
    ("loss", "loss", lambda a: esc(plain(a.get("loss")))),
    ("samples", "run on", lambda a: esc(plain(a.get("samples")))),
    ("broke", "broke", lambda a: esc(plain(a.get("broke")))),
    (
        "",
        "accuracy",
        lambda a: esc(pct_ci(a.get("accuracy"), interval_of(a, "accuracy", a.get("_n")))),
    ),
    ("seconds", "time", lambda a: seconds(a.get("seconds"))),
)


def _attack_threat(a: Record) -> str:
    extra = []
    if a.get("alpha") is not None:
        extra.append(f"step {eps_text(a.get('alpha'))}")
    if a.get("queries") is not None:
        extra.append(f"{plain(a.get('queries'))} queries")
    threat = Threat(a.get("norm"), num(a.get("eps"))).text()
    return threat + ("; " + ", ".join(extra) if extra else "")


def _attacks_table(ran: list[Record]) -> str:
    # Older audits lack some keys (role, samples, broke): their columns are left out.
    columns = [c for c in _ATTACK_COLUMNS if not c[0] or any(c[0] in a for a in ran)]
    rows = [[esc(a.get("name", "?")), *(cell(a) for _, _, cell in columns)] for a in ran]
    head = ["attack", *(title for _, title, _ in columns)]
    head[head.index("accuracy")] = "accuracy (95% interval)"
    return table("Every attack the audit ran, in order", head, rows)


# --------------------------------------------------------------------------- eps and classes


def eps(audit: Record, svg: SvgCharts) -> str:
    chart = figures.eps_chart(audit)
    if chart is None:
        return (
            "<p>The audit ran at one eps only, so there is no curve. Give several radii "
            "(<code>--eps 4/255,8/255,16/255</code>) to see how fast robustness falls.</p>"
        )
    caption = "Robust accuracy against the attack radius; the point at eps 0 is clean accuracy."
    if any(p.hollow for s in chart.series for p in s.points):
        caption += " Hollow markers: measured on a subset of the samples (see the table)."
    out = figure(svg(chart), esc(caption))
    rows = [
        (
            esc(eps_text(r.get("eps"))),
            esc(pct_ci(r.get("robust_accuracy"), _point_interval(r))),
            esc(plain(r.get("samples"))),
            esc(plain(r.get("attacks"))),
            "subset" if r.get("subset") else "all samples",
        )
        for r in figures.by_eps(audit)
    ]
    if rows:
        head = ("eps", "robust accuracy (95% interval)", "samples", "attacks", "measured on")
        out += table("Robust accuracy at each eps", head, rows)
    return out


def _point_interval(point: Record) -> list[float] | None:
    """An eps point's interval: stored as ``interval``, or from its samples."""
    stored = {"robust_accuracy_interval": point.get("interval")}
    return interval_of({**point, **stored}, "robust_accuracy", point.get("samples"))


def per_class(audit: Record, svg: SvgCharts) -> str:
    chart = figures.per_class_chart(audit)
    if chart is None:
        return "<p>This audit has no per-class breakdown.</p>"
    classes = records(audit.get("per_class"))
    caption = "Clean (solid) and robust (hatched) accuracy per class, at the main eps."
    robust = [(r, lab) for c, lab in zip(classes, figures.class_labels(audit), strict=True)
              if (r := num(c.get("robust_accuracy"))) is not None]  # fmt: skip
    if robust:
        r, lab = min(robust)
        caption += f" Weakest under attack: {lab} ({pct(r)})."
    rows = [
        (
            esc(c.get("class", "?")),
            esc(c.get("name", "")),
            esc(plain(c.get("samples"))),
            *(esc(pct_ci(c.get(key), interval_of(c, key, c.get("samples"))))
              for key in ("clean_accuracy", "robust_accuracy")),
        )
        for c in classes
    ]  # fmt: skip
    head = ("class", "name", "samples", "clean accuracy (95% interval)",
            "robust accuracy (95% interval)")  # fmt: skip
    return figure(svg(chart), esc(caption)) + table("Accuracy per class", head, rows)


# --------------------------------------------------------------------------- checks, warnings


def _verdict(passed: Any) -> str:
    if passed is True:
        return "passed"
    if passed is False:
        return '<strong class="warn">WARNING: failed</strong>'
    return "not run"


def _meaning(check: Record) -> str:
    return str(check.get("meaning") or MEANINGS.get(str(check.get("name")), ""))


def checks(audit: Record) -> str:
    ran = records(audit.get("checks"))
    if not ran:
        return "<p>This audit ran no sanity checks.</p>"
    rows = [
        (esc(c.get("name", "?")), _verdict(c.get("passed")), esc(c.get("detail", "")),
         esc(_meaning(c)))
        for c in ran
    ]  # fmt: skip
    return (
        "<p>Checks for the ways an audit overstates robustness (after AutoAttack's "
        "<code>checks.py</code>). A failure does not make the model weak; it makes its robust "
        "accuracy untrustworthy.</p>"
        + table(
            "Sanity checks",
            ("check", "result", "what was measured", "what a failure means"),
            rows,
        )
    )


def all_warnings(audit: Record, extra: Any) -> list[Record]:
    """Failed checks, the audit's warnings and the training's, without repeats."""
    out: list[Record] = [
        {**c, "meaning": _meaning(c), "source": "check"}
        for c in records(audit.get("checks"))
        if c.get("passed") is False
    ]
    out += [{"source": "audit", **w} for w in records(audit.get("warnings"))]
    out += records(extra)
    seen: set[tuple[str, str]] = set()
    unique = []
    for w in out:
        key = (str(w.get("name")), str(w.get("detail")))
        if key not in seen:
            seen.add(key)
            unique.append(w)
    return unique


def warnings(warned: list[Record], has_checks: bool) -> str:
    if not warned:
        if not has_checks:
            return "<p>No warnings were recorded.</p>"
        return "<p>No warnings: every sanity check that ran passed.</p>"
    items = []
    for w in warned:
        source = f" ({esc(w['source'])})" if w.get("source") else ""
        meaning = f" <em>What it means: {esc(w['meaning'])}</em>" if w.get("meaning") else ""
        items.append(
            f'<li><strong class="warn">WARNING</strong> <code>{esc(w.get("name", "?"))}</code>'
            f"{source}: {esc(str(w.get('detail', '')).rstrip('.'))}.{meaning}</li>"
        )
    return f'<ul class="warnings">{"".join(items)}</ul>'
