"""The job parameters' one schema.

Every field of the parameter dataclasses in :mod:`cartl_core.jobs` carries an :class:`Option` as
field metadata: its help text, how its default reads, its group in ``--help``, whether it takes a
fraction such as ``8/255``. From that and the field's type this module generates

- the ``cartl`` command's options (:func:`add_options`),
- the parsing of one value written as text (:func:`parse_text`), used by those options and by
  the service client's ``-p NAME=VALUE``,
- the descriptions and ranges in the API's JSON schema (:func:`describe`, :func:`json_bounds`),

so names, defaults, help, ranges and fraction parsing exist once. Every int and float parameter
has a lower and an upper bound (:func:`out_of_range` checks one value against them, for
:func:`cartl_core.jobs.normalise_values` and the CLI); the checks that relate parameters to each
other or to the model stay with the configs (:mod:`cartl_core.config`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import operator
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

__all__ = [
    "Option",
    "OptionSpec",
    "add_options",
    "arg_type",
    "describe",
    "format_duration",
    "format_number",
    "fraction_fields",
    "fraction_value",
    "json_bounds",
    "list_fields",
    "option",
    "option_specs",
    "out_of_range",
    "parse_text",
    "range_text",
]


@dataclass(frozen=True)
class Option:
    """What a parameter says about itself beyond its name, type and default.

    ``default_text`` is how ``--help`` shows a default that is not a plain value (``None``
    meaning "the method's own", say). ``choices`` names the allowed values of a ``str`` field
    whose values come from a table rather than a ``Literal``. ``cli_required``: the CLI asks for
    it although the dataclass has a default (a pre-training names its architecture).

    ``ge``/``gt`` (at least / above) and ``le``/``lt`` (at most / below) bound a numeric
    parameter, each item of a list: every int and float parameter has one lower and one upper.

    ``to`` is where the value goes in the kind's run config, a dotted path such as
    ``attack.eps`` (:func:`cartl_core.kinds.configs.build_config`); left out, the parameter's own
    name. A config without that path takes the parameter by its own name, or not at all.
    """

    help: str
    default_text: str | None = None
    group: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    fraction: bool = False
    cli_required: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    to: str | None = None


def option(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its :class:`Option` (``meta`` are the Option's other fields)."""
    return dataclasses.field(default=default, metadata={"option": Option(help=help, **meta)})


@dataclass(frozen=True)
class OptionSpec:
    """One parameter as the generators see it: the field, its Option and its resolved type."""

    name: str
    default: Any
    option: Option
    base: type  # bool, int, float or str
    is_list: bool
    optional: bool
    choices: tuple[str, ...] | None
    #: A ``bool | int`` parameter: off, on (its default target), or a number (a resize: false,
    #: true for the model's input size, or a side). The CLI's flag alone means true.
    or_flag: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def default_text(self) -> str | None:
        if self.option.default_text is not None:
            return self.option.default_text
        if self.default is None or self.base is bool or isinstance(self.default, bool):
            return None
        if self.is_list:
            return ",".join(self._show(v) for v in self.default)
        return self._show(self.default)

    def _show(self, value: Any) -> str:
        return format_number(value) if self.option.fraction else str(value)


_SPECS: dict[type, tuple[OptionSpec, ...]] = {}


def option_specs(cls: type[Any]) -> tuple[OptionSpec, ...]:
    """The parameters of ``cls`` in field order; a field without an Option is a bug."""
    if cls not in _SPECS:
        _SPECS[cls] = _specs(cls)
    return _SPECS[cls]


def _specs(cls: type[Any]) -> tuple[OptionSpec, ...]:
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("option")
        if not isinstance(meta, Option):
            raise TypeError(f"{cls.__name__}.{f.name} has no Option: declare it with option()")
        or_flag = _is_flag_or_int(hints[f.name])
        base, is_list, optional, choices = (
            (int, False, False, None) if or_flag else _shape(hints[f.name])
        )
        _check_bounds_declared(f"{cls.__name__}.{f.name}", meta, numeric=base in (int, float))
        specs.append(
            OptionSpec(
                name=f.name,
                default=f.default,
                option=meta,
                base=base,
                is_list=is_list,
                optional=optional,
                choices=meta.choices or choices,
                or_flag=or_flag,
            )
        )
    return tuple(specs)


def _check_bounds_declared(where: str, meta: Option, *, numeric: bool) -> None:
    lower = [b for b in (meta.ge, meta.gt) if b is not None]
    upper = [b for b in (meta.le, meta.lt) if b is not None]
    if not numeric and (lower or upper):
        raise TypeError(f"{where} is not a number and cannot have bounds")
    if numeric and (len(lower) != 1 or len(upper) != 1):
        raise TypeError(f"{where} needs one lower bound (ge or gt) and one upper (le or lt)")


def _is_flag_or_int(hint: Any) -> bool:
    """A ``bool | int`` annotation (see :attr:`OptionSpec.or_flag`)."""
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and set(
        typing.get_args(hint)
    ) == {bool, int}


def _shape(hint: Any) -> tuple[type, bool, bool, tuple[str, ...] | None]:
    """(base type, is a list, may be None, allowed values) of a parameter's annotation."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        (hint,) = args
    is_list = typing.get_origin(hint) is tuple
    if is_list:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is Literal:
        return str, is_list, optional, tuple(typing.get_args(hint))
    if hint not in (bool, int, float, str):
        raise TypeError(f"parameter type {hint!r} has no text form")
    return hint, is_list, optional, None


def fraction_fields(cls: type) -> frozenset[str]:
    """The parameters of ``cls`` that accept a fraction written as text."""
    return frozenset(s.name for s in option_specs(cls) if s.option.fraction)


def list_fields(cls: type) -> frozenset[str]:
    """The parameters of ``cls`` that hold several values (one value is a list of one)."""
    return frozenset(s.name for s in option_specs(cls) if s.is_list)


def fraction_value(text: str) -> float:
    """``"8/255"``, ``"0.1"`` or ``"1e-3"`` as a float; ValueError says what was wrong."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{text!r} is not a number or a fraction like 8/255") from None
    return value


def format_number(value: float) -> str:
    """A radius as people write it: ``8/255`` rather than ``0.0313...``."""
    frac = Fraction(value).limit_denominator(1000)
    return f"{frac.numerator}/{frac.denominator}" if abs(float(frac) - value) < 1e-9 else str(value)


def format_duration(seconds: float) -> str:
    """Seconds as people read a wait: ``45 s``, ``12 min``, ``3.5 h``."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


#: Each bound of an Option: its words in messages and help, whether a value meets it, and its
#: JSON-schema keyword.
_BOUNDS = (
    ("ge", "at least", operator.ge, "minimum"),
    ("gt", "above", operator.gt, "exclusiveMinimum"),
    ("le", "at most", operator.le, "maximum"),
    ("lt", "below", operator.lt, "exclusiveMaximum"),
)


def out_of_range(spec: OptionSpec, value: float) -> str | None:
    """Why ``value`` lies outside ``spec``'s range (``"must be at most 10000; got 20000"``), or
    None when it lies inside. Exact for any int: Python compares an int with a float bound
    without converting it, so ``2**63`` or ``10**400`` cannot overflow on the way."""
    for key, words, meets, _ in _BOUNDS:
        bound = getattr(spec.option, key)
        if bound is not None and not meets(value, bound):
            return f"must be {words} {_bound(bound)}; got {_shown(value)}"
    return None


def range_text(spec: OptionSpec) -> str | None:
    """The range as ``--help`` and the schema's descriptions say it: ``1 to 10000``,
    ``above 0, at most 10``; None for a parameter that is not a number."""
    o = spec.option
    if o.ge is not None and o.le is not None:
        return f"{_bound(o.ge)} to {_bound(o.le)}"
    parts = []
    for key, words, _, _ in _BOUNDS:
        bound = getattr(o, key)
        if bound is not None:
            parts.append(f"{words} {_bound(bound)}")
    return ", ".join(parts) or None


def _bound(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _shown(value: float) -> str:
    # A client's integer can be thousands of digits long; the answer stays one short line.
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_WORDS = tuple(w for w in _TRUE + _FALSE if not w.isdigit())


def parse_text(spec: OptionSpec, text: str) -> Any:
    """One parameter's value written as on the command line (lists comma-separated).

    Raises ValueError with a message that names what the value should look like.
    """
    if not spec.is_list:
        return _scalar(spec, text)
    items = [part.strip() for part in text.strip().strip("[]").split(",") if part.strip()]
    if not items:
        raise ValueError(f"give at least one value, comma-separated; got {text!r}")
    return tuple(_scalar(spec, item) for item in items)


def _scalar(spec: OptionSpec, text: str) -> Any:
    text = text.strip()
    # Words only: "1" or "0" there is a number (a side too small), not a yes or a no.
    if spec.or_flag and text.lower() in _WORDS:
        return text.lower() in _TRUE
    if spec.base is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"{text!r} is not true or false")
    if spec.choices is not None:
        if text not in spec.choices:
            raise ValueError(f"{text!r} is not one of {', '.join(spec.choices)}")
        return text
    if spec.base is int:
        try:
            number: float = int(text)
        except ValueError:
            also = ", true or false" if spec.or_flag else ""
            raise ValueError(f"{text!r} is not an integer{also}") from None
    elif spec.base is float:
        number = fraction_value(text) if spec.option.fraction else _float(text)
        if not math.isfinite(number):
            raise ValueError(f"{text!r} is not a finite number")
    else:
        return text
    problem = out_of_range(spec, number)
    if problem is not None:
        raise ValueError(problem)
    return number


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _arg_type(spec: OptionSpec) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return parse_text(spec, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = spec.name  # argparse names the type in some of its own messages
    return parse


def arg_type(cls: type[Any], name: str) -> Callable[[str], Any]:
    """The argparse ``type`` of parameter ``name`` of ``cls``, for an option outside a params
    class that takes the same values (the demo's ``--methods``)."""
    (spec,) = [s for s in option_specs(cls) if s.name == name]
    return _arg_type(spec)


def help_text(spec: OptionSpec, *, cli: bool = True, default: str | None = None) -> str:
    """The help line with its range and default, as ``--help`` (``cli``) and the API's schema
    show it; ``default`` replaces how the default reads."""
    text = spec.option.help
    bounds = range_text(spec)
    if bounds is not None:
        text += f" ({'each ' if spec.is_list else ''}{bounds})"
    if default is None and not (cli and spec.option.cli_required):
        default = spec.default_text()
    return f"{text} [default: {default}]" if default is not None else text


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: frozenset[str] = frozenset(),
    default_texts: Mapping[str, str] | None = None,
) -> None:
    """One ``--flag`` per parameter of ``cls`` (except ``skip``), in groups as the Options say.

    Defaults are the dataclass's own, so the parsed namespace holds a complete set of params.
    ``default_texts`` says how some defaults read in this command's ``--help`` where the shared
    text would name what does not apply to it (a pre-training's epochs are not LwF's).
    """
    default_texts = default_texts or {}
    groups: dict[str, argparse._ArgumentGroup] = {
        g.title: g for g in parser._action_groups if g.title is not None
    }
    for spec in option_specs(cls):
        if spec.name in skip:
            continue
        title = spec.option.group
        where: argparse._ActionsContainer = parser
        if title is not None:
            where = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        # argparse %-formats help lines; the schema's text is plain.
        text = help_text(spec, default=default_texts.get(spec.name))
        kwargs: dict[str, Any] = {"help": text.replace("%", "%%")}
        if spec.base is bool and not spec.is_list:
            where.add_argument(spec.flag, action="store_true", **kwargs)
            continue
        if spec.or_flag:
            where.add_argument(
                spec.flag,
                nargs="?",
                const=True,
                default=spec.default,
                type=_arg_type(spec),
                metavar=spec.option.metavar or "N",
                **kwargs,
            )
            continue
        if spec.choices is not None and not spec.is_list:
            kwargs["choices"] = spec.choices
        else:
            kwargs["type"] = _arg_type(spec)
        metavar = spec.option.metavar or ("LIST" if spec.is_list else None)
        if metavar is not None:
            kwargs["metavar"] = metavar
        if spec.option.cli_required:
            kwargs["required"] = True
        else:
            kwargs["default"] = spec.default
        where.add_argument(spec.flag, **kwargs)


def describe(cls: type) -> dict[str, str]:
    """Each parameter's description for the API's JSON schema."""
    out = {}
    for spec in option_specs(cls):
        text = help_text(spec, cli=False)
        if spec.is_list:
            text += "; one value or a list"
        if spec.option.fraction:
            text += '; a number, or a fraction written as text such as "8/255"'
        out[spec.name] = text
    return out


def json_bounds(cls: type) -> dict[str, dict[str, float]]:
    """Each numeric parameter's range as JSON-schema keywords (``minimum``, ``exclusiveMinimum``,
    ...), for its number or, for a list, for each item."""
    out = {}
    for spec in option_specs(cls):
        keywords = {kw: getattr(spec.option, key) for key, _, _, kw in _BOUNDS}
        bounds = {kw: value for kw, value in keywords.items() if value is not None}
        if bounds:
            out[spec.name] = bounds
    return out
