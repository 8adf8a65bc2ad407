"""Every numeric job parameter has a lower and an upper bound in the one schema
(:mod:`cartl_core.options`), and every path refuses a value outside it, naming the parameter, the
bound and the value."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from cartl_core import ConfigError
from cartl_core.jobs import PretrainParams, normalise_values, parse_params, run_job
from cartl_core.kinds import job_kinds
from cartl_core.options import OptionSpec, option, option_specs, out_of_range, parse_text

#: Every registered kind's parameters: a new kind's are held to the same rule.
KINDS: dict[type[Any], str] = {kind.params: kind.name for kind in job_kinds()}
CLASSES = tuple(KINDS)
NUMERIC = [
    pytest.param(cls, spec, id=f"{cls.__name__}.{spec.name}")
    for cls in CLASSES
    for spec in option_specs(cls)
    if spec.base in (int, float)
]


def test_the_classes_have_numeric_parameters() -> None:
    assert len(NUMERIC) > 40


@pytest.mark.parametrize(("cls", "spec"), NUMERIC)
def test_every_numeric_parameter_has_both_bounds_and_its_default_inside(
    cls: type[Any], spec: OptionSpec
) -> None:
    o = spec.option
    assert (o.ge is None) != (o.gt is None), "one lower bound, ge or gt"
    assert (o.le is None) != (o.lt is None), "one upper bound, le or lt"
    defaults = spec.default if spec.is_list else (spec.default,)
    for value in defaults or ():
        # A bool is no number: resize's default, off, is no side (options.OptionSpec.or_flag).
        if value is not None and not isinstance(value, bool):
            assert out_of_range(spec, value) is None, value


def test_a_numeric_parameter_without_bounds_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Unbounded:
        epochs: int = option(1, "epochs", ge=1)

    @dataclasses.dataclass(frozen=True)
    class BoundedText:
        name: str = option("a", "a name", le=3)

    for cls in (Unbounded, BoundedText):
        with pytest.raises(TypeError, match=cls.__name__):
            option_specs(cls)


def _edges(spec: OptionSpec) -> tuple[list[float], list[float]]:
    """(values on the range's edges, values one step beyond them)."""
    o = spec.option

    def step(value: float, towards: float) -> float:
        if spec.base is int:
            return value + (1 if towards > value else -1)
        return math.nextafter(value, towards)

    inside: list[float] = []
    outside: list[float] = []
    for bound, closed, away in ((o.ge, True, -math.inf), (o.gt, False, -math.inf),
                                (o.le, True, math.inf), (o.lt, False, math.inf)):  # fmt: skip
        if bound is None:
            continue
        bound = int(bound) if spec.base is int else float(bound)
        if closed:
            inside.append(bound)
            outside.append(step(bound, away))
        else:
            inside.append(step(bound, -away))
            outside.append(bound)
    return inside, outside


def _raw(spec: OptionSpec, value: Any) -> dict[str, Any]:
    return {spec.name: [value] if spec.is_list else value}


@pytest.mark.parametrize(("cls", "spec"), NUMERIC)
def test_the_edges_pass_and_one_step_beyond_fails(cls: type[Any], spec: OptionSpec) -> None:
    inside, outside = _edges(spec)
    for value in inside:
        normalise_values(cls, _raw(spec, value))
        assert parse_text(spec, repr(value)) == ((value,) if spec.is_list else value)
    for value in outside:
        with pytest.raises(ConfigError) as info:
            normalise_values(cls, _raw(spec, value))
        assert info.value.field == spec.name
        assert str(info.value).startswith(f"{spec.name} must be ")
        assert f"got {value!r}" in str(info.value)
        # The CLI's parsing of the same value (the service client's -p too).
        with pytest.raises(ValueError, match="must be"):
            parse_text(spec, repr(value))


@pytest.mark.parametrize(("cls", "spec"), NUMERIC)
@pytest.mark.parametrize("value", [2**63, 10**400, 1e308, -1, -1e308])
def test_huge_and_negative_values_are_refused_by_name(
    cls: type[Any], spec: OptionSpec, value: float
) -> None:
    with pytest.raises(ConfigError) as info:
        normalise_values(cls, _raw(spec, value))
    assert info.value.field == spec.name
    assert len(str(info.value)) < 200  # a client's 400-digit integer stays a short line


@pytest.mark.parametrize(
    ("kind", "raw", "message"),
    [
        ("pretrain", {"epochs": 10**9}, "epochs must be at most 10000; got 1000000000"),
        ("pretrain", {"epochs": 2**63}, "epochs must be at most 10000; got 9223372036854775808"),
        ("pretrain", {"batch_size": 1e9}, "batch_size must be at most 65536; got 1000000000.0"),
        ("pretrain", {"lr": 1e308}, "lr must be at most 10; got 1e+308"),
        ("pretrain", {"lr": 0}, "lr must be above 0; got 0"),
        ("transfer", {"audit_steps": 10**9}, "audit_steps must be at most 10000"),
        ("pretrain", {"trace_steps": 10**9}, "trace_steps must be at most 1000"),
        ("pretrain", {"trace_samples": 10**9}, "trace_samples must be at most 1000000"),
        ("audit", {"steps": 10**9}, "steps must be at most 10000"),
        ("audit", {"restarts": 10**9}, "restarts must be at most 100"),
        ("audit", {"apgd_steps": 10**9}, "apgd_steps must be at most 10000"),
        ("audit", {"square_queries": 10**12}, "square_queries must be at most 1000000"),
        ("audit", {"limit": -1}, "limit must be at least 1; got -1"),
        ("audit", {"limit": 0}, "limit must be at least 1; got 0"),
        ("audit", {"eps": [0.1, "2000"]}, "eps must be at most 1000; got 2000.0 (item 1)"),
        ("compare", {"eps": 0.1, "max_candidates": 10**9}, "max_candidates must be at most 1000"),
        ("compare", {"eps": 0.1, "val_fraction": 1}, "val_fraction must be below 1; got 1"),
    ],
)
def test_parse_params_names_the_parameter_the_bound_and_the_value(
    kind: str, raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_params(kind, raw)
    assert info.value.field == message.split()[0]
    assert str(info.value).startswith(message)


def test_every_parameter_out_of_range_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_params("audit", {"limit": -1, "steps": 0, "seed": 2**32})
    named = {e.field for e in (info.value, *info.value.more)}
    assert named == {"limit", "steps", "seed"}


def test_the_largest_values_still_make_a_job() -> None:
    params = parse_params(
        "pretrain",
        {"epochs": 10_000, "batch_size": 65_536, "lr": 10, "seed": 2**32 - 1, "steps": 1000},
    )
    assert isinstance(params, PretrainParams)
    assert params.config().schedule.epochs == 10_000


def test_run_job_refuses_params_built_in_code_before_reading_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        run_job(
            "pretrain",
            PretrainParams(epochs=10**9),
            dataset_path=tmp_path / "missing.npz",  # never opened: the check comes first
            checkpoint_path=None,
            out_path=tmp_path / "out.safetensors",
        )
    assert info.value.field == "epochs"
    assert "at most 10000" in str(info.value)
