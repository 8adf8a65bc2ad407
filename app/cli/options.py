"""The ``cartl`` library commands' options that are not job parameters, and their parsing."""

from __future__ import annotations

import argparse
from pathlib import Path

from cartl_core.data import RESIZE_METHODS
from cartl_core.data._types import MAX_SIDE, MIN_SIDE
from cartl_core.options import fraction_value

__all__ = ["add_report_option", "add_run_options", "add_upload_resize_options", "fraction", "side"]


def fraction(text: str) -> float:
    """A positive number, written as a decimal or a fraction such as 8/255."""
    try:
        value = fraction_value(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def side(text: str) -> int:
    """An image side in pixels, within what a resize may give."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise argparse.ArgumentTypeError(f"must be {MIN_SIDE} to {MAX_SIDE}; got {value}")
    return value


def add_upload_resize_options(p: argparse.ArgumentParser) -> None:
    """``--dataset-resize`` and ``--dataset-resize-method``: the resize a dataset upload asks
    for (the upload's ``resize`` and ``resize_method`` fields), which every job on it applies."""
    p.add_argument(
        "--dataset-resize",
        type=side,
        default=None,
        metavar="SIDE",
        help="when uploading the dataset: resize every image to SIDE x SIDE pixels (images of "
        "several sizes need it); every job on it reads it so, unless the job's own -p resize "
        "replaces it",
    )
    p.add_argument(
        "--dataset-resize-method",
        choices=RESIZE_METHODS,
        default=None,
        help="how --dataset-resize resizes [default: bilinear]",
    )


def add_run_options(p: argparse.ArgumentParser, *, plot: bool = True, seed: bool = False) -> None:
    """The options of a command that runs a job and are not job parameters: ``--plot`` (where
    the command can draw its results), ``--device``, ``--seed`` (the demo's) and ``--quiet``."""
    if plot:
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


def add_report_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write a self-contained HTML report here (charts, checks, provenance)",
    )
