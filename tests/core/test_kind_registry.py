"""The registry of job kinds: a toy kind, registered as a user's module would, is offered and
run by the same paths as the built-in ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cartl_core import ConfigError
from cartl_core.config import AuditConfig
from cartl_core.jobs import METRICS_VERSION, params_class, parse_params, run_job
from cartl_core.kinds import JobKind, get_kind, job_kinds, register
from cartl_core.kinds.configs import routes
from cartl_core.options import option
from tests.plugins import toy_kind
from tests.services import write_checkpoint, write_npz


@pytest.fixture
def toy() -> Iterator[JobKind]:
    with toy_kind() as kind:
        yield kind


def test_the_built_in_kinds_are_registered_in_order() -> None:
    assert [k.name for k in job_kinds()][:4] == ["pretrain", "transfer", "audit", "compare"]
    assert get_kind("audit").checkpoint == "model"
    assert not get_kind("audit").makes_weights
    assert get_kind("compare").candidates
    assert get_kind("compare").progress == "candidates"


def test_a_toy_kind_is_parsed_bounded_and_run(toy: JobKind, tmp_path: Path) -> None:
    assert params_class("clean-accuracy") is toy.params
    params = parse_params("clean-accuracy", {"limit": 16})
    with pytest.raises(ConfigError, match="limit must be at least 1") as bad:
        parse_params("clean-accuracy", {"limit": 0})
    assert bad.value.field == "limit"
    with pytest.raises(ConfigError, match="unknown parameter 'epochs'"):
        parse_params("clean-accuracy", {"epochs": 3})
    checkpoint = write_checkpoint(tmp_path / "model.safetensors", classes=4)
    data = write_npz(tmp_path / "data.npz")
    outcome = run_job(
        "clean-accuracy", params, dataset_path=data, checkpoint_path=checkpoint, device="cpu"
    )
    assert outcome.metrics["samples"] == 16
    assert 0.0 <= outcome.metrics["clean_accuracy"] <= 1.0
    # What every kind gets from the shared path: where the number came from.
    assert outcome.metrics["provenance"]["kind"] == "clean-accuracy"
    assert outcome.metrics["schema_version"] == METRICS_VERSION


def test_a_kind_needs_a_checkpoint_it_declares(toy: JobKind, tmp_path: Path) -> None:
    data = write_npz(tmp_path / "data.npz")
    params = parse_params("clean-accuracy", {})
    with pytest.raises(ConfigError, match="needs a checkpoint") as missing:
        run_job("clean-accuracy", params, dataset_path=data, checkpoint_path=None, device="cpu")
    assert missing.value.field == "checkpoint_id"


@dataclass(frozen=True)
class _NoCheck:
    n: int = option(1, "a number", ge=1, le=2)


def test_register_refuses_what_would_break_elsewhere(toy: JobKind) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(JobKind(name=toy.name, summary="x", params=toy.params, run=toy.run))
    with pytest.raises(ValueError, match="1-20 of a-z"):
        register(JobKind(name="Bad Name", summary="x", params=toy.params, run=toy.run))
    with pytest.raises(TypeError, match="check"):
        register(JobKind(name="no-check", summary="x", params=_NoCheck, run=toy.run))
    with pytest.raises(ConfigError, match="unknown job kind 'nothere'; choose one of pretrain"):
        get_kind("nothere")


def test_the_cli_offers_a_registered_kind(
    toy: JobKind, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import build_parser, main

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert isinstance(sub.choices, dict)
    command = sub.choices["clean-accuracy"]
    helps = {a.dest: str(a.help) for a in command._actions}
    assert helps["limit"].startswith("evaluate only the first N test samples")
    assert "(1 to 1000000)" in helps["limit"]
    checkpoint = write_checkpoint(tmp_path / "model.safetensors", classes=4)
    data = write_npz(tmp_path / "data.npz")
    args = ["clean-accuracy", "--checkpoint", str(checkpoint), "--data", str(data)]
    assert main([*args, "--limit", "20", "--device", "cpu", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["samples"] == 20
    assert result["audit"] is None
    with pytest.raises(SystemExit):
        main([*args, "--limit", "0"])
    assert "--limit" in capsys.readouterr().err


#: What each built-in kind's parameters hold besides its configs: read by its run function (the
#: seed, the architecture, class count and stated threat model of plain weights, a resize, an
#: audit's limit), or computed into a config (``no_fgsm``), or deciding whether the final audit
#: runs.
NOT_CONFIG = {
    "pretrain": {"seed", "arch", "resize", "resize_method", "no_audit"},
    "transfer": {
        *("seed", "arch", "source_classes", "source_eps", "source_norm"),
        *("resize", "resize_method", "no_audit"),
    },
    "audit": {"seed", "arch", "resize", "resize_method", "limit", "no_fgsm"},
    "compare": {"seed", "arch", "source_classes", "resize", "resize_method", "no_audit"},
}


@pytest.mark.parametrize("name", list(NOT_CONFIG))
def test_every_parameter_reaches_a_config_or_is_read_by_the_run(name: str) -> None:
    """The run configs come from the parameters by their declared routes (no hand-written
    translation): a parameter that reached no config would be silently ignored."""
    kind = get_kind(name)
    config_cls = type(parse_params(name, {"eps": 0.1} if name == "compare" else {}).config())
    reached = set(routes(kind.params, config_cls).values())
    if config_cls is not AuditConfig:  # a training's final audit, or a compare's
        reached |= set(routes(kind.params, AuditConfig, prefix="audit_").values())
    assert kind.param_names() - reached == NOT_CONFIG[name]
