"""The ``cartl`` CLI end to end on small data: commands, defaults, and one-line errors."""

from __future__ import annotations

import argparse
import json
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.cli.library import build_parser, fraction, main
from cartl_core import read_description, reproduction
from cartl_core.compare import CandidateResult, CompareResult, CostEstimate
from cartl_core.config import AttackConfig, AuditConfig, FDMConfig, ScheduleConfig, TransferConfig
from cartl_core.reproduction import DemoResult, DigitsSettings, ReproductionRow

from .conftest import make_dataset


def _npz(path: Path, seed: int = 0, classes: int = 4, size: int = 8) -> Path:
    data = make_dataset(num_classes=classes, seed=seed, size=size)
    np.savez(
        path,
        x_train=(data.train.images.numpy() * 255).round().astype(np.uint8).transpose(0, 2, 3, 1),
        y_train=data.train.labels.numpy(),
        x_test=(data.test.images.numpy() * 255).round().astype(np.uint8).transpose(0, 2, 3, 1),
        y_test=data.test.labels.numpy(),
    )
    return path


FAST = ["--epochs", "1", "--batch-size", "32", "--augment", "none", "--quiet", "--device", "cpu",
        "--audit-attacks", "fast"]  # fmt: skip


def test_pretrain_transfer_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, tgt = _npz(tmp_path / "src.npz", 0), _npz(tmp_path / "tgt.npz", 1, classes=3)
    source = tmp_path / "source.safetensors"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(src),
                "--arch",
                "small-cnn",
                "--k",
                "2",
                "--fdm-lambda",
                "0.01",
                "--eps",
                "8/255",
                "--steps",
                "2",
                "--out",
                str(source),
                "--audit-steps",
                "2",
                *FAST,
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    # The one epoch's line, once, printed as the epoch ended (so before "saved").
    lines = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == ["1"]
    assert err.index(lines[0]) < err.index("saved ")
    d = read_description(source)
    assert d is not None
    assert d["training"]["method"] == "fdm"
    assert d["training"]["attack"]["eps"] == pytest.approx(8 / 255)
    assert 0 <= d["metrics"]["robust_accuracy"] <= d["metrics"]["clean_accuracy"]
    assert not (tmp_path / "source.safetensors.state").exists()

    target = tmp_path / "target.safetensors"
    assert (
        main(
            [
                "transfer",
                "--source",
                str(source),
                "--data",
                str(tgt),
                "--method",
                "cartl",
                "--out",
                str(target),
                "--no-audit",
                *FAST,
            ]
        )
        == 0
    )
    d = read_description(target)
    assert d is not None
    assert (d["training"]["method"], d["training"]["norm_beta"]) == ("cartl", 0.4)
    assert d["training"]["k"] == 2  # no --k: the k the source was pre-trained for
    assert d["model"]["num_classes"] == 3

    capsys.readouterr()
    assert (
        main(
            [
                "audit",
                "--checkpoint",
                str(target),
                "--data",
                str(tgt),
                "--eps",
                "8/255,16/255",
                "--steps",
                "3",
                "--apgd-steps",
                "20",
                "--fab-steps",
                "20",
                "--square-queries",
                "200",
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert {"clean_accuracy", "robust_accuracy", "attacks", "per_class", "checks"} <= set(report)

    def runs(role: str) -> list[tuple[str, int]]:
        return [(a["name"], round(a["eps"] * 255)) for a in report["attacks"] if a["role"] == role]

    assert report["ensemble"] == "standard"
    assert runs("ensemble") == [("apgd-ce", 8), ("apgd-t", 8), ("fab-t", 8), ("square", 8)]
    assert runs("named") == [("pgd-3", 8), ("fgsm", 8)]
    assert runs("eps-curve") == [("apgd-ce", 16), ("apgd-t", 16), ("fab-t", 16), ("square", 16)]
    at_eps = [a["accuracy"] for a in report["attacks"] if a["role"] != "check" and a["eps"] < 0.04]
    assert report["robust_accuracy"] <= min(at_eps)
    assert [round(p["eps"] * 255) for p in report["by_eps"] if not p["subset"]] == [8, 16]
    pgd = next(a for a in report["attacks"] if a["name"] == "pgd-3")
    assert pgd["alpha"] == pytest.approx(2 / 255)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],  # the `cartl` command
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    data = _npz(tmp_path / "d.npz")
    cases = [
        (
            ["audit", "--checkpoint", str(evil), "--data", str(data), "--arch", "small-cnn"],
            "would run code",
        ),
        (
            ["audit", "--checkpoint", str(tmp_path / "none.safetensors"), "--data", str(data)],
            "not found",
        ),
        (
            [
                "pretrain",
                "--data",
                str(data),
                "--arch",
                "resnet-1",
                "--out",
                str(tmp_path / "o"),
                "--epochs",
                "1",
            ],
            "unknown architecture",
        ),
        (
            [
                "pretrain",
                "--data",
                str(data),
                "--arch",
                "small-cnn",
                "--k",
                "9",
                "--out",
                str(tmp_path / "o"),
                "--epochs",
                "1",
            ],
            "k=9 is out of range",
        ),
        (
            [
                "pretrain",
                "--data",
                str(tmp_path / "missing.npz"),
                "--arch",
                "small-cnn",
                "--out",
                str(tmp_path / "o"),
            ],
            "missing.npz",
        ),
    ]
    for args, expected in cases:
        result = _run(*args)
        assert result.returncode != 0, args
        err = result.stderr.strip()
        assert expected in err, (args, err)
        assert "Traceback" not in err
        assert len(err.splitlines()) == 1, err
    assert not marker.exists()


def test_bad_eps_rejected_by_parser() -> None:
    result = _run("audit", "--checkpoint", "x", "--data", "y", "--eps", "eight")
    assert result.returncode == 2
    assert "not a number or a fraction like 8/255" in result.stderr


def test_a_value_out_of_range_is_one_argparse_line_naming_the_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cases = [
        (("pretrain", "--out", "o", "--arch", "small-cnn", "--epochs", "1000000000"),
         "cartl pretrain: error: argument --epochs: must be at most 10000; got 1000000000"),
        (("pretrain", "--out", "o", "--arch", "small-cnn", "--lr", "1e308"),
         "cartl pretrain: error: argument --lr: must be at most 10; got 1e+308"),
        (("audit", "--checkpoint", "c", "--limit", "-1"),
         "cartl audit: error: argument --limit: must be at least 1; got -1"),
        (("compare", "--source", "s", "--out-dir", "o", "--eps", "0.1", "--k", "2,1000"),
         "cartl compare: error: argument --k: must be at most 100; got 1000"),
    ]  # fmt: skip
    for args, line in cases:
        with pytest.raises(SystemExit) as info:
            main([*args, "--data", "d"])
        assert info.value.code == 2, args
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == line  # after argparse's usage lines
        assert "Traceback" not in err


def test_help_shows_each_numbers_range() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: str(a.help) for a in sub.choices["pretrain"]._actions}
    assert helps["epochs"].startswith("training epochs (1 to 10000) [default: 100")
    assert helps["lr"].startswith("peak learning rate (above 0, at most 10) [default:")
    audit = {a.dest: str(a.help) for a in sub.choices["audit"]._actions}
    assert audit["eps"].startswith("attack radius, or several separated by commas (each above 0")


def test_fraction_parsing() -> None:
    assert fraction("8/255") == pytest.approx(8 / 255)
    assert fraction("0.5") == 0.5


def test_help_explains_options() -> None:
    for command in ("pretrain", "transfer", "audit"):
        result = _run(command, "--help")
        assert result.returncode == 0
        assert "default" in result.stdout


def test_cli_defaults_come_from_config() -> None:
    parser = build_parser()
    pre = parser.parse_args(["pretrain", "--data", "d", "--arch", "a", "--out", "o"])
    fdm, attack = FDMConfig(), AttackConfig()
    assert (pre.k, pre.fdm_lambda, pre.fdm_reduction) == (fdm.k, fdm.fdm_lambda, fdm.reduction)
    assert (pre.eps, pre.alpha, pre.steps) == (attack.eps, attack.alpha, attack.steps)
    tr = parser.parse_args(["transfer", "--source", "s", "--data", "d", "--out", "o"])
    # k comes from the source's header when the command runs (else TransferConfig's).
    assert (tr.method, tr.k) == (TransferConfig().method, None)
    au = parser.parse_args(["audit", "--checkpoint", "c", "--data", "d"])
    assert au.batch_size == AuditConfig().batch_size
    # Unset schedule flags fall through to the config's defaults.
    assert pre.epochs is None
    assert ScheduleConfig().epochs == 100
    assert fdm.fdm_lambda == 0.005
    # The paper's step, 2/255 at 8/255, as eps/4 so that it follows another eps.
    assert (attack.eps, attack.step_size, attack.steps) == (8 / 255, 2 / 255, 7)
    assert AttackConfig(eps=0.2).step_size == pytest.approx(0.05)
    assert AttackConfig(eps=0.2).to_dict()["alpha"] == pytest.approx(0.05)
    assert (AuditConfig().steps, AuditConfig().eps) == (20, (8 / 255,))


def test_a_target_of_another_image_size_is_resampled_inside_the_model_or_resized(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cartl_core import create_model, save_checkpoint

    source = tmp_path / "source.safetensors"
    save_checkpoint(create_model("small-cnn", 4, in_channels=1, input_size=8), source)
    big = _npz(tmp_path / "big.npz", 1, classes=3, size=12)
    target = tmp_path / "target.safetensors"
    transfer = ["transfer", "--source", str(source), "--data", str(big), "--method",
                "standard", "--k", "2", "--out", str(target), "--no-audit", *FAST]  # fmt: skip
    audit = ["audit", "--checkpoint", str(source), "--data", str(big), "--attacks", "fast",
             "--apgd-steps", "2", "--steps", "2", "--check-samples", "8", "--limit", "8",
             "--json", "--quiet", "--device", "cpu"]  # fmt: skip
    # As they are: the model takes 12x12 images and resamples them to its stem's 8x8 (its
    # audit on them: tests/core/test_resample.py).
    assert main(transfer) == 0
    d = read_description(target)
    assert d is not None
    assert d["input_shape"] == [1, 12, 12]
    assert (d["model"]["stem_size"], d["model"]["resample"]) == (8, "bilinear")

    # Resized first: the flag alone to the model's size, or to a side with a method.
    assert main([*transfer, "--resize"]) == 0
    d = read_description(target)
    assert d is not None
    assert (d["input_shape"], d["model"]["stem_size"]) == ([1, 8, 8], None)
    assert main([*transfer, "--resize", "16", "--resize-method", "bicubic"]) == 0
    d = read_description(target)
    assert d is not None
    assert (d["input_shape"], d["model"]["stem_size"]) == ([1, 16, 16], 8)
    capsys.readouterr()
    assert main([*audit, "--resize", "8", "--resize-method", "area"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 8

    with pytest.raises(SystemExit):
        main([*audit, "--resize", "4"])
    assert "--resize: must be at least 8; got 4" in capsys.readouterr().err


def test_demo_defaults_come_from_the_digits_settings() -> None:
    parser = build_parser()
    args, demo = parser.parse_args(["demo"]), DigitsSettings()
    assert (args.eps, args.k, args.fdm_lambda, args.epochs, args.attacks, args.methods) == (
        demo.eps, demo.k, demo.fdm_lambda, demo.epochs, demo.attacks, demo.compare_methods,
    )  # fmt: skip
    assert demo.compare_methods == ("standard", "cartl")
    wider = parser.parse_args(["demo", "--methods", "standard,neft,cartl"])
    assert wider.methods == ("standard", "neft", "cartl")


def _demo_result() -> DemoResult:
    """A result shaped like the demo's (the real one takes minutes: test_digits_reproduction)."""
    rows = [
        ReproductionRow("AT", None, 1.0, 0.69, 40.0, "source", 0.72, samples=400),
        ReproductionRow("AT", "standard", 0.98, 0.12, 8.0, "target", 0.16, samples=450),
        ReproductionRow("FDM", None, 0.99, 0.67, 40.0, "source", 0.69, samples=400),
        ReproductionRow(
            "FDM", "compare", 0.96, 0.24, 90.0, "target", 0.31, candidate="cartl-k3", samples=450
        ),
    ]
    candidates = [
        CandidateResult("standard-k3", "standard", 3, None, "source-stats", 0.97, 0.16, 0.95,
                        0.15, 9.0),
        CandidateResult("cartl-k3", "cartl", 3, 0.4, "frozen", 0.95, 0.29, 0.96, 0.25, 12.0),
    ]  # fmt: skip
    comparison = CompareResult(
        candidates=candidates,
        chosen=candidates[1],
        estimate=CostEstimate(2, 2.0, 60.0, []),
        selection={"reason": "cartl-k3: validation robust 0.290", "val_samples": 89,
                   "ensemble": "fast"},
        dropped=[],
        seconds=21.0,
    )  # fmt: skip
    return DemoResult(rows, comparison, 180.0)


def test_demo_shows_the_rows_and_compares_candidates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[DigitsSettings] = []

    def demo(settings: DigitsSettings, **kw: Any) -> DemoResult:
        seen.append(settings)
        result = _demo_result()
        for row in result.rows:
            kw["on_row"](row)
        return result

    monkeypatch.setattr(reproduction, "digits_reproduction", demo)
    assert main(["demo", "--methods", "standard,cartl", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert seen[0].compare_methods == ("standard", "cartl")
    # The rows (compare's choice named), then every candidate with the chosen one marked.
    # Each accuracy with its 95% Wilson interval over the test images it was measured on.
    assert re.search(
        r"FDM\s+compare: cartl-k3\s+target\s+0\.960 \(\.94-\.97\)\s+0\.240 \(\.20-\.28\)", out.out
    )
    assert "in brackets: 95% Wilson intervals (source n = 400, target n = 450)" in out.out
    assert re.search(r"cartl-k3 .*<- chosen", out.out)
    assert "chosen: cartl-k3: validation robust 0.290" in out.out
    assert "FDM compare: cartl-k3: clean 0.960 robust 0.240" in out.err
    # Its first line comes before any work, and says what the wait will be.
    assert out.err.startswith("demo: two adversarial pre-trainings")

    plot = tmp_path / "demo.png"
    assert main(["demo", "--json", "--device", "cpu", "--plot", str(plot)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["transfer"] for r in data["rows"]] == [None, "standard", None, "compare"]
    assert data["rows"][-1]["candidate"] == data["compare"]["chosen"]["name"] == "cartl-k3"
    assert [c["name"] for c in data["compare"]["candidates"]] == ["standard-k3", "cartl-k3"]
    assert plot.stat().st_size > 0


def test_audit_says_its_cost_first_then_moves_inside_each_attack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The estimate is on stderr before the first attack; each attack's bar shows k/n, images
    done and the audit's ETA, never tqdm's own rate (which read 53687091 img/s)."""
    from cartl_core import create_model, save_checkpoint

    data = _npz(tmp_path / "d.npz")
    model = tmp_path / "m.safetensors"
    save_checkpoint(create_model("small-cnn", 4, in_channels=1, input_size=8), model)
    args = ["audit", "--checkpoint", str(model), "--data", str(data), "--eps", "0.05",
            "--attacks", "fast", "--apgd-steps", "5", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert re.search(r"audit estimate: at most [\d.]+ (s|min|h) on cpu \(", err)
    first_bar = err.index("audit 1/")
    assert err.index("audit estimate") < first_bar
    assert re.search(r"audit 1/\d+ apgd-ce @ 0\.05: +\d+%", err)
    assert "images; audit ends in ~" in err
    assert "img/s" not in err


def test_training_bars_show_the_runs_eta_not_tqdms_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _npz(tmp_path / "d.npz")
    args = ["pretrain", "--data", str(data), "--arch", "small-cnn", "--epochs", "2", "--steps",
            "1", "--batch-size", "32", "--augment", "none", "--no-audit", "--device", "cpu",
            "--trace-samples", "0", "--out", str(tmp_path / "m.safetensors")]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert re.search(r"pretrain epoch 1/2: +\d+%.*batches.*ends in=~\d+ s", err)
    assert "batch/s" not in err


def _subcommands(parser: argparse.ArgumentParser, path: str = "cartl") -> Iterator[Any]:
    """``(name, parser)`` of every command under ``parser``, nested ones (``jobs list``) too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{path} {name}", sub
                yield from _subcommands(sub, f"{path} {name}")


def test_every_command_and_option_says_what_it_is() -> None:
    from app.cli import build_parser as cartl_parser

    commands = dict(_subcommands(cartl_parser()))
    # The library's commands and the client's (the server's own are cartl serve, db, keys).
    ours = [c for c in commands if c.split()[1] not in ("serve", "db", "keys")]
    assert {"cartl inspect", "cartl models", "cartl jobs list", "cartl jobs get"} <= set(ours)
    for command in ours:
        sub = commands[command]
        assert sub.description, command
        for action in sub._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{command} {action.dest}"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main as cartl_main
    from cartl_core import __version__

    for run_main in (main, cartl_main):
        with pytest.raises(SystemExit) as info:
            run_main(["--version"])
        assert info.value.code == 0
        assert capsys.readouterr().out == f"cartl {__version__}\n"


def test_each_commands_help_shows_only_its_own_defaults() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    pretrain = {a.dest: str(a.help) for a in sub.choices["pretrain"]._actions}
    schedule = ScheduleConfig()
    assert pretrain["epochs"].endswith(f"[default: {schedule.epochs}]")
    assert pretrain["lr"].endswith(f"[default: {schedule.lr}]")
    assert pretrain["weight_decay"].endswith(f"[default: {schedule.weight_decay}]")
    assert "lwf" not in _run("pretrain", "--help").stdout.lower()
    # A transfer may be LwF, whose schedule is its own; its k follows the source.
    transfer = {a.dest: str(a.help) for a in sub.choices["transfer"]._actions}
    assert "lwf: 52" in transfer["epochs"]
    assert "pre-trained for, from its header; else 4]" in transfer["k"]


def test_transfer_k_defaults_to_the_k_the_source_was_pretrained_for(tmp_path: Path) -> None:
    from cartl_core import create_model, read_description, save_checkpoint
    from cartl_core.compare import pretrained_k
    from cartl_core.kinds.transfer import source_k

    model = create_model("small-cnn", 4, in_channels=1, input_size=8)
    path = tmp_path / "m.safetensors"
    for training, k in (
        ({"kind": "pretrain", "k": 3}, 3),
        ({"kind": "transfer", "k": 3}, TransferConfig().k),  # a fine-tuning's k is not a source's
        ({}, TransferConfig().k),
    ):
        save_checkpoint(model, path, training=training)
        assert source_k(pretrained_k(read_description(path))) == k, training


def test_a_closed_stdout_ends_the_command_quietly(tmp_path: Path) -> None:
    """``cartl inspect X | head``: the reader gone, no traceback and no error line."""
    from cartl_core import create_model, save_checkpoint

    path = tmp_path / "m.safetensors"
    save_checkpoint(create_model("small-cnn", 4, in_channels=1, input_size=8), path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "inspect", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()  # before it prints anything: its first write meets a closed pipe
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert err == ""


def test_models_builds_no_weights(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cartl models`` counts the blocks of models on the meta device: no example's weights are
    allocated or initialised (46M of them for WRN-34-10)."""
    from cartl_core import models

    devices = []
    build = models.create_model

    def create_model(*args: Any, **kwargs: Any) -> Any:
        model = build(*args, **kwargs)
        devices.append({p.device.type for p in model.parameters()})
        return model

    monkeypatch.setattr(models, "create_model", create_model)
    assert main(["models"]) == 0
    assert re.search(r"^wrn-34-10 +T = 17$", capsys.readouterr().out, re.M)
    assert devices
    assert all(d == {"meta"} for d in devices)
