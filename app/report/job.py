"""The report's sections around the audit: the transfer source, a compare's candidates, the
training curves and the provenance of the numbers.

Each function returns an HTML fragment for the page (:mod:`app.report.page`) from what the job
stored (``metrics``, the per-epoch history); keys an older job lacks are skipped, not errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.report import figures
from app.report.format import (
    Record,
    Threat,
    interval_of,
    mapping,
    num,
    pct,
    pct_ci,
    plain,
    records,
    seconds,
)
from app.report.markup import esc, figure, kv_table, table
from app.report.svg import SvgCharts

# --------------------------------------------------------------------------- transfer


def inherited(audit: Record, threat: Threat, source: Record, svg: SvgCharts) -> str:
    """How much of the transfer source's robustness the fine-tuned model kept."""
    src_threat = Threat(source.get("norm"), num(source.get("eps")))
    model = " ".join(str(v) for v in (source.get("arch"), source.get("method")) if v)
    rows = [
        (esc(figures.INHERITED[0]), esc(model or "n/a"), *_accuracies(source),
         esc(src_threat.text()), esc(plain(source.get("samples")))),
        (esc(figures.INHERITED[1]), "", *_accuracies(audit), esc(threat.text()),
         esc(plain(audit.get("samples")))),
    ]  # fmt: skip
    robust = num(source.get("robust_accuracy")), num(audit.get("robust_accuracy"))
    caption = "Clean and robust accuracy of the source (solid) and of this model (hatched)."
    head = ("model", "architecture, training", "clean (95% interval)", "robust (95% interval)",
            "threat model", "samples")  # fmt: skip
    return (
        "<p>How much of the source's robustness the fine-tuned model kept. The two were "
        "measured on different test sets (the source's and the target's), so compare the "
        "robust share of clean accuracy as much as the raw numbers.</p>"
        + figure(svg(figures.inherited_chart(audit, source)), caption)
        + table("Inherited robustness", head, rows)
        + _retained(src_threat, threat, robust)
    )


def _accuracies(record: Record) -> tuple[str, str]:
    """Clean and robust accuracy, each with its interval (from the samples where not stored)."""
    n = record.get("samples")
    return (
        esc(pct_ci(record.get("clean_accuracy"), interval_of(record, "clean_accuracy", n))),
        esc(pct_ci(record.get("robust_accuracy"), interval_of(record, "robust_accuracy", n))),
    )


def _retained(src: Threat, tgt: Threat, robust: tuple[float | None, float | None]) -> str:
    s, t = robust
    if s is None or t is None:
        return ""
    same = src.norm == tgt.norm and (
        src.eps is not None and tgt.eps is not None and abs(src.eps - tgt.eps) < 1e-9
    )
    if not same:
        return (
            f'<p><strong class="warn">WARNING</strong> the source was audited at '
            f"{esc(src.text())} and this model at {esc(tgt.text())}; the two robust accuracies "
            "are not directly comparable.</p>"
        )
    if s <= 0:
        return "<p>The source had no robust accuracy to inherit.</p>"
    return (
        f"<p>This model keeps <strong>{100 * t / s:.0f}%</strong> of the source's robust "
        f"accuracy ({pct(t)} of {pct(s)}) at {esc(tgt.text())}.</p>"
    )


# --------------------------------------------------------------------------- compare


def candidates(compare: Record, svg: SvgCharts) -> str:
    """Every candidate's clean against robust accuracy, the choice and how it was made."""
    rows = records(compare.get("candidates"))
    chosen = mapping(compare.get("chosen"))
    name = chosen.get("name")
    selection = mapping(compare.get("selection"))
    threat = Threat(selection.get("norm"), num(selection.get("eps")))
    ensemble = selection.get("ensemble") or "fast"
    out = [
        f"<p>Every candidate was trained on the target's training data less a held-out "
        f"validation split ({esc(plain(selection.get('val_samples')))} images), audited on that "
        f"split and on the test split with the {esc(ensemble)} ensemble at {esc(threat.text())}. "
        f"The choice used the validation split only; the test numbers are for this report.</p>"
    ]
    if chosen.get("reason"):
        out.append(f'<p class="lead">Chosen: <strong>{esc(chosen["reason"])}</strong></p>')
    out.append(_rule(selection))
    for split, label in (("val", "validation"), ("test", "test")):
        chart = figures.candidates_chart(compare, split, label)
        if chart is None:
            continue
        caption = (
            f"{label.capitalize()} split: one point per candidate, coloured by method; the "
            "chosen candidate is ringed."
        )
        if chart.guides:
            caption += (
                " The dashed line: the best validation clean accuracy less max_clean_drop; only "
                "a candidate whose drop exceeds it beyond noise was left out."
            )
        out.append(figure(svg(chart), esc(caption)))
    cost = figures.cost_chart(compare)
    if cost is not None:
        caption = (
            "Cost against robustness: each candidate's measured device-seconds (its training and "
            "its validation audit) against its robust accuracy on the test split; the chosen "
            "candidate is ringed."
        )
        out.append(figure(svg(cost), esc(caption)))
    out.append(f'<div class="scroll">{_candidates_table(rows, name)}</div>')
    estimate = mapping(compare.get("estimate"))
    over = records(estimate.get("over_budget"))
    over_names = {str(d.get("name")) for d in over}
    dropped = compare.get("dropped")
    if isinstance(dropped, list) and dropped:
        names = esc(", ".join(str(d) for d in dropped if str(d) not in over_names))
        if names:
            out.append(f"<p>Not trained (beyond the candidate budget): {names}.</p>")
    if over:
        reasons = "; ".join(f"{d.get('name')}: {d.get('reason')}" for d in over)
        out.append(
            f"<p>Dropped before training to fit max_cost "
            f"{esc(seconds(estimate.get('budget_seconds')))}: {esc(reasons)}.</p>"
        )
    if estimate:
        where = f" on {estimate['device']}" if estimate.get("device") else ""
        out.append(
            f"<p>Estimated before the start{esc(where)}: training "
            f"{seconds(estimate.get('train_seconds'))}, audits at most "
            f"{seconds(estimate.get('audit_seconds_max'))} (every sample surviving every attack "
            "step; real audits stop on a sample once it breaks).</p>"
        )
    return "".join(out)


def _rule(selection: Record) -> str:
    """The rule the choice followed, its confidence, the validation size, and each paired
    comparison with the preferred candidate (a selection from before the paired rule: its
    rule alone)."""
    rule = selection.get("rule")
    if not rule:
        return ""
    confidence, n = num(selection.get("confidence")), selection.get("val_samples")
    if confidence is None:
        return f"<p>Rule: {esc(rule)} (validation: {esc(plain(n))} images).</p>"
    width = num(selection.get("val_half_width"))
    out = (
        f"<p>Rule, at {confidence:.0%} confidence on {esc(plain(n))} validation images"
        + (f" (one accuracy's 95% interval spans at most &plusmn;{100 * width:.1f} points)"
           if width is not None else "")
        + f": {esc(rule)}.</p>"
    )  # fmt: skip
    comparisons = records(selection.get("comparisons"))
    if comparisons:
        cells = [
            (esc(c.get("name")), esc(plain(c.get("wins"))), esc(plain(c.get("losses"))),
             _points(c.get("val_robust_difference"), signed=True), esc(plain(c.get("p_value"))),
             _points(c.get("resolvable")) if c.get("resolvable") is not None
             else "none: too few images where they disagree",
             '<strong>yes</strong>' if c.get("better") else "no")
            for c in comparisons
        ]  # fmt: skip
        head = ("candidate", "robust where the preferred is not", "the reverse",
                "difference", "p (one-sided)", "smallest resolvable difference",
                "better beyond noise")  # fmt: skip
        preferred = plain(selection.get("preferred"))
        out += table(
            f"Each candidate against the preferred one, {preferred}, on the same validation "
            "images (exact McNemar test, Holm-corrected)",
            head,
            cells,
        )
    return out


def _points(value: Any, signed: bool = False) -> str:
    """A difference of accuracies in points; n/a where none (no difference resolvable)."""
    v = num(value)
    if v is None:
        return "n/a"
    return f"{100 * v:+.1f} points" if signed else f"{100 * v:.1f} points"


def _candidates_table(rows: list[Record], name: Any) -> str:
    cells = [
        (
            esc(r.get("name")) + (" <strong>(chosen)</strong>" if r.get("name") == name else ""),
            esc(plain(r.get("method"))),
            esc(plain(r.get("k"))),
            esc(plain(r.get("norm_beta")) if r.get("norm_beta") is not None else "-"),
            esc(plain(r.get("bn"))),
            *(esc(pct_ci(r.get(key), interval_of(r, key, r.get(f"{split}_samples"))))
              for split in ("val", "test") for key in (f"{split}_clean", f"{split}_robust")),
            # Measured device-seconds of training and validation audit (older results: total).
            seconds(r.get("cost_seconds", r.get("seconds"))),
        )
        for r in rows
    ]  # fmt: skip
    head = ("candidate", "method", "k", "beta", "BN", "val clean (95% interval)",
            "val robust (95% interval)", "test clean (95% interval)",
            "test robust (95% interval)", "cost")  # fmt: skip
    return table(
        "Candidates, in the order they were trained (cost: measured device-seconds of training "
        "and validation audit)",
        head,
        cells,
    )


# --------------------------------------------------------------------------- training


def training(history: Sequence[Record], svg: SvgCharts) -> str:
    """Accuracy and loss per epoch, a small chart for every other number, and the table."""
    out = []
    accuracy = figures.accuracy_chart(history)
    if accuracy is not None:
        caption = (
            "Accuracy per epoch. The trace (when recorded) is measured on held-out samples with "
            "and without attack: a robust trace that falls while training accuracy rises is "
            "robust overfitting."
        )
        out.append(figure(svg(accuracy), caption))
    loss = figures.loss_chart(history)
    if loss is not None:
        out.append(figure(svg(loss), "Training loss per epoch."))
    small = [figure(svg(c), esc(c.title) + ".") for c in figures.other_charts(history)]
    if small:
        out.append(f'<div class="small-multiples">{"".join(small)}</div>')
    out.append(_history_table(history, figures.history_keys(history)))
    return "".join(out)


def _history_table(history: Sequence[Record], keys: list[str]) -> str:
    rows = []
    for i, row in enumerate(history):
        cells = [esc(plain(row.get("epoch", i + 1)))]
        for k in keys:
            v = num(row.get(k))
            if v is None:
                cells.append("")
            else:
                cells.append(pct(v) if "accuracy" in k else f"{v:.4g}")
        rows.append(cells)
    head = ["epoch", *(figures.history_label(k) for k in keys)]
    return f'<div class="scroll">{table("Every epoch", head, rows, cls="history")}</div>'


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
_FILES = (("dataset", "dataset file"), ("checkpoint", "input checkpoint"),
          ("weights", "written weights"))  # fmt: skip


def _file_text(value: Any) -> str:
    if not isinstance(value, Mapping):
        return "n/a" if value is None else str(value)
    size = value.get("bytes")
    size_text = f", {size:,} bytes" if isinstance(size, int) else ""
    return f"{value.get('name', '?')}{size_text}, sha256 {value.get('sha256', '?')}"


def _provenance_text(key: str, value: Any) -> str:
    if key == "commit" and value is None:
        return "unknown (not a git checkout; set CARTL_COMMIT in builds)"
    return seconds(value) if key == "wall_seconds" else plain(value)


def provenance(prov: Record, audit: Record) -> str:
    """Where the numbers come from: versions, device, seed, the files' hashes, the settings."""
    rows = [
        (esc(label), f"<code>{esc(_provenance_text(key, prov[key]))}</code>")
        for key, label in _PROVENANCE_LABELS
        if key in prov
    ]
    rows += [
        (esc(label), f"<code>{esc(_file_text(prov[key]))}</code>")
        for key, label in _FILES
        if prov.get(key) is not None
    ]
    out = []
    if rows:
        out.append(table("Where these numbers come from", ("what", "value"), rows, cls="kv"))
    settings = prov.get("attack_settings") or audit.get("config")
    if isinstance(settings, Mapping) and settings:
        out.append(kv_table("Attack settings of the audit", sorted(settings.items())))
    params = prov.get("params")
    if isinstance(params, Mapping) and params:
        out.append(kv_table("Job parameters", sorted(params.items())))
    return "".join(out) or "<p>No provenance was recorded for this job.</p>"
