"""Checkpoints: self-describing safetensors round trip, safe loading of plain weights."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cartl_core import (
    CheckpointError,
    UnsafeCheckpointError,
    create_model,
    load_model,
    read_description,
    save_checkpoint,
)


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, shape: tuple[int, ...]) -> bool:
    x = torch.rand(2, *shape)
    a.eval()
    b.eval()
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_round_trip_rebuilds_from_file_alone(tmp_path: Path) -> None:
    model = create_model("resnet18-cifar", 10, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    model.set_residual_scale(0.5, [7, 8])
    path = tmp_path / "m.safetensors"
    save_checkpoint(
        model,
        path,
        class_names=tuple("abcdefghij"),
        training={"method": "cartl"},
        metrics={"clean_accuracy": 0.9},
    )
    loaded = load_model(path)
    assert _same_outputs(model, loaded, (3, 32, 32))
    d = read_description(path)
    assert d is not None
    assert d["num_blocks"] == 9
    assert d["model"]["residual_scaled_blocks"] == [7, 8]
    assert d["class_names"][0] == "a"
    assert d["training"]["method"] == "cartl"
    assert d["model"]["mean"] == pytest.approx([0.5, 0.4, 0.3])


def test_plain_state_dict_with_prefixes_and_inferred_classes(tmp_path: Path) -> None:
    model = create_model("small-cnn", 7)
    sd = {
        f"module._orig_mod.{k}": v
        for k, v in model.state_dict().items()
        if not k.startswith("normalize")
    }
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    loaded = load_model(path, arch="small-cnn")
    assert loaded.spec.num_classes == 7
    assert _same_outputs(model, loaded, (3, 32, 32))


def test_torchvision_state_dict_with_torchvision_names(tmp_path: Path) -> None:
    import torchvision

    net = torchvision.models.resnet18(num_classes=4)
    path = tmp_path / "tv.pth"
    torch.save(net.state_dict(), path)
    loaded = load_model(path, arch="torchvision:resnet18", mean=(0.0,), std=(1.0,))
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), loaded(x), atol=1e-6)


def test_plain_safetensors_needs_arch(tmp_path: Path) -> None:
    model = create_model("small-cnn", 3)
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="give the architecture"):
        load_model(path)
    assert _same_outputs(model, load_model(path, arch="small-cnn"), (3, 16, 16))


@pytest.mark.parametrize("raw", [False, True])
def test_malicious_pickle_refused_and_nothing_runs(tmp_path: Path, raw: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if raw:
        path.write_bytes(pickle.dumps({"w": _Payload(marker)}))
    else:
        torch.save({"w": _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="would run code"):
        load_model(path, arch="small-cnn")
    assert not marker.exists()


def test_mismatch_lists_offending_keys(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pt"
    torch.save(create_model("small-cnn", 3).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_model(path, arch="resnet18-cifar", num_classes=3)
    msg = str(err.value)
    assert "missing:" in msg
    assert "unexpected:" in msg
    assert "\n" not in msg
    # Without num_classes the classifier cannot be found: the same listing, not a guess.
    with pytest.raises(
        CheckpointError, match=r"does not fit resnet18-cifar: missing: .*unexpected:"
    ):
        load_model(path, arch="resnet18-cifar")


def test_shape_mismatch_named(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(create_model("small-cnn", 3).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"wrong shape: blocks\.4\.fc\.weight"):
        load_model(path, arch="small-cnn", num_classes=5)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken"])
def test_garbage_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_model(path, arch="small-cnn")


def test_missing_file() -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_model("/nonexistent/model.safetensors")


def test_header_is_json(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(create_model("small-cnn", 3), path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["cartl"])["format"] == "cartl-checkpoint/1"
