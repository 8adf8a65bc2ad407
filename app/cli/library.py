"""The ``cartl`` command line: pretrain, transfer, audit, compare, demo, inspect, models, and a
command for every other registered job kind (:mod:`cartl_core.kinds`).

Errors print one line to stderr and exit non-zero; set ``CARTL_DEBUG=1`` for tracebacks. The
options that are job parameters are generated from the dataclasses in :mod:`cartl_core.jobs`
(:mod:`cartl_core.options`), so they have the service's names, defaults, help and parsing; this
module adds only the paths, output and display options around them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cartl_core import __version__
from cartl_core.config import ScheduleConfig
from cartl_core.errors import CartlError
from cartl_core.jobs import AuditParams, CompareParams, PretrainParams, TransferParams
from cartl_core.kinds import JobKind, get_kind, job_kinds
from cartl_core.options import add_options, arg_type, format_duration, fraction_value
from cartl_core.reproduction import DigitsSettings

__all__ = ["add_commands", "add_version", "build_parser", "main", "run"]


def fraction(text: str) -> float:
    """A positive number, written as a decimal or a fraction such as 8/255."""
    try:
        value = fraction_value(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _common(p: argparse.ArgumentParser, *, seed: bool = False) -> None:
    """The options every command has that are not job parameters (``seed`` for the demo)."""
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="also write a PNG plot of the results here (needs matplotlib)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto (CUDA when available) [default: auto]",
    )
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed [default: 0]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _report_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write a self-contained HTML report here (charts, checks, provenance)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cartl",
        description="Adversarially robust transfer learning (CARTL, ICML 2021): pre-train a "
        "robust source, fine-tune it without losing robustness, audit the result.",
    )
    add_version(parser)
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: the package's version."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def _pretrain_schedule_defaults() -> dict[str, str]:
    """A pre-training's own schedule defaults for ``--help``: the shared schedule options' texts
    also name LwF's, which only a transfer (or compare) can use."""
    schedule = ScheduleConfig()
    return {name: str(getattr(schedule, name)) for name in ("epochs", "lr", "weight_decay")}


def add_commands(sub: Any) -> None:
    """Add the library's commands to ``sub`` (the service's ``cartl`` adds its own beside them)."""
    p = sub.add_parser(
        "pretrain",
        help="FDM (or plain adversarial) pre-training of a source model",
        description="Adversarial training with PGD-Linf plus the feature-distance "
        "term (FDM) at the input of the first block to be fine-tuned.",
    )
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="source dataset (npz, ImageFolder zip/tar.gz, CIFAR python tarball, SVHN .mat)",
    )
    p.add_argument("--out", required=True, type=Path, help="output checkpoint (.safetensors)")
    add_options(p, PretrainParams, default_texts=_pretrain_schedule_defaults())
    _common(p)
    _report_arg(p)
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser(
        "transfer",
        help="fine-tune a source model on a target dataset",
        description="Fine-tune the last k blocks of a source model on the target "
        "data: standard, neft, cartl (NEFT + frozen BN) or lwf.",
    )
    p.add_argument("--source", required=True, type=Path, help="source checkpoint")
    p.add_argument("--data", required=True, type=Path, help="target dataset")
    p.add_argument("--out", required=True, type=Path, help="output checkpoint (.safetensors)")
    add_options(p, TransferParams)
    _common(p)
    _report_arg(p)
    p.set_defaults(func=_cmd_transfer)

    p = sub.add_parser(
        "audit",
        help="clean and robust accuracy of a checkpoint (AutoAttack-grade ensemble)",
        description="Robust accuracy against an attack ensemble (by default APGD-CE, APGD-T "
        "and Square, per-sample worst case, early exit), the paper's PGD and FGSM as named "
        "attacks, robustness against eps, per-class accuracy, and gradient-masking checks "
        "that warn when the numbers cannot be trusted.",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint to audit")
    p.add_argument("--data", required=True, type=Path, help="dataset; its test split is used")
    add_options(p, AuditParams)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    _common(p)
    _report_arg(p)
    p.set_defaults(func=_cmd_audit)

    _compare_command(sub)
    for kind in job_kinds():
        if kind.name not in _OWN_COMMANDS:
            _kind_command(sub, kind)

    p = sub.add_parser(
        "demo",
        help="reproduce the paper's claim on scikit-learn's digits (a few minutes on a CPU)",
        description="Adversarially train on digits 0-4 (plain AT and FDM), fine-tune the AT "
        "source on digits 5-9 the ordinary way (the baseline), run compare from the FDM source "
        "(candidates chosen on held-out training images), and audit the baseline and the chosen "
        "model on the test split with the attack ensemble (and the paper's PGD-20 beside it).",
    )
    demo = DigitsSettings()
    p.add_argument(
        "--eps",
        type=fraction,
        default=demo.eps,
        help=f"Linf radius for training and audit [default: {demo.eps}]",
    )
    p.add_argument(
        "--k",
        type=int,
        default=demo.k,
        help=f"FDM's k, the baseline's k and the centre of compare's k list [default: {demo.k}]",
    )
    p.add_argument(
        "--fdm-lambda",
        type=float,
        default=demo.fdm_lambda,
        help=f"FDM weight [default: {demo.fdm_lambda}]",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=demo.epochs,
        help=f"epochs for each run [default: {demo.epochs}]",
    )
    p.add_argument(
        "--attacks",
        default=demo.attacks,
        metavar="ENSEMBLE",
        help=f"the audit's ensemble: standard, fast, paper or a list [default: {demo.attacks}]",
    )
    p.add_argument(
        "--methods",
        type=arg_type(CompareParams, "methods"),
        default=demo.compare_methods,
        metavar="LIST",
        help="compare's methods, comma-separated (neft and lwf add minutes) "
        f"[default: {','.join(demo.compare_methods)}]",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: the rows, and compare's candidates and choice",
    )
    p.add_argument(
        "--export-data",
        type=Path,
        default=None,
        metavar="DIR",
        help="only write the two tasks as DIR/source.npz and DIR/target.npz",
    )
    _common(p, seed=True)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "inspect",
        help="print a checkpoint's description",
        description="Print the CARTL header of a .safetensors checkpoint as JSON: its "
        "architecture, classes, input size and normalisation, how it was trained (kind, method, "
        "k, threat model, schedule) and its audited metrics.",
    )
    p.add_argument("checkpoint", type=Path, help="a .safetensors checkpoint written by cartl")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "models",
        help="list architectures and their block counts",
        description="List the architectures --arch accepts: an example of each family with its "
        "block count T (k, the blocks fine-tuned, is at most T), then each family's name "
        "pattern and description.",
    )
    p.set_defaults(func=_cmd_models)


#: The built-in kinds, whose commands above show progress and results their own way; any other
#: registered kind gets :func:`_kind_command`'s.
_OWN_COMMANDS = frozenset({"pretrain", "transfer", "audit", "compare"})

_CHECKPOINT_HELP = {
    "model": "checkpoint to examine",
    "source": "source checkpoint",
    "init": "initial weights [default: none, a new model]",
}


def _kind_command(sub: Any, kind: JobKind) -> None:
    """A command for a registered kind (:mod:`cartl_core.kinds`): its inputs from what it
    declares, its options from its parameters, its result printed as JSON."""
    p = sub.add_parser(
        kind.name,
        help=kind.summary,
        description=f"{kind.summary} (job kind {kind.name!r}, from {kind.params.__module__}). "
        "Prints the job's metrics (and audit, if it has one) as one JSON object.",
    )
    if kind.checkpoint is not None:
        p.add_argument(
            "--checkpoint",
            required=kind.needs_checkpoint,
            type=Path,
            help=_CHECKPOINT_HELP[kind.checkpoint],
        )
    p.add_argument("--data", required=True, type=Path, help="dataset")
    if kind.makes_weights:
        p.add_argument("--out", required=True, type=Path, help="output checkpoint (.safetensors)")
    add_options(p, kind.params)
    p.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto (CUDA when available) [default: auto]",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_kind, kind_name=kind.name)


def _cmd_kind(args: argparse.Namespace) -> int:
    from cartl_core.jobs import run_job

    kind = get_kind(args.kind_name)
    out: Path | None = getattr(args, "out", None)
    bars = _Bars(args.quiet)
    try:
        outcome = run_job(
            kind.name,
            _params(kind.name, args),
            dataset_path=args.data,
            checkpoint_path=getattr(args, "checkpoint", None),
            out_path=out,
            state_path=None if out is None else _state_path(out),
            device=args.device,
            on_progress=bars.training if kind.progress == "epochs" else None,
            on_audit_progress=bars.audit,
        )
    finally:
        bars.close()
    print(json.dumps({"metrics": outcome.metrics, "audit": outcome.audit}, indent=2))
    if out is not None:
        _state_path(out).unlink(missing_ok=True)
        print(f"saved {out}", file=sys.stderr)
    return 0


def _params(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """The job parameters from the options, by name: :func:`cartl_core.jobs.run_job` checks them
    as the service checks them, before anything runs."""
    from cartl_core.jobs import params_class

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(params_class(kind))}


#: A bar's resolution: the audit reports fractions, not counts.
_BAR_UNITS = 1000


class _Bars:
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


def _epoch_line(record: Any) -> str:
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in record.metrics.items())
    return f"epoch {record.epoch:>3}  lr {record.lr:.4g}  {record.seconds:6.1f}s  {metrics}"


def _warning_line(warning: dict[str, Any]) -> str:
    """One line for a job warning ``{name, meaning, detail[, source]}``; detail may be a dict."""
    detail = warning.get("detail")
    if isinstance(detail, dict):
        detail = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in detail.items()
        )
    source = f" ({warning['source']})" if warning.get("source") else ""
    text = f"WARNING {warning['name']}{source}: {warning.get('meaning', '')}"
    return f"{text} [{detail}]" if detail else text


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")


def _cmd_pretrain(args: argparse.Namespace) -> int:
    return _train("pretrain", _params("pretrain", args), None, args)


def _cmd_transfer(args: argparse.Namespace) -> int:
    return _train("transfer", _params("transfer", args), args.source, args)


def _train(
    kind: str,
    params: dict[str, Any],
    checkpoint: Path | None,
    args: argparse.Namespace,
) -> int:
    """The same job the service's worker runs, with progress bars and a table instead."""
    from cartl_core.audit import AuditReport
    from cartl_core.jobs import run_job
    from cartl_core.training.loop import EpochRecord

    bars = _Bars(args.quiet)
    printed: list[int] = []

    def show_epoch(record: Any, _model: Any) -> None:
        bars.line(_epoch_line(record))
        printed.append(record.epoch)

    state = _state_path(args.out)
    outcome = run_job(
        kind,
        params,
        dataset_path=args.data,
        checkpoint_path=checkpoint,
        out_path=args.out,
        state_path=state,
        device=args.device,
        on_progress=bars.training,
        on_audit_progress=bars.audit,
        on_epoch=show_epoch,
    )
    bars.close()
    history = [EpochRecord.from_dict(h) for h in outcome.history]
    if len(printed) < len(history):
        # A resumed run: the epochs finished before the interruption come from its state.
        for record in history[: len(history) - len(printed)]:
            print(_epoch_line(record), file=sys.stderr)
    report = AuditReport.from_dict(outcome.audit) if outcome.audit is not None else None
    if report is not None:
        print(report.table())
    for warning in outcome.metrics.get("warnings", []):
        print(_warning_line(warning), file=sys.stderr)
    print(f"saved {args.out}", file=sys.stderr)
    state.unlink(missing_ok=True)
    if args.plot is not None:
        from app.report import plot_training

        plot_training(outcome.history, args.plot, title=kind, audit=outcome.audit)
        print(f"plot {args.plot}", file=sys.stderr)
    if args.report is not None:
        facts = {"dataset": args.data, "source": checkpoint, "weights": args.out}
        _write_report(args.report, outcome, f"cartl {kind}: {args.out.name}", facts)
    return 0


def _write_report(path: Path, outcome: Any, title: str, facts: dict[str, Any]) -> None:
    from app.report import render_job_report

    page = render_job_report(
        audit=outcome.audit,
        history=outcome.history,
        metrics=outcome.metrics,
        title=title,
        facts={k: str(v) for k, v in facts.items() if v is not None},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    print(f"report {path}", file=sys.stderr)


def _cmd_audit(args: argparse.Namespace) -> int:
    from cartl_core.audit import AuditReport
    from cartl_core.jobs import run_job

    bars = _Bars(args.quiet or args.json)
    outcome = run_job(
        "audit",
        _params("audit", args),
        dataset_path=args.data,
        checkpoint_path=args.checkpoint,
        device=args.device,
        on_audit_progress=bars.audit,
    )
    bars.close()
    assert outcome.audit is not None
    report = AuditReport.from_dict(outcome.audit)
    if args.json:
        print(json.dumps(outcome.audit, indent=2))
    else:
        print(report.table())
        for check in report.checks:
            verdict = {True: "ok", False: "WARNING", None: "skipped"}[check.passed]
            print(f"[{verdict}] {check.name}: {check.detail}")
    for warning in report.warnings:
        print(_warning_line(warning), file=sys.stderr)
    if args.plot is not None:
        from app.report import plot_audit

        plot_audit(outcome.audit, args.plot)
    if args.report is not None:
        facts = {"checkpoint": args.checkpoint, "dataset": args.data}
        _write_report(args.report, outcome, f"cartl audit: {args.checkpoint.name}", facts)
    return 0


def _compare_command(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="train transfer candidates and choose the most robust on validation data",
        description="Fine-tune the source on the target with every candidate setting (methods x "
        "k x beta x BN preset, within --max-candidates), audit each with the fast ensemble on a "
        "validation split held out from the target's training data, and choose the most robust "
        "one whose validation clean accuracy is within --max-clean-drop of the best. Every "
        "candidate is also audited on the test split (for the table only; never for choosing). "
        "Writes DIR/NAME.safetensors per candidate and DIR/chosen.safetensors; a rerun with "
        "the same options reuses the candidates already in DIR.",
    )
    p.add_argument("--source", required=True, type=Path, help="source checkpoint")
    p.add_argument("--data", required=True, type=Path, help="target dataset")
    p.add_argument(
        "--out-dir",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder for every candidate's weights and chosen.safetensors",
    )
    add_options(p, CompareParams)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    _common(p)
    _report_arg(p)
    p.set_defaults(func=_cmd_compare)


class _CompareBar:
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


def _cmd_compare(args: argparse.Namespace) -> int:
    from cartl_core.audit import AuditReport
    from cartl_core.compare import candidate_table
    from cartl_core.jobs import run_job

    params = _params("compare", args)
    bar = _CompareBar(args.quiet or args.json)
    audit_bars = _Bars(args.quiet or args.json)
    try:
        outcome = run_job(
            "compare",
            params,
            dataset_path=args.data,
            checkpoint_path=args.source,
            out_path=args.out_dir / "chosen.safetensors",
            device=args.device,
            on_progress=bar,
            on_audit_progress=audit_bars.audit,
            extra_dir=args.out_dir,
        )
    finally:
        bar.close()
        audit_bars.close()
    m = outcome.metrics
    if args.json:
        keys = ("chosen", "candidates", "estimate", "selection", "dropped")
        print(json.dumps({**{k: m[k] for k in keys}, "audit": outcome.audit}, indent=2))
    else:
        print(candidate_table(m["candidates"], m["chosen"]["name"]))
        print(f"chosen: {m['chosen']['reason']}")
        if outcome.audit is not None:
            print(f"\nfull audit of {m['chosen']['name']} on the test split:")
            print(AuditReport.from_dict(outcome.audit).table())
        else:
            print(
                f"{m['chosen']['name']} on the test split: clean {m['clean_accuracy']:.4f}, "
                f"robust {m['robust_accuracy']:.4f}"
            )
            for note in m.get("headline_notes", []):
                print(f"  {note}")
    for warning in m.get("warnings", []):
        print(_warning_line(warning), file=sys.stderr)
    print(
        f"saved {args.out_dir / 'chosen.safetensors'} and the candidates beside it", file=sys.stderr
    )
    if args.plot is not None:
        from app.report import plot_comparison

        rows = [(c["name"].replace("-", "\n", 1), c["test_clean"], c["test_robust"])
                for c in m["candidates"]]  # fmt: skip
        sel = m["selection"]
        threat = f"{sel['ensemble']}, {sel['norm']} eps {sel['eps']:g}"
        plot_comparison(rows, args.plot, robust_label=f"robust ({threat})")
    if args.report is not None:
        facts = {"dataset": args.data, "source": args.source, "weights": args.out_dir}
        _write_report(args.report, outcome, f"cartl compare: {args.out_dir}", facts)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from cartl_core.reproduction import ReproductionRow, digits_reproduction

    settings = DigitsSettings(
        eps=args.eps,
        k=args.k,
        fdm_lambda=args.fdm_lambda,
        epochs=args.epochs,
        seed=args.seed,
        attacks=args.attacks,
        compare_methods=args.methods,
    )
    if args.export_data is not None:
        from cartl_core.data.digits import digits_task, save_npz

        for name, classes in (
            ("source", settings.source_classes),
            ("target", settings.target_classes),
        ):
            path = save_npz(
                digits_task(classes, seed=settings.seed), args.export_data / f"{name}.npz"
            )
            print(f"wrote {path} (digits {', '.join(map(str, classes))})", file=sys.stderr)
        return 0

    quiet = args.quiet or args.json

    def show(row: ReproductionRow) -> None:
        if not quiet:
            print(
                f"  {row.source} {row.label if row.transfer else '(source)'}: clean "
                f"{row.clean_accuracy:.3f} robust {row.robust_accuracy:.3f}",
                file=sys.stderr,
            )

    bar = _CompareBar(quiet)
    bars = _Bars(quiet)

    def stage(text: str) -> None:
        if not quiet:
            bars.close()
            print(f"demo {text}", file=sys.stderr, flush=True)

    device = "cpu" if args.device == "auto" else args.device
    if not quiet:
        print(
            "demo: two adversarial pre-trainings, a standard fine-tuning and a compare on "
            f"scikit-learn's digits, then 4 audits ({settings.attacks} ensemble); a few minutes "
            "on a CPU",
            file=sys.stderr,
            flush=True,
        )
    try:
        result = digits_reproduction(
            settings, device=device, on_row=show, on_compare=bar, on_stage=stage,
            on_train=bars.training, on_audit=bars.audit,
        )  # fmt: skip
    finally:
        bar.close()
        bars.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table())
    if args.plot is not None:
        from app.report import plot_reproduction

        plot_reproduction(result.rows, args.plot, eps=settings.eps)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from cartl_core import read_description

    description = read_description(args.checkpoint)
    if description is None:
        raise CartlError(f"{args.checkpoint} has no CARTL description (plain weights)")
    print(json.dumps(description, indent=2))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import torch

    from cartl_core.models import create_model, model_families

    families = model_families()
    for family in families:
        for arch in family.examples:
            # On the meta device: the blocks without their weights, neither allocated nor
            # initialised (a WRN-34-10 alone has 46M of them); counting needs only the modules.
            with torch.device("meta"):
                model = create_model(arch, 10, in_channels=3, input_size=32)
            print(f"{arch:<24} T = {model.num_blocks}")
    print()
    width = max((len(family.name) for family in families), default=0) + 2
    for family in families:
        print(f"{family.name:<{width}}{family.summary}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run a parsed command: errors become one line on stderr and a non-zero exit."""
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
        sys.stdout.flush()  # here, not at exit: a reader gone shows up as BrokenPipeError below
        return code
    except BrokenPipeError:
        # The reader closed the pipe (``cartl inspect X | head``): stop quietly as Unix tools
        # do. Python flushes stdout again at exit; pointed at devnull, that cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except CartlError as exc:
        print(f"cartl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "cartl: interrupted; run the same command again to resume from the last finished epoch",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:
        if os.environ.get("CARTL_DEBUG"):
            raise
        print(
            f"cartl: internal error: {type(exc).__name__}: {exc} "
            "(set CARTL_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
