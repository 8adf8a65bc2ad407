"""``cartl compare``: the --json contract, the files it writes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.cli.library import main
from cartl_core import create_model, read_description, save_checkpoint

from .test_cli import _npz, _run

ROW_KEYS = {"name", "method", "k", "norm_beta", "bn", "val_clean", "val_robust", "test_clean",
            "test_robust", "seconds", "path"}  # fmt: skip


def _source(path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("small-cnn", 4, in_channels=1, input_size=8, options={"fc_width": 16})
    save_checkpoint(model, path, training={"kind": "pretrain", "k": 2})
    return path


def test_json_is_one_object_and_every_candidate_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, data, out = _source(tmp_path / "src.safetensors"), _npz(tmp_path / "t.npz"), tmp_path
    args = ["compare", "--source", str(source), "--data", str(data), "--eps", "1/20",
            "--methods", "standard,cartl", "--max-candidates", "2", "--k", "2", "--epochs", "1",
            "--batch-size", "32",
            "--augment", "none", "--max-clean-drop", "0.1", "--no-audit", "--json",
            "--device", "cpu", "--out-dir", str(out / "runs")]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # exactly one JSON object, nothing else on stdout
    assert set(result) >= {"chosen", "candidates", "estimate", "audit"}
    assert result["audit"] is None  # --no-audit
    assert "estimate:" in captured.err
    rows = result["candidates"]
    assert [r["name"] for r in rows] == ["standard-k2-source-stats", "cartl-k2-b0.4-source-stats"]
    for row in rows:
        assert set(row) >= ROW_KEYS
        assert row["path"] == str(out / "runs" / f"{row['name']}.safetensors")
        assert Path(row["path"]).is_file()
    chosen = result["chosen"]
    assert chosen["name"] in [r["name"] for r in rows]
    assert chosen["path"] == str(out / "runs" / "chosen.safetensors")
    description = read_description(chosen["path"])
    assert description is not None
    assert description["training"]["compare_result"]["chosen"]["name"] == chosen["name"]
    assert result["estimate"]["candidates"] == 2
    assert result["estimate"]["train_seconds"] > 0


def test_bad_input_is_a_one_line_error(tmp_path: Path) -> None:
    source, data = _source(tmp_path / "src.safetensors"), _npz(tmp_path / "t.npz")
    base = ["compare", "--source", str(source), "--data", str(data), "--eps", "0.1",
            "--out-dir", str(tmp_path / "o"), "--device", "cpu"]  # fmt: skip
    result = _run(*base, "--k", "2,9")
    assert result.returncode == 2
    err = result.stderr.strip()
    assert "k=9 is out of range" in err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before anything trained

    result = _run(*base, "--methods", "standard,magic")
    assert result.returncode == 2
    assert "'magic' is not one of standard, neft, cartl, lwf" in result.stderr
