"""``--report``: the CLI writes the same HTML page the service serves."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from app.cli.library import build_parser, main
from cartl_core import create_model, save_checkpoint


def _npz(path: Path) -> Path:
    rng = np.random.default_rng(1)
    x = (rng.uniform(0, 1, (24, 8, 8, 1)) * 255).astype(np.uint8)
    y = np.arange(24) % 3
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return path


def test_audit_report_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _npz(tmp_path / "d.npz")
    checkpoint = tmp_path / "m.safetensors"
    save_checkpoint(create_model("small-cnn", 3, in_channels=1, input_size=8), checkpoint)
    report = tmp_path / "out" / "report.html"
    args = ["audit", "--checkpoint", str(checkpoint), "--data", str(data), "--eps", "4/255,8/255"]
    args += ["--attacks", "fast", "--apgd-steps", "2", "--steps", "1", "--check-samples", "8"]
    args += ["--square-queries", "10"]
    plot = tmp_path / "out" / "audit.png"
    args += ["--limit", "8", "--quiet", "--device", "cpu", "--report", str(report)]
    assert main([*args, "--plot", str(plot)]) == 0
    assert f"report {report}" in capsys.readouterr().err
    assert plot.read_bytes().startswith(b"\x89PNG")
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page
    assert "cartl audit: m.safetensors" in page
    assert hashlib.sha256(data.read_bytes()).hexdigest() in page
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() in page


@pytest.mark.parametrize("command", ["pretrain", "transfer", "audit"])
def test_training_commands_take_report_too(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    assert "--report PATH" in capsys.readouterr().out


def test_pretrain_plots_its_curves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--plot`` draws what the job returned, the history records (the audit's dict: above)."""
    data, plot = _npz(tmp_path / "d.npz"), tmp_path / "out" / "pretrain.png"
    args = ["pretrain", "--data", str(data), "--arch", "small-cnn", "--out",
            str(tmp_path / "m.safetensors"), "--epochs", "2", "--batch-size", "8", "--steps", "1",
            "--augment", "none", "--no-audit", "--quiet", "--device", "cpu",
            "--plot", str(plot)]  # fmt: skip
    assert main(args) == 0
    assert f"plot {plot}" in capsys.readouterr().err
    assert plot.read_bytes().startswith(b"\x89PNG")
