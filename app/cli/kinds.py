"""A ``cartl`` command for every registered job kind without one of its own
(:mod:`cartl_core.kinds`): its inputs from what the kind declares, its options from its
parameters (:func:`cartl_core.options.add_options`), its result printed as JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from app.cli.options import add_run_options
from app.cli.progress import Bars
from cartl_core.kinds import JobKind, get_kind, job_kinds
from cartl_core.options import add_options

__all__ = ["add_kind_commands", "job_values", "state_path"]


def add_kind_commands(sub: Any, skip: Collection[str]) -> None:
    """A command for each registered kind but those in ``skip`` (which have their own)."""
    for kind in job_kinds():
        if kind.name not in skip:
            _kind_command(sub, kind)


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
    add_run_options(p, plot=False)  # what to draw is the kind's own
    p.set_defaults(func=_cmd_kind, kind_name=kind.name)


def _cmd_kind(args: argparse.Namespace) -> int:
    from cartl_core.jobs import run_job

    kind = get_kind(args.kind_name)
    out: Path | None = getattr(args, "out", None)
    bars = Bars(args.quiet)
    try:
        outcome = run_job(
            kind.name,
            job_values(kind.name, args),
            dataset_path=args.data,
            checkpoint_path=getattr(args, "checkpoint", None),
            out_path=out,
            state_path=None if out is None else state_path(out),
            device=args.device,
            on_progress=bars.training if kind.progress == "epochs" else None,
            on_audit_progress=bars.audit,
        )
    finally:
        bars.close()
    print(json.dumps({"metrics": outcome.metrics, "audit": outcome.audit}, indent=2))
    if out is not None:
        state_path(out).unlink(missing_ok=True)
        print(f"saved {out}", file=sys.stderr)
    return 0


def job_values(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """The job parameters from the options, by name: :func:`cartl_core.jobs.run_job` checks them
    as the service checks them, before anything runs."""
    from cartl_core.jobs import params_class

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(params_class(kind))}


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")
