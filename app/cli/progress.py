"""What the ``cartl`` commands show while a job runs: tqdm bars fed by cartl_core's progress
callbacks (training, audit, compare), and the lines printed above them."""

from __future__ import annotations

import sys
from typing import Any

from cartl_core.options import format_duration
from cartl_core.stats import format_interval

__all__ = ["Bars", "CompareBar", "candidate_line", "epoch_line", "warning_line"]


#: A bar's resolution: the audit reports fractions, not counts.
_BAR_UNITS = 1000


class Bars:
    """tqdm progress bars fed by cartl_core's progress callbacks."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.key: Any = None

    def training(self, event: Any) -> None:
        if self.quiet:
            return
        key = (event.stage, event.epoch)
        if key != self.key:
            self.close()
            from tqdm import tqdm

            self.key = key
            # The bar appears with the epoch's first finished batch, so tqdm's own rate and ETA
            # would divide by next to no time; the run's ETA comes from its measured rate.
            self.bar = tqdm(
                total=event.batches,
                leave=False,
                file=sys.stderr,
                desc=f"{event.stage} epoch {event.epoch + 1}/{event.epochs}",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} batches{postfix}",
            )
        self.bar.n = event.batch
        metrics = {k: f"{v:.4f}" for k, v in event.metrics.items()}
        done = event.fraction
        if done > 0:
            metrics["ends in"] = f"~{format_duration(event.elapsed_s * (1 - done) / done)}"
        self.bar.set_postfix(metrics, refresh=True)

    def line(self, text: str) -> None:
        """A line above the bars, at once (an epoch's numbers as it ends, not after the audit)."""
        if self.bar is not None:
            self.bar.clear()
        print(text, file=sys.stderr, flush=True)
        if self.bar is not None:
            self.bar.refresh()

    def audit(self, event: Any) -> None:
        """An audit's :class:`~cartl_core.audit.AuditEvent`: its estimate as a line, then a bar
        per attack that moves within each batch and says when the whole audit should end."""
        if event.estimate is not None:
            if not self.quiet:
                self.line(f"audit estimate: {event.estimate.text()}")
            return
        if self.quiet:
            return
        key = ("audit", event.index, event.attack)
        if key != self.key:
            self.close()
            from tqdm import tqdm

            self.key = key
            # tqdm's own rate and ETA would time this attack's first batch from the bar's
            # creation; the audit's ETA comes from its measured rates instead.
            self.bar = tqdm(
                total=_BAR_UNITS,
                leave=False,
                file=sys.stderr,
                desc=f"audit {event.index}/{event.attacks} {event.attack}",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
            )
        self.bar.n = round(_BAR_UNITS * event.fraction)
        eta = "" if event.eta_s is None else f"; audit ends in ~{format_duration(event.eta_s)}"
        self.bar.set_postfix_str(f"{event.done}/{event.total} images{eta}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.key = None


def epoch_line(record: Any) -> str:
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in record.metrics.items())
    return f"epoch {record.epoch:>3}  lr {record.lr:.4g}  {record.seconds:6.1f}s  {metrics}"


def warning_line(warning: dict[str, Any]) -> str:
    """One line for a job warning ``{name, meaning, detail[, source]}``; detail may be a dict."""
    detail = warning.get("detail")
    if isinstance(detail, dict):
        detail = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in detail.items()
        )
    source = f" ({warning['source']})" if warning.get("source") else ""
    text = f"WARNING {warning['name']}{source}: {warning.get('meaning', '')}"
    return f"{text} [{detail}]" if detail else text


def candidate_line(row: dict[str, Any]) -> str:
    """A finished candidate's validation numbers, each with its 95% Wilson interval."""

    def acc(key: str) -> str:
        interval = format_interval(row.get(f"{key}_interval"))
        return f"{row[key]:.3f}" + (f" ({interval})" if interval else "")

    n = row.get("val_samples")
    return f"{row['name']}: validation clean {acc('val_clean')}, robust {acc('val_robust')}" + (
        f" (95% Wilson intervals, n = {n})" if n else ""
    )


class CompareBar:
    """One tqdm bar over the candidates, its postfix saying what the current one is doing."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        if event.stage == "estimate":
            print(f"estimate: {event.estimate.text()}", file=sys.stderr)
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=event.candidates, unit="candidate", file=sys.stderr, desc="compare"
            )
        self.bar.n = event.candidate + (event.stage == "candidate-done")
        if event.stage == "candidate-done" and event.result is not None:
            self.bar.clear()
            print(candidate_line(event.result.to_dict()), file=sys.stderr, flush=True)
        doing = event.stage
        if event.training is not None:
            doing = f"epoch {event.training.epoch + 1}/{event.training.epochs}"
        elif event.attack is not None:
            doing = f"{event.stage} {event.attack}"
        self.bar.set_postfix_str(f"{event.name}: {doing}", refresh=True)
        if event.stage == "candidate-done" and event.candidate + 1 == event.candidates:
            self.close()  # the chosen model's audit shows its own bars

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
