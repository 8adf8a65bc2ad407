"""The checkpoint readers the upload probe uses: guessing plain weights' input channels through
the safe loaders, and the description a checkpoint header carries."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cartl_core import create_model, read_description, save_checkpoint
from cartl_core.checkpoints import FORMAT, PLAIN_FORMAT, describe_model, guess_in_channels


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def _grey_weights() -> dict[str, torch.Tensor]:
    return create_model("small-cnn", 3, in_channels=1, input_size=8).state_dict()


def test_guess_reads_plain_torch_weights(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(_grey_weights(), path)
    assert guess_in_channels(path) == 1


def test_guess_reads_nested_and_prefixed_state_dicts(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    sd = {f"module.{k}": v for k, v in _grey_weights().items()}
    torch.save({"state_dict": sd, "epoch": 3}, path)
    assert guess_in_channels(path) == 1


def test_guess_reads_plain_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"conv.weight": torch.zeros(8, 1, 3, 3), "fc.weight": torch.zeros(3, 8)}, str(path))
    assert read_description(path) is None
    assert guess_in_channels(path) == 1


@pytest.mark.parametrize("arch", ["small-cnn", "resnet18-cifar", "wrn-16-4"])
@pytest.mark.parametrize("channels", [1, 3])
def test_guess_reads_our_models_plain_safetensors(tmp_path: Path, channels: int, arch: str) -> None:
    # Safetensors sorts keys by name (blocks.* < normalize.* < stem.*): the stem is still found.
    path = tmp_path / "w.safetensors"
    model = create_model(arch, 3, in_channels=channels, input_size=32)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    assert guess_in_channels(path) == channels


def test_guess_refuses_pickled_code_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": _Payload(marker)}))
    assert guess_in_channels(path) is None
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a checkpoint at all",
        b"\x10\x00\x00\x00\x00\x00\x00\x00{broken",  # a safetensors head, then garbage
    ],
)
def test_guess_is_none_for_unreadable_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    assert guess_in_channels(path) is None


def test_guess_is_none_without_a_4d_tensor(tmp_path: Path) -> None:
    path = tmp_path / "linear.pt"
    torch.save({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, path)
    assert guess_in_channels(path) is None
    assert guess_in_channels(tmp_path / "missing.pt") is None


def test_describe_model_is_the_header_less_training(tmp_path: Path) -> None:
    model = create_model("small-cnn", 3, in_channels=1, input_size=8)
    path = tmp_path / "m.safetensors"
    header = save_checkpoint(model, path, class_names=("a", "b", "c"), training={"x": 1})
    assert read_description(path) == header
    base = describe_model(model, class_names=("a", "b", "c"))
    assert base["format"] == FORMAT
    assert header == {**base, "training": {"x": 1}, "metrics": {}}

    plain = describe_model(model, format=PLAIN_FORMAT)
    assert list(plain) == ["format", "model", "num_blocks", "input_shape", "classes"]
    assert plain["format"] == "plain-state-dict"
    assert plain["input_shape"] == [1, 8, 8]
    # Plain weights name no classes: their count, not a list of numbers (1,000 for ImageNet).
    assert plain["classes"] == "3 classes, numbered 0-2 (the weights name none)"
    assert plain["num_blocks"] == model.num_blocks
