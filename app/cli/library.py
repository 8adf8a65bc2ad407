"""The ``cartl`` command line: pretrain, transfer, audit, compare, demo, inspect, models, and a
command for every other registered job kind (:mod:`cartl_core.kinds`).

Errors print one line to stderr and exit non-zero; set ``CARTL_DEBUG=1`` for tracebacks. The
options that are job parameters are generated from each kind's parameters dataclass
(:mod:`cartl_core.kinds`, through :mod:`cartl_core.options`), so they have the service's names,
defaults, help and parsing; this module adds only the paths, output and display options around
them. Progress bars: :mod:`.progress`; the demo: :mod:`.demo`; other kinds' commands:
:mod:`.kinds`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.cli.demo import add_demo_command
from app.cli.kinds import add_kind_commands, job_values, state_path
from app.cli.options import add_report_option, add_run_options, fraction
from app.cli.progress import Bars, CompareBar, epoch_line, warning_line
from cartl_core import __version__
from cartl_core.config import ScheduleConfig
from cartl_core.errors import ArchitectureError, CartlError
from cartl_core.jobs import AuditParams, CompareParams, PretrainParams, TransferParams
from cartl_core.options import add_options
from cartl_core.stats import format_interval

__all__ = ["add_commands", "add_version", "build_parser", "fraction", "main", "run"]


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
    add_run_options(p)
    add_report_option(p)
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
    add_run_options(p)
    add_report_option(p)
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
    add_run_options(p)
    add_report_option(p)
    p.set_defaults(func=_cmd_audit)

    _compare_command(sub)
    # Any other registered kind: a command generated from what it declares.
    add_kind_commands(sub, skip=("pretrain", "transfer", "audit", "compare"))

    add_demo_command(sub)

    p = sub.add_parser(
        "inspect",
        help="print a checkpoint's description, or what a published model file was recognised as",
        description="Print the CARTL header of a .safetensors checkpoint as JSON: its "
        "architecture, classes, input size and normalisation, how it was trained (kind, method, "
        "k, threat model, schedule) and its audited metrics. For plain weights (a RobustBench, "
        "MadryLab robustness, torchvision or timm file), load them as a transfer would and print "
        "the description made for them: under origin, the layout recognised from the keys, "
        "the input normalisation found and what was left out.",
    )
    p.add_argument("checkpoint", type=Path, help="a checkpoint: cartl's, or plain weights")
    p.add_argument(
        "--arch",
        help="architecture of plain weights whose layout is not recognised, or to pick one of "
        "several that share a layout (`cartl models` lists them)",
    )
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "models",
        help="list architectures and their block counts",
        description="List the architectures --arch accepts: an example of each family with its "
        "block count T (k, the blocks fine-tuned, is at most T), then each family's name "
        "pattern and description. Published weights (RobustBench, MadryLab robustness, "
        "torchvision ResNets) need no --arch: their layout is recognised from the keys "
        "(cartl inspect FILE shows it).",
    )
    p.set_defaults(func=_cmd_models)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    return _train("pretrain", job_values("pretrain", args), None, args)


def _cmd_transfer(args: argparse.Namespace) -> int:
    return _train("transfer", job_values("transfer", args), args.source, args)


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

    bars = Bars(args.quiet)
    printed: list[int] = []

    def show_epoch(record: Any, _model: Any) -> None:
        bars.line(epoch_line(record))
        printed.append(record.epoch)

    state = state_path(args.out)
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
            print(epoch_line(record), file=sys.stderr)
    report = AuditReport.from_dict(outcome.audit) if outcome.audit is not None else None
    if report is not None:
        print(report.table())
    for warning in outcome.metrics.get("warnings", []):
        print(warning_line(warning), file=sys.stderr)
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

    bars = Bars(args.quiet or args.json)
    outcome = run_job(
        "audit",
        job_values("audit", args),
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
        print(warning_line(warning), file=sys.stderr)
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
        help="train transfer candidates and choose one on validation data, beyond noise",
        description="Fine-tune the source on the target with every candidate setting (methods x "
        "k x beta x BN preset, within --max-candidates), audit each with the fast ensemble on a "
        "validation split held out from the target's training data (--val-fraction, at least "
        "--min-val-samples), and choose on those same images: the candidate with the least "
        "training work is kept unless another is more robust beyond noise (paired exact McNemar "
        "test, one-sided at --confidence, Holm-corrected), leaving out candidates whose "
        "validation clean accuracy is below the best by more than --max-clean-drop beyond noise. "
        "Every accuracy comes with its 95% Wilson interval. Every candidate is also audited on "
        "the test split (for the table only; never for choosing). "
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
    add_run_options(p)
    add_report_option(p)
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from cartl_core.audit import AuditReport
    from cartl_core.compare import candidate_table
    from cartl_core.jobs import run_job

    params = job_values("compare", args)
    bar = CompareBar(args.quiet or args.json)
    audit_bars = Bars(args.quiet or args.json)
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
        print(_cost_note(m))
        print(f"chosen: {m['chosen']['reason']}")
        print(_rule_note(m["selection"]))
        if outcome.audit is not None:
            print(f"\nfull audit of {m['chosen']['name']} on the test split:")
            print(AuditReport.from_dict(outcome.audit).table())
        else:
            print(
                f"{m['chosen']['name']} on the test split: clean {m['clean_accuracy']:.4f} "
                f"({format_interval(m.get('clean_interval'))}), robust "
                f"{m['robust_accuracy']:.4f} ({format_interval(m.get('robust_interval'))}); "
                f"{m.get('interval', '')}"
            )
            for note in m.get("headline_notes", []):
                print(f"  {note}")
    for warning in m.get("warnings", []):
        print(warning_line(warning), file=sys.stderr)
    print(
        f"saved {args.out_dir / 'chosen.safetensors'} and the candidates beside it", file=sys.stderr
    )
    if args.plot is not None:
        from app.report import plot_candidates

        plot_candidates(m, args.plot)  # accuracies, then cost against robustness
    if args.report is not None:
        facts = {"dataset": args.data, "source": args.source, "weights": args.out_dir}
        _write_report(args.report, outcome, f"cartl compare: {args.out_dir}", facts)
    return 0


def _rule_note(selection: dict[str, Any]) -> str:
    """The rule the choice followed, its confidence and the validation size (a selection
    written before the paired rule has only its rule)."""
    n = selection.get("val_samples")
    if selection.get("confidence") is None:
        return f"rule: {selection.get('rule', '')} (validation: {n} images)"
    return (
        f"rule ({selection['confidence']:.0%} one-sided, {n} validation images, "
        f"{selection.get('held_out_fraction', 0):.0%} of the training split; one accuracy's "
        f"95% interval spans at most +-{100 * selection.get('val_half_width', 0):.1f} points): "
        f"{selection['rule']}"
    )


def _cost_note(metrics: dict[str, Any]) -> str:
    """What the table's cost column counts, where it was measured, and what a budget dropped."""
    devices = sorted({str(c["device"]) for c in metrics["candidates"] if c.get("device")})
    where = f" on {', '.join(devices)}" if devices else ""
    note = f"cost s: device-seconds of each candidate's training and validation audit{where}"
    for d in (metrics.get("estimate") or {}).get("over_budget") or []:
        note += f"\nnot trained, over max_cost: {d['name']} ({d['reason']})"
    return note


def _cmd_inspect(args: argparse.Namespace) -> int:
    from cartl_core import load_model, read_description
    from cartl_core.checkpoints import PLAIN_FORMAT, describe_model

    description = read_description(args.checkpoint)
    if description is None:
        model = load_model(args.checkpoint, arch=args.arch)
        description = describe_model(model, format=PLAIN_FORMAT)
        print(_origin_line(description.get("origin") or {}), file=sys.stderr)
    print(json.dumps(description, indent=2))
    return 0


def _origin_line(origin: dict[str, Any]) -> str:
    """What plain weights were recognised as, in one line."""
    if origin.get("layout"):
        what = f"recognised {origin['layout']}: {origin['recognised_as']}"
    else:
        what = f"loaded as {origin.get('arch')} (layout not recognised; the architecture given)"
    norm = origin.get("normalization") or {}
    return f"{what}; input normalisation from {norm.get('source')}"


def _cmd_models(args: argparse.Namespace) -> int:
    import torch

    from cartl_core.models import create_model, model_families

    families = model_families()
    name_width = max((len(a) for f in families for a in f.examples), default=0) + 2
    for family in families:
        for arch in family.examples:
            # On the meta device: the blocks without their weights, neither allocated nor
            # initialised (a WRN-34-10 alone has 46M of them); counting needs only the modules.
            try:
                with torch.device("meta"):
                    model = create_model(arch, 10, in_channels=3, input_size=32)
            except ArchitectureError as exc:  # an optional library (timm) that is not installed
                print(f"{arch:<{name_width}}({exc})")
                continue
            print(f"{arch:<{name_width}}T = {model.num_blocks}")
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
