"""Job parameters: the API's ``params`` object, checked in three steps.

1. Names: every key must be a field of the kind's dataclass in :mod:`cartl_core.jobs` (the CLI
   options' names). Lists are bounded (:data:`MAX_LIST`).
2. Types: pydantic validates the values against those same dataclasses (strict JSON rules: ``"3"``
   is not an integer), after :func:`cartl_core.jobs.normalise_values` turned fractions written as
   text (``"8/255"``) into numbers and refused non-finite ones and those outside their bounds
   (``params.epochs``: "epochs must be at most 10000; got 1000000000"), as it does for the CLI.
3. Consistency: the kind's ``check()`` on the typed values, the same check
   :func:`cartl_core.jobs.parse_params` runs for the CLI and the worker.

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
from cartl_core.jobs import normalise_values, params_class
from cartl_core.options import describe, fraction_fields, json_bounds

__all__ = [
    "MAX_LIST",
    "jsonable_params",
    "params_json_schema",
    "request_field",
    "resolve_params",
]

#: Longest list a parameter may hold (radii, k values, methods, ...): far above any real use.
MAX_LIST = 64


@cache
def _adapter(kind: str) -> TypeAdapter[Any]:
    return TypeAdapter(params_class(kind))


def params_json_schema(kind: str) -> dict[str, Any]:
    """The JSON schema of ``kind``'s params: defaults, each field's help as its description, each
    number's bounds (``minimum``, ``exclusiveMinimum``, ...; a list's on its items), and text
    beside the number where a fraction such as ``"8/255"`` is accepted."""
    cls = params_class(kind)
    schema = _adapter(kind).json_schema(mode="validation")
    schema["additionalProperties"] = False
    descriptions, bounds, fractions = describe(cls), json_bounds(cls), fraction_fields(cls)
    properties = schema.get("properties", {})
    for name in list(properties):
        prop = properties[name]
        notes = {k: prop.pop(k) for k in ("title", "default") if k in prop}
        shape = _one_of(_bounded(prop, bounds.get(name, {}), text=name in fractions))
        properties[name] = {**notes, **shape, "description": descriptions[name]}
    return schema


_FRACTION_TEXT = {"type": "string", "description": 'a fraction such as "8/255"'}


def _bounded(schema: dict[str, Any], bounds: dict[str, float], *, text: bool) -> list[Any]:
    """``schema`` (a property, an anyOf branch or a list's items) with ``bounds`` on its numbers,
    as alternatives: a number that may be written as a fraction (``text``) becomes two."""
    if schema.get("type") in ("integer", "number"):
        number = {**schema, **bounds}
        return [number, dict(_FRACTION_TEXT)] if text else [number]
    if "anyOf" in schema:
        schema["anyOf"] = [
            alt for sub in schema["anyOf"] for alt in _bounded(sub, bounds, text=text)
        ]
    if isinstance(schema.get("items"), dict):
        schema["items"] = _one_of(_bounded(schema["items"], bounds, text=text))
    return [schema]


def _one_of(alternatives: list[Any]) -> dict[str, Any]:
    return dict(alternatives[0]) if len(alternatives) == 1 else {"anyOf": alternatives}


def resolve_params(kind: str, raw: Mapping[str, Any]) -> Any:
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
        # Per parameter, not per list item: a list of bad values is one error, and so is a
        # value that fits none of a union's types (resize: true, false or a side).
        said: dict[str, list[str]] = {}
        item: dict[str, object] = {}
        for err in exc.errors(include_url=False):
            name = f"params.{err['loc'][0]}"
            # Only the first bad item of a list is named: the union's alternatives for it.
            index = (
                err["loc"][1] if len(err["loc"]) > 1 and isinstance(err["loc"][1], int) else None
            )
            if item.setdefault(name, index) != index:
                continue
            messages = said.setdefault(name, [])
            if (message := _item_message(err)) not in messages:
                messages.append(message)
        raise UnprocessableError(
            [FieldError(name, _either(messages)) for name, messages in said.items()]
        ) from None
    try:
        typed.check()  # what relates the values to each other, now that each is well-typed
    except ConfigError as exc:
        raise UnprocessableError(
            [FieldError(request_field(e.field), str(e)) for e in (exc, *exc.more)]
        ) from None
    return typed


def _either(messages: list[str]) -> str:
    """``Input should be a valid boolean or a valid integer``."""
    first, *rest = messages
    prefix = "Input should be "
    return " or ".join([first, *(m.removeprefix(prefix) for m in rest)])


def _item_message(err: Any) -> str:
    loc = err["loc"]
    where = f" (item {loc[1]})" if len(loc) > 1 and isinstance(loc[1], int) else ""
    return f"{err['msg']}{where}"


def jsonable_params(params: Any) -> dict[str, Any]:
    """Plain JSON values (tuples become lists) for the job row and the response."""
    out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(params)))
    return out


#: The job's own fields (beside ``params``) a core error may name.
_JOB_FIELDS = frozenset({"kind", "checkpoint_id", "dataset_id"})


def request_field(field: str | None) -> str:
    """Where in the request a core error's field is: a job field as it is, a parameter under
    ``params``, none at all as ``params`` as a whole."""
    if field is None:
        return "params"
    return field if field in _JOB_FIELDS else f"params.{field}"
