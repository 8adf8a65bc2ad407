"""Flat job parameters: the names and defaults of the CLI options, and whole jobs end to end."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.cli.library import build_parser
from cartl_core import AuditConfig, AuditReport, ConfigError, read_description
from cartl_core.jobs import (
    AuditParams,
    CompareParams,
    PretrainParams,
    TransferParams,
    parse_params,
    run_job,
)


def _cli_defaults(command: str) -> dict[str, Any]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.default for a in sub.choices[command]._actions}


@pytest.mark.parametrize(
    ("command", "cls"),
    [
        ("pretrain", PretrainParams),
        ("transfer", TransferParams),
        ("audit", AuditParams),
        ("compare", CompareParams),
    ],
)
def test_params_have_the_cli_option_names_and_defaults(command: str, cls: type) -> None:
    cli = _cli_defaults(command)
    for f in dataclasses.fields(cls):
        if f.name not in cli or f.name == "arch":
            continue
        cli_default, default = cli[f.name], f.default
        audit_name = f.name.removeprefix("audit_")
        audit_option = command == "audit" or f.name.startswith("audit_")
        if (
            cli_default is None
            and default is not None
            and audit_option
            and hasattr(AuditConfig(), audit_name)
        ):
            # The CLI's audit options leave None to mean "AuditConfig's default" (eps and norm
            # are None in both: the model's own threat model, resolved when the job runs).
            cli_default = getattr(AuditConfig(), audit_name)
        if isinstance(default, tuple) and not isinstance(cli_default, tuple):
            cli_default = (cli_default,)
        assert cli_default == default, f"{command} --{f.name}: CLI {cli_default!r}, job {default!r}"
    shared = {f.name for f in dataclasses.fields(cls)} & set(cli)
    assert len(shared) >= 5


def test_parse_params_accepts_fractions_and_single_eps() -> None:
    p = parse_params("audit", {"eps": "8/255", "steps": 10})
    assert isinstance(p, AuditParams)
    assert p.eps == (8 / 255,)
    t = parse_params("transfer", {"audit_eps": ["4/255", 0.03], "method": "neft"})
    assert isinstance(t, TransferParams)
    assert t.audit_eps == (4 / 255, 0.03)


def test_lwf_tune_reaches_the_transfer_and_every_compare_candidate() -> None:
    t = parse_params("transfer", {"method": "lwf", "lwf_tune": "last-k"})
    assert isinstance(t, TransferParams)
    assert t.config().lwf.tune == "last-k"
    c = parse_params("compare", {"eps": 0.1, "lwf_tune": "last-k"})
    assert isinstance(c, CompareParams)
    assert c.config().lwf.tune == "last-k"
    with pytest.raises(ConfigError) as info:
        TransferParams(method="lwf", lwf_tune="some").config()  # type: ignore[arg-type]
    assert info.value.field == "lwf_tune"


def test_lr_schedule_reaches_every_training_job() -> None:
    pre = parse_params("pretrain", {"lr_schedule": "one-cycle"})
    assert isinstance(pre, PretrainParams)
    assert pre.config().schedule.shape == "one-cycle"
    tr = parse_params("transfer", {"lr_schedule": "one-cycle", "method": "lwf"})
    assert isinstance(tr, TransferParams)
    schedule = tr.config().resolved_schedule()
    # The method's own schedule (LwF's lr) keeps its values; only the curve changes.
    assert (schedule.shape, schedule.lr) == ("one-cycle", 0.001)
    cmp = parse_params("compare", {"eps": 0.1, "lr_schedule": "one-cycle"})
    assert isinstance(cmp, CompareParams)
    assert cmp.config().schedule_for("cartl").shape == "one-cycle"


@pytest.mark.parametrize(
    ("kind", "raw", "field"),
    [
        ("pretrain", {"eps": 0}, "eps"),
        ("pretrain", {"eps": "a/b"}, "eps"),
        ("transfer", {"method": "magic"}, "method"),
        ("transfer", {"k": 0}, "k"),
        ("transfer", {"bn": "nope"}, "bn"),
        ("audit", {"steps": 0}, "steps"),
        ("audit", {"wat": 1}, "wat"),
        ("compare", {}, "eps"),
        ("compare", {"eps": 0.1, "methods": ["magic"]}, "methods"),
        ("compare", {"eps": 0.1, "k": [0]}, "k"),
        ("compare", {"eps": 0.1, "norm_beta": [-1.0]}, "norm_beta"),
        ("compare", {"eps": 0.1, "bn": ["nope"]}, "bn"),
        ("compare", {"eps": 0.1, "audit_attacks": "magic"}, "audit_attacks"),
        ("train", {}, "kind"),
    ],
)
def test_bad_params_name_the_field(kind: str, raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_params(kind, raw)
    assert info.value.field == field, str(info.value)


def _npz(path: Path, n_train: int = 192, n_test: int = 48) -> Path:
    """Three learnable classes of 8x8 grey images as an .npz file."""
    rng = np.random.default_rng(0)
    templates = rng.uniform(0.2, 0.8, (3, 8, 8, 1))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3
        x = templates[y] + 0.1 * rng.standard_normal((n, 8, 8, 1))
        return (np.clip(x, 0, 1) * 255).astype(np.uint8), y

    (xa, ya), (xb, yb) = split(n_train), split(n_test)
    np.savez(path, x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    return path


def test_pretrain_transfer_and_audit_jobs_end_to_end(tmp_path: Path) -> None:
    data = _npz(tmp_path / "d.npz")
    small = {"epochs": 1, "batch_size": 64, "augment": "none", "audit_steps": 3,
             "audit_attacks": "fast"}  # fmt: skip
    src = run_job(
        "pretrain",
        parse_params(
            "pretrain",
            {"arch": "small-cnn", "k": 2, "steps": 2, "eps": 0.1, **small, "augment": "auto"},
        ),
        dataset_path=data,
        checkpoint_path=None,
        out_path=tmp_path / "src.safetensors",
    )
    assert src.weights is not None
    assert [h["epoch"] for h in src.history] == [1]
    # No audit_eps anywhere below: every audit is in the threat model the source was trained in.
    assert src.metrics["eps"] == pytest.approx(0.1)
    src_training = (read_description(tmp_path / "src.safetensors") or {})["training"]
    # "auto" on 8x8 images: no augmentation; the step follows eps (eps/4).
    assert src_training["augmentation_used"] == "none"
    assert src_training["attack"]["alpha"] == pytest.approx(0.025)
    tgt = run_job(
        "transfer",
        parse_params("transfer", {"method": "cartl", "k": 2, **small}),
        dataset_path=data,
        checkpoint_path=src.weights,
        out_path=tmp_path / "tgt.safetensors",
    )
    assert tgt.audit is not None
    assert 0 <= tgt.metrics["robust_accuracy"] <= tgt.metrics["clean_accuracy"] <= 1
    description = read_description(tmp_path / "tgt.safetensors")
    assert description is not None
    assert description["metrics"]["robust_accuracy"] == tgt.metrics["robust_accuracy"]
    assert tgt.metrics["eps"] == pytest.approx(0.1)
    assert description["training"]["threat"] == {"eps": pytest.approx(0.1), "norm": "linf"}
    audited = run_job(
        "audit",
        parse_params("audit", {"steps": 3, "limit": 20, "square_queries": 200, "fab_steps": 20}),
        dataset_path=data,
        checkpoint_path=tmp_path / "tgt.safetensors",
        out_path=tmp_path / "unused",
    )
    assert audited.weights is None
    assert audited.audit is not None
    assert AuditReport.from_dict(audited.audit).to_dict() == audited.audit
    assert audited.metrics["samples"] == 20
    assert audited.metrics["eps"] == pytest.approx(0.1)
    assert audited.metrics["ensemble"] == "standard"
    assert [a["name"] for a in audited.metrics["attacks"] if a["role"] == "ensemble"] == [
        "apgd-ce",
        "apgd-t",
        "fab-t",
        "square",
    ]
    assert audited.metrics["precision"] == "fp32"
    assert audited.metrics["robust_accuracy"] <= audited.metrics["clean_accuracy"]
