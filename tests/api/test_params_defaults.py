"""The API's job parameters have the CLI's names and defaults: both come from cartl_core."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest

from app.cli.library import build_parser
from app.services.params import jsonable_params, params_json_schema, resolve_params
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


#: The options of each command that are not job parameters: paths, output and display.
CLI_ONLY = {
    "pretrain": {"data", "out", "plot", "device", "quiet", "report"},
    "transfer": {"source", "data", "out", "plot", "device", "quiet", "report"},
    "audit": {"checkpoint", "data", "json", "plot", "device", "quiet", "report"},
    "compare": {"source", "data", "out_dir", "json", "plot", "device", "quiet", "report"},
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_is_a_cli_option_with_the_same_default(kind: str) -> None:
    api = dataclass_defaults(kind)
    cli = {k: v for k, v in cli_defaults(kind).items() if k not in ("func", "command")}
    # The CLI's options and the API's params are one vocabulary, generated from one schema.
    assert set(cli) == set(api) | CLI_ONLY[kind]
    for name in api:
        value = cli[name]
        if kind in ("pretrain", "compare") and name in {"arch", "eps"} and value is None:
            continue  # the CLI asks for these (a required option has no default)
        assert jsonable({name: value}) == {name: api[name]}, name


def jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_cli_help_and_api_descriptions_are_the_same_text(kind: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub.choices[kind]._actions}
    properties = params_json_schema(kind)["properties"]
    for name, prop in properties.items():
        cli_help = str(helps[name]).replace("%%", "%")
        # The API adds how to write lists and fractions; a required CLI option shows no default.
        assert prop["description"].startswith(cli_help.split(" [default:")[0]), name


def test_fraction_text_is_accepted() -> None:
    params = resolve_params("pretrain", {"eps": "8/255", "alpha": "2/255"})
    assert dataclasses.asdict(params)["eps"] == pytest.approx(8 / 255)
