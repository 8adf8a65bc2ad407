"""A kind's run config, built from its parameters by what each parameter declares.

The parameters are flat (``--eps``, ``--epochs``, ``--trace-samples``: the CLI's and the API's
names); the configs of :mod:`cartl_core.config` are nested (``FDMConfig.attack.eps``,
``.schedule.epochs``, ``.trace.samples``). Each parameter's :class:`~cartl_core.options.Option`
says where it goes (``to``, a dotted path; by default its own name). :func:`build_config` follows
those routes, and :func:`config_error` follows them back, so a config's error names the
parameter the user wrote. A kind's ``config()`` adds only what the method computes (a schedule
that starts from the method's own, a radius from the checkpoint's threat model).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from cartl_core.errors import ConfigError
from cartl_core.options import option_specs

__all__ = ["build_config", "config_error", "routes"]

_UNSET = object()


def routes(params_cls: type[Any], config_cls: type[Any], prefix: str = "") -> dict[str, str]:
    """``{path in config_cls: parameter}`` for the parameters that reach ``config_cls``.

    ``prefix``: only the parameters named with it, taken without it (a training's final audit:
    ``audit_eps`` is the audit config's ``eps``), and by their own names.
    """
    return dict(_routes(params_cls, config_cls, prefix))


_ROUTES: dict[tuple[type, type, str], tuple[tuple[str, str], ...]] = {}


def _routes(params_cls: type, config_cls: type, prefix: str) -> tuple[tuple[str, str], ...]:
    key = (params_cls, config_cls, prefix)
    if key not in _ROUTES:
        _ROUTES[key] = _find_routes(params_cls, config_cls, prefix)
    return _ROUTES[key]


def _find_routes(params_cls: type, config_cls: type, prefix: str) -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {}
    for spec in option_specs(params_cls):
        if not spec.name.startswith(prefix):
            continue
        own = spec.name.removeprefix(prefix)
        wanted = [own] if prefix else [p for p in (spec.option.to, own) if p]
        path = next((p for p in wanted if _has_path(config_cls, p)), None)
        if path is None:
            continue  # not part of this config (a seed, an architecture, another config's)
        if path in found:
            raise TypeError(
                f"{params_cls.__name__}: {found[path]} and {spec.name} both go to {path}"
            )
        found[path] = spec.name
    return tuple(found.items())


def build_config(
    params: Any,
    config_cls: type[Any],
    *,
    prefix: str = "",
    values: Mapping[str, Any] | None = None,
    bases: Mapping[str, Any] | None = None,
) -> Any:
    """``config_cls`` from ``params`` along :func:`routes`, with ``values`` (paths the kind
    computes) on top. A parameter left as None keeps the config's default; ``bases`` gives a
    nested config's starting point (a transfer's schedule is its method's)."""
    given = {
        path: getattr(params, name) for path, name in _routes(type(params), config_cls, prefix)
    }
    given.update(values or {})
    try:
        return _build(config_cls, given, dict(bases or {}), "")
    except ConfigError as exc:
        raise config_error(exc, params, config_cls, prefix) from None


def config_error(
    exc: ConfigError, params: Any, config_cls: type[Any], prefix: str = ""
) -> ConfigError:
    """``exc`` (raised by a config) naming the parameter behind its field, or no field (the
    parameters as a whole) where none is."""
    names = {f.name for f in dataclasses.fields(params)}
    field = exc.field
    if field is None:
        return exc
    if prefix and prefix + field in names:  # before the bare name: ``eps`` of the audit's
        return ConfigError(str(exc), field=prefix + field, more=exc.more)
    if field in names and not prefix:
        return exc
    behind = [n for p, n in _routes(type(params), config_cls, prefix) if p.split(".")[-1] == field]
    return ConfigError(str(exc), field=behind[0] if len(behind) == 1 else None, more=exc.more)


def _build(cls: type[Any], given: dict[str, Any], bases: dict[str, Any], at: str) -> Any:
    base = bases.get(at.rstrip("."))
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        path = at + f.name
        nested = _nested_type(cls, f.name)
        if path in given:
            value = given[path]
            default = getattr(base, f.name) if base is not None else _default(f)
            if value is None and default is not None and default is not _UNSET:
                continue  # None: the config's own default
            changes[f.name] = value
        elif nested is not None and (path in bases or any(p.startswith(path + ".") for p in given)):
            changes[f.name] = _build(nested, given, bases, path + ".")
    if base is not None:
        return base.with_(**changes)
    return cls(**changes)


def _has_path(cls: type[Any], path: str) -> bool:
    head, _, rest = path.partition(".")
    if head not in {f.name for f in dataclasses.fields(cls)}:
        return False
    if not rest:
        return True
    nested = _nested_type(cls, head)
    return nested is not None and _has_path(nested, rest)


def _nested_type(cls: type, name: str) -> type | None:
    """The config class a field holds (``ScheduleConfig | None`` holds a ScheduleConfig)."""
    hint = _hints(cls)[name]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if union else (hint,)
    return next((t for t in options if isinstance(t, type) and dataclasses.is_dataclass(t)), None)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _UNSET
