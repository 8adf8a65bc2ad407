"""Validate an uploaded checkpoint or dataset by loading it, in a child process.

The API runs ``python -m app.services.probe checkpoint PATH [--arch A --num-classes N]`` or
``... dataset PATH --max-extract-bytes N``; the child loads the file with cartl_core's safe
loaders and prints one JSON object: the summary, or ``{"error": message, "type": name}`` where
``type`` is the :class:`cartl_core.CartlError` subclass. Loading in a child keeps the API's memory
flat whatever the file holds, keeps the event loop free, and bounds the time it may take; a child
that crashes or runs past the limit takes nothing of the API's with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from app.errors import FieldError, UnprocessableError

__all__ = ["ProbeError", "main", "probe_checkpoint", "probe_dataset"]

log = logging.getLogger(__name__)


class ProbeError(UnprocessableError):
    """The upload did not load; ``kind`` is the cartl_core error class name."""

    def __init__(self, message: str, kind: str, field: str = "file") -> None:
        super().__init__([FieldError(field, message)], detail=message)
        self.message = message
        self.kind = kind
        self.extra["error_type"] = kind


async def probe_checkpoint(
    path: Path,
    *,
    timeout_s: float,
    arch: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
) -> dict[str, Any]:
    args = ["checkpoint", str(path)]
    for flag, value in (
        ("--arch", arch),
        ("--num-classes", num_classes),
        ("--in-channels", in_channels),
        ("--input-size", input_size),
    ):
        if value is not None:
            args += [flag, str(value)]
    return await _run(args, timeout_s)


async def probe_dataset(
    path: Path,
    *,
    timeout_s: float,
    max_extract_bytes: int,
    resize: int | None = None,
    resize_method: str | None = None,
) -> dict[str, Any]:
    """The dataset's summary, loaded as jobs will load it: resized to ``resize`` (with
    ``resize_method``) where the upload asked; ``resize`` in it says how (None: not resized)."""
    args = ["dataset", str(path), "--max-extract-bytes", str(max_extract_bytes)]
    if resize is not None:
        args += ["--resize", str(resize), "--resize-method", resize_method or "bilinear"]
    return await _run(args, timeout_s)


async def _run(args: list[str], timeout_s: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.services.probe",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        _kill(proc)
        raise ProbeError(
            f"validating the file took longer than {timeout_s:g} s; it is too large or too slow "
            "to load",
            "Timeout",
        ) from None
    except BaseException:
        _kill(proc)
        raise
    lines = out.decode("utf-8", "replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if proc.returncode != 0 or not result:
        log.error(
            "probe %s exited with %s: %s", args[0], proc.returncode, err.decode(errors="replace")
        )
        raise ProbeError(
            "the file could not be validated: loading it failed "
            f"(the validator exited with status {proc.returncode})",
            "ProbeCrashed",
        )
    if "error" in result:
        raise ProbeError(str(result["error"]), str(result.get("type", "CartlError")))
    log.debug("probe %s: %s", args[0], result)
    return result


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


# --- the child ---------------------------------------------------------------------------------


def _checkpoint_summary(
    path: Path,
    arch: str | None,
    num_classes: int | None,
    in_channels: int | None,
    input_size: int | None,
) -> dict[str, Any]:
    from cartl_core.checkpoints import PLAIN_FORMAT, describe_model, load_model, read_description

    description = read_description(path)
    if description is not None:
        model = load_model(path)
    else:
        # Published layouts need no arch; the input channels come from the weights.
        model = load_model(
            path,
            arch=arch,
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size or 32,
        )
        description = describe_model(model, format=PLAIN_FORMAT)
    spec = model.spec
    return {
        "arch": spec.arch,
        "num_classes": spec.num_classes,
        "num_blocks": model.num_blocks,
        "input_shape": [spec.in_channels, spec.input_size, spec.input_size],
        "description": description,
    }


def _dataset_summary(
    path: Path, max_extract_bytes: int, resize: int | None = None, method: str = "bilinear"
) -> dict[str, Any]:
    from cartl_core import load_dataset
    from cartl_core.data import ArchiveLimits, Resize, list_members
    from cartl_core.data.archive import archive_kind

    default = ArchiveLimits()
    limits = ArchiveLimits(
        max_total_bytes=max_extract_bytes,
        max_member_bytes=min(default.max_member_bytes, max_extract_bytes),
    )
    if path.name.lower().endswith(".npz") and archive_kind(path) == "zip":
        # An npz is a zip that numpy inflates without limits: check its members first.
        list_members(path, limits)
    how = None if resize is None else Resize(resize, method)  # type: ignore[arg-type]
    data = load_dataset(path, limits=limits, resize=how)
    return {
        "resize": None if how is None else how.to_dict(),
        "format": data.format,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "train_size": len(data.train),
        "test_size": len(data.test),
        "input_shape": list(data.input_shape),
    }


def _finite(value: Any) -> Any:
    """NaN and infinities (a diverged run's metrics) become null: JSON has no word for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.services.probe")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("checkpoint")
    p.add_argument("path", type=Path)
    p.add_argument("--arch")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-channels", type=int)
    p.add_argument("--input-size", type=int)
    p = sub.add_parser("dataset")
    p.add_argument("path", type=Path)
    p.add_argument("--max-extract-bytes", type=int, required=True)
    p.add_argument("--resize", type=int)
    p.add_argument("--resize-method", default="bilinear")
    return parser


def main(argv: list[str] | None = None) -> int:
    from cartl_core import CartlError

    args = _parser().parse_args(argv)
    try:
        if args.what == "checkpoint":
            result = _checkpoint_summary(
                args.path, args.arch, args.num_classes, args.in_channels, args.input_size
            )
        else:
            result = _dataset_summary(
                args.path, args.max_extract_bytes, args.resize, args.resize_method
            )
    except CartlError as exc:
        result = {"error": str(exc), "type": type(exc).__name__}
    except Exception as exc:  # a file no loader anticipated: still a bad upload, not a crash
        first = str(exc).splitlines()[0] if str(exc) else "no details"
        result = {
            "error": f"the file could not be loaded ({type(exc).__name__}: {first})",
            "type": "UnexpectedError",
        }
    # Libraries may print; the result is the last line, written in one piece.
    sys.stdout.write("\n" + json.dumps(_finite(result)) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    # The answer is written: skip the interpreter's teardown (torch's is slow).
    code = main()
    sys.stdout.flush()
    os._exit(code)
