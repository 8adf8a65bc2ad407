"""Job parameters: the API's ``params`` object, checked in three steps.

1. Names: every key must be a field of the kind's dataclass in :mod:`cartl_core.jobs` (the CLI
   options' names). Lists are bounded (:data:`MAX_LIST`).
2. Types: pydantic validates the values against those same dataclasses (strict JSON rules: ``"3"``
   is not an integer), after :func:`cartl_core.jobs.normalise_values` turned fractions written as
   text (``"8/255"``) into numbers and refused non-finite ones, as it does for the CLI.
3. Ranges and consistency: :func:`cartl_core.jobs.parse_params`, the same check the CLI and the
   worker use.

The dataclasses and their field metadata (:mod:`cartl_core.options`) are the single source of
names, defaults, help and parsing; nothing here restates one. Errors name the field as
``params.NAME``, one error per field.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from app.errors import MAX_FIELD_ERRORS, FieldError, UnprocessableError
from cartl_core import ConfigError
from cartl_core.jobs import Params, normalise_values, params_class, parse_params
from cartl_core.options import describe

__all__ = ["MAX_LIST", "jsonable_params", "params_json_schema", "resolve_params"]

#: Longest list a parameter may hold (radii, k values, methods, ...): far above any real use.
MAX_LIST = 64


@cache
def _adapter(kind: str) -> TypeAdapter[Any]:
    return TypeAdapter(params_class(kind))


def params_json_schema(kind: str) -> dict[str, Any]:
    """The JSON schema of ``kind``'s params: defaults, and each field's help as its description."""
    schema = _adapter(kind).json_schema(mode="validation")
    schema["additionalProperties"] = False
    descriptions = describe(params_class(kind))
    for name, prop in schema.get("properties", {}).items():
        prop["description"] = descriptions[name]
    return schema


def resolve_params(kind: str, raw: Mapping[str, Any]) -> Params:
    """Validate ``raw`` for a ``kind`` job; the result has every default filled in."""
    cls = params_class(kind)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        # The names are the client's: the answer stays small however many it sent.
        shown = [name[:100] for name in unknown[:MAX_FIELD_ERRORS]]
        raise UnprocessableError(
            [FieldError(f"params.{name}", f"unknown parameter for a {kind} job") for name in shown],
            detail=f"{len(unknown)} unknown parameter(s) for a {kind} job, e.g. "
            f"params.{shown[0]}; known: {', '.join(sorted(known))}",
        )
    long = sorted(
        name for name, value in raw.items() if isinstance(value, list) and len(value) > MAX_LIST
    )
    if long:
        raise UnprocessableError(
            [FieldError(f"params.{name}", f"at most {MAX_LIST} values") for name in long]
        )
    try:
        values = normalise_values(cls, raw)
    except ConfigError as exc:
        raise UnprocessableError(
            [FieldError(f"params.{e.field}", str(e)) for e in (exc, *exc.more)]
        ) from None
    try:
        typed = _adapter(kind).validate_json(json.dumps(values), strict=True)
    except ValidationError as exc:
        raise UnprocessableError(
            # Per parameter, not per list item: a list of bad values is one error.
            [
                FieldError(f"params.{err['loc'][0]}", _item_message(err))
                for err in exc.errors(include_url=False)
            ]
        ) from None
    try:
        return parse_params(kind, _as_raw(typed))
    except ConfigError as exc:
        raise UnprocessableError.one(_param_field(kind, exc.field, typed), str(exc)) from None


def _item_message(err: Any) -> str:
    loc = err["loc"]
    where = f" (item {loc[1]})" if len(loc) > 1 and isinstance(loc[1], int) else ""
    return f"{err['msg']}{where}"


def jsonable_params(params: Params) -> dict[str, Any]:
    """Plain JSON values (tuples become lists) for the job row and the response."""
    out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(params)))
    return out


def _as_raw(params: Params) -> dict[str, Any]:
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}


def _param_field(kind: str, field: str | None, typed: Params) -> str:
    """The params name behind a config error: the config's names are not always the CLI's."""
    known = {f.name for f in dataclasses.fields(typed)}
    if field is None:
        return "params"
    # A training job builds two configs that share names (eps, steps, ...): the training one,
    # then the final audit's. If the training config is fine, the audit's was at fault.
    if f"audit_{field}" in known and field in known:
        try:
            typed.config()
        except ConfigError:
            return f"params.{field}"
        return f"params.audit_{field}"
    for name in (field, f"audit_{field}", f"fdm_{field}"):
        if name in known:
            return f"params.{name}"
    return "params"
