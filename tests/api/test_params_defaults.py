"""The API's job parameters have the CLI's names and defaults: both come from cartl_core."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest

from app.services.params import jsonable_params, params_json_schema, resolve_params
from cartl_core.cli import build_parser
from cartl_core.jobs import params_class

KINDS = ("pretrain", "transfer", "audit", "compare")


def cli_defaults(command: str) -> dict[str, Any]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        a.dest: a.default
        for a in sub.choices[command]._actions
        if a.default is not argparse.SUPPRESS and a.dest != "help"
    }


def dataclass_defaults(kind: str) -> dict[str, Any]:
    return jsonable_params(params_class(kind)())


#: What a kind cannot do without (a compare's threat model has no default).
REQUIRED: dict[str, dict[str, Any]] = {"compare": {"eps": 0.1}}


@pytest.mark.parametrize("kind", KINDS)
def test_empty_params_resolve_to_the_dataclass_defaults(kind: str) -> None:
    required = REQUIRED.get(kind, {})
    resolved = jsonable_params(resolve_params(kind, required))
    assert resolved == {**dataclass_defaults(kind), **required}


@pytest.mark.parametrize("kind", KINDS)
def test_openapi_defaults_are_the_dataclass_defaults(kind: str) -> None:
    properties = params_json_schema(kind)["properties"]
    expected = dataclass_defaults(kind)
    assert set(properties) == set(expected)
    for name, prop in properties.items():
        assert prop["default"] == expected[name], name


@pytest.mark.parametrize("kind", KINDS)
def test_cli_defaults_agree_for_shared_names(kind: str) -> None:
    api = dataclass_defaults(kind)
    cli = cli_defaults(kind)
    shared = set(api) & set(cli)
    # The CLI's options and the API's params are one vocabulary.
    assert {"seed", "batch_size" if kind == "audit" else "k"} <= shared
    for name in shared:
        value = cli[name]
        if value is None:
            continue  # "the method's default", which the dataclass resolves the same way
        if isinstance(value, tuple):
            value = list(value)
        assert api[name] == value, name
    # Options with a value in the CLI but not in the API are the CLI's own (paths, output).
    cli_only = {n for n in set(cli) - set(api) if cli[n] is not None and cli[n] is not False}
    assert cli_only <= {"device", "quiet", "func", "plot", "json", "command"}, cli_only


def test_fraction_text_is_accepted() -> None:
    params = resolve_params("pretrain", {"eps": "8/255", "alpha": "2/255"})
    assert dataclasses.asdict(params)["eps"] == pytest.approx(8 / 255)
