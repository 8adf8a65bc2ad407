"""``cartl demo``: the paper's claim reproduced on scikit-learn's digits, in a few minutes on a
CPU (:mod:`cartl_core.reproduction`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.cli.options import add_run_options, fraction
from app.cli.progress import Bars, CompareBar
from cartl_core.jobs import CompareParams
from cartl_core.options import arg_type
from cartl_core.reproduction import DigitsSettings

__all__ = ["add_demo_command"]


def add_demo_command(sub: Any) -> None:
    """``cartl demo``, with its own options (the digits task's settings, not a kind's)."""
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
    add_run_options(p, seed=True)
    p.set_defaults(func=_cmd_demo)


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

    bar = CompareBar(quiet)
    bars = Bars(quiet)

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
