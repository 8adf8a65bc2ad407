"""Whole jobs from flat parameters named like the CLI options, whatever their kind.

The kinds themselves (their parameters, inputs, checks and run functions) live in
:mod:`cartl_core.kinds`, one module each; this module is what every caller runs them through:
:func:`parse_params` (names, bounds, then the kind's own checks), :func:`run_job` (with
provenance attached and ``should_stop`` asked in every long loop) and :func:`describe_error`.
The ``cartl`` CLI, the REST API and the worker share it, so they share names, defaults and
validation. Every default comes from :mod:`cartl_core.config`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

import torch

from cartl_core._stop import stop_when
from cartl_core.data import Resize
from cartl_core.errors import CartlError, ConfigError
from cartl_core.kinds import (
    AuditParams,
    CompareParams,
    JobOutcome,
    PretrainParams,
    RunContext,
    TransferParams,
    get_kind,
)
from cartl_core.kinds._shared import NOT_AUDITED, jsonable
from cartl_core.options import (
    OptionSpec,
    fraction_fields,
    fraction_value,
    list_fields,
    option_specs,
    out_of_range,
)

if TYPE_CHECKING:
    from cartl_core.audit import AuditEvent

__all__ = [
    "METRICS_VERSION",
    "NOT_AUDITED",
    "AuditParams",
    "CompareParams",
    "JobOutcome",
    "PretrainParams",
    "TransferParams",
    "describe_error",
    "normalise_values",
    "params_class",
    "parse_params",
    "run_job",
]

#: The version of a job's ``metrics`` layout (headline numbers, ``attacks``, ``warnings``,
#: ``provenance``, a compare's ``candidates``...); the audit report and the compare table carry
#: their own (``schema_version`` in :meth:`AuditReport.to_dict` and :meth:`CompareResult.to_dict`).
METRICS_VERSION = 1


def params_class(kind: str) -> type[Any]:
    """The parameters dataclass of a registered kind; ConfigError (field ``kind``) otherwise."""
    return get_kind(kind).params


def parse_params(kind: str, raw: Mapping[str, Any]) -> Any:
    """Build and check the parameters of a ``kind`` job from JSON-like values.

    Raises :class:`ConfigError` with ``field`` set to the offending parameter. Type checking of
    each value is the caller's (the API validates types with pydantic first).
    """
    cls = params_class(kind)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"unknown parameter {unknown[0]!r} for a {kind} job; known: {', '.join(sorted(known))}",
            field=unknown[0],
        )
    params = cls(**normalise_values(cls, raw))
    params.check()  # raises ConfigError naming the field
    return params


def normalise_values(cls: type[Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with fractions written as text turned into numbers and one value where several
    are allowed (the audit's eps) made a list of one; non-finite numbers and numbers outside
    their parameter's bounds (:class:`cartl_core.options.Option`) refused.

    The one check of names' values every path runs first: the CLI, the API and :func:`run_job`.
    Raises :class:`ConfigError` naming the parameter (and, in ``more``, every other one wrong).
    """
    fractions, lists = fraction_fields(cls), list_fields(cls)
    specs = {spec.name: spec for spec in option_specs(cls)}
    out, errors = {}, []
    for name, value in raw.items():
        if name in lists and value is not None:
            value = tuple(value) if isinstance(value, list | tuple) else (value,)
        try:
            if name in fractions:
                value = _numbers(name, value, fraction_value)
            if not _finite(value):
                raise ConfigError(f"{name} must be a finite number; got {value!r}", field=name)
            if name in specs:
                _check_range(specs[name], value)
        except ConfigError as exc:
            errors.append(exc)
        out[name] = value
    if errors:
        first, *more = errors
        raise ConfigError(str(first), field=first.field, more=tuple(more))
    return out


def _numbers(name: str, value: Any, parse: Callable[[str], float]) -> Any:
    if isinstance(value, tuple):
        return tuple(_numbers(name, v, parse) for v in value)
    if isinstance(value, str):
        try:
            return parse(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}", field=name) from None
    return value


def _check_range(spec: OptionSpec, value: Any) -> None:
    items = value if isinstance(value, tuple) else (value,)
    for i, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, int | float):
            continue  # a value of another type is the type check's to name
        problem = out_of_range(spec, item)
        if problem is not None:
            where = f" (item {i})" if isinstance(value, tuple) else ""
            raise ConfigError(f"{spec.name} {problem}{where}", field=spec.name)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(_finite(v) for v in value)
    return True


ProgressFn = Callable[[Any], None]
AuditProgressFn = Callable[["AuditEvent"], None]
_P = ParamSpec("_P")


def _with_provenance(run: Callable[_P, JobOutcome]) -> Callable[_P, JobOutcome]:
    """``run``, with where its outcome came from attached (see :mod:`cartl_core.provenance`)."""
    signature = inspect.signature(run)

    @functools.wraps(run)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> JobOutcome:
        started, t0 = datetime.now(UTC), time.monotonic()
        outcome = run(*args, **kwargs)
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        _add_provenance(outcome, call.arguments, started, time.monotonic() - t0)
        return outcome

    return wrapper


def _stoppable(run: Callable[_P, JobOutcome]) -> Callable[_P, JobOutcome]:
    """``run`` with its ``should_stop`` asked inside every long loop below it (a
    :func:`~cartl_core._stop.stop_when` block around the call)."""

    @functools.wraps(run)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> JobOutcome:
        should_stop = kwargs.get("should_stop")
        with stop_when(should_stop if callable(should_stop) else None):
            return run(*args, **kwargs)

    return wrapper


def _add_provenance(
    outcome: JobOutcome, call: Mapping[str, Any], started: datetime, wall_seconds: float
) -> None:
    from cartl_core._runtime import resolve_device
    from cartl_core.checkpoints import read_description
    from cartl_core.provenance import collect, source_summary

    params, checkpoint = call["params"], call["checkpoint_path"]
    dev = resolve_device(call["device"])
    outcome.provenance = collect(
        kind=call["kind"],
        params=jsonable(dataclasses.asdict(params)),
        device=str(dev),
        device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        started=started,
        wall_seconds=wall_seconds,
        dataset_path=Path(call["dataset_path"]),
        checkpoint_path=None if checkpoint is None else Path(checkpoint),
        weights_path=outcome.weights,
        attack_settings=(outcome.audit or {}).get("config"),
    )
    if call.get("dataset_resize") is not None:
        # The stored file is the upload's bytes; what the job read was them resized so.
        outcome.provenance["dataset"]["resize"] = call["dataset_resize"].to_dict()
    outcome.metrics["provenance"] = outcome.provenance
    if get_kind(call["kind"]).checkpoint == "source" and checkpoint is not None:
        outcome.source = source_summary(read_description(checkpoint))
        if outcome.source is not None:
            outcome.metrics["source"] = outcome.source


def _checked(run: Callable[_P, JobOutcome]) -> Callable[_P, JobOutcome]:
    """``run`` with its ``params`` checked once before anything runs: parsed from JSON-like
    values (the worker's stored params, the CLI's options), or for a dataclass built in code,
    held to the same bounds and ``check()`` as parsed ones."""
    signature = inspect.signature(run)

    @functools.wraps(run)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> JobOutcome:
        call = signature.bind(*args, **kwargs)
        kind, params = call.arguments["kind"], call.arguments["params"]
        if isinstance(params, Mapping):
            call.arguments["params"] = parse_params(kind, params)
        else:
            get_kind(kind)  # an unknown kind is named as such, not as a type error
            normalise_values(
                type(params), {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
            )
            params.check()
        return run(*call.args, **call.kwargs)

    return wrapper


@_checked
@_with_provenance
@_stoppable
def run_job(
    kind: str,
    params: Any,
    *,
    dataset_path: Path,
    checkpoint_path: Path | None,
    out_path: Path | None = None,
    state_path: Path | None = None,
    device: str = "auto",
    on_progress: ProgressFn | None = None,
    on_audit_progress: AuditProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch: Callable[[Any, Any], None] | None = None,
    extra_dir: Path | None = None,
    dataset_resize: Resize | None = None,
    processes: int = 1,
) -> JobOutcome:
    """Run one job end to end through its kind's ``run``; a kind that makes a model writes a
    self-describing checkpoint to ``out_path``. ``params``: the kind's dataclass, or values by
    name as :func:`parse_params` takes them. ``dataset_resize``: how the dataset was uploaded to
    be resized (the job's own ``resize`` replaces it).

    The ``cartl`` CLI and the service's worker both run jobs through here. ``on_progress`` gets
    the kind's progress events (``JobKind.progress``); ``extra_dir`` holds the files a kind keeps
    across a retry (a compare's candidates; default: beside ``out_path``). ``should_stop`` is
    asked at every step of every long loop (data decoding, training batches, attack steps and
    queries): true ends the job with :class:`CancelledError` within one step. ``processes``: the
    job's training (data-parallel) and audits (samples dealt out) run on that many processes
    (GPUs ``cuda:0..``, or CPU processes), with the numbers of one.
    """
    spec = get_kind(kind)
    context = RunContext(
        dataset_path=Path(dataset_path),
        dataset_resize=dataset_resize,
        checkpoint_path=None if checkpoint_path is None else Path(checkpoint_path),
        out_path=out_path,
        state_path=state_path,
        extra_dir=extra_dir,
        device=device,
        on_progress=on_progress,
        on_audit_progress=on_audit_progress,
        should_stop=should_stop,
        on_epoch=on_epoch if spec.progress == "epochs" else None,
        processes=processes,
    )
    outcome = spec.run(params, context)
    # What readers (the report, the dashboard, clients) check before they read the rest.
    outcome.metrics["schema_version"] = METRICS_VERSION
    return outcome


def describe_error(exc: BaseException) -> str:
    """A one-line message for a failed job: CartlError messages as they are, others typed."""
    if isinstance(exc, CartlError):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc}"
