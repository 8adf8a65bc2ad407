"""Small real upload files: checkpoints made with cartl_core, datasets made with numpy."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cartl_core import create_model, save_checkpoint
from tests.core.data_builders import imagefolder_files, write_tar, write_zip


def small_model(classes: int = 10, channels: int = 1) -> Any:
    torch.manual_seed(0)
    return create_model("small-cnn", classes, in_channels=channels, input_size=8)


def safetensors_checkpoint(tmp: Path, classes: int = 10, channels: int = 1) -> bytes:
    path = tmp / f"model-{classes}-{channels}.safetensors"
    save_checkpoint(small_model(classes, channels), path)
    return path.read_bytes()


def plain_state_dict(classes: int = 10, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    torch.save(small_model(classes, channels).state_dict(), buf)
    return buf.getvalue()


class _RunsCode:
    """A pickle payload that would run a shell command when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": _RunsCode(marker)})


def npz(
    classes: int = 4,
    channels: int = 1,
    size: int = 8,
    n_train: int = 32,
    n_test: int = 16,
    class_names: list[str] | None = None,
    label_offset: int = 0,
) -> bytes:
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {
        "x_train": rng.integers(0, 256, (n_train, size, size, channels), dtype=np.uint8),
        "y_train": np.arange(n_train) % classes + label_offset,
        "x_test": rng.integers(0, 256, (n_test, size, size, channels), dtype=np.uint8),
        "y_test": np.arange(n_test) % classes + label_offset,
    }
    if class_names is not None:
        arrays["class_names"] = np.array(class_names)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def imagefolder_zip(tmp: Path, extra: dict[str, bytes] | None = None) -> bytes:
    files = imagefolder_files() | (extra or {})
    return write_zip(tmp / "folder.zip", files).read_bytes()


def imagefolder_targz(tmp: Path) -> bytes:
    return write_tar(tmp / "folder.tar.gz", imagefolder_files()).read_bytes()


def tar_with_symlink(tmp: Path) -> bytes:
    path = tmp / "linked.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in imagefolder_files().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("train/cat/passwd.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    return path.read_bytes()
