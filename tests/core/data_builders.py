"""Builders for small dataset files in every supported format (no downloads)."""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def png(size: tuple[int, int] = (8, 8), mode: str = "RGB", value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color=value if mode == "L" else (value, 255 - value, 7)).save(buf, "PNG")
    return buf.getvalue()


def imagefolder_files(
    top: str = "", classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3
) -> dict[str, bytes]:
    files = {}
    for split in ("train", "test"):
        for i, c in enumerate(classes):
            for j in range(per_class):
                files[f"{top}{split}/{c}/{j}.png"] = png(value=40 * i + j)
    return files


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def write_tar(path: Path, files: dict[str, bytes], compress: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if compress else "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def cifar_tarball(path: Path, hundred: bool = False, n: int = 6) -> Path:
    rng = np.random.default_rng(0)

    def batch(k: int) -> bytes:
        labels = [int(v) for v in rng.integers(0, 3, k)]
        labels[:3] = [0, 1, 2]
        key = b"fine_labels" if hundred else b"labels"
        return pickle.dumps(
            {
                b"data": rng.integers(0, 256, (k, 3072), dtype=np.uint8),
                key: labels,
                b"batch_label": b"x",
            }
        )

    if hundred:
        meta = pickle.dumps({b"fine_label_names": [b"apple", b"bee", b"cup"]})
        files = {
            "cifar-100-python/train": batch(n),
            "cifar-100-python/test": batch(n),
            "cifar-100-python/meta": meta,
        }
    else:
        meta = pickle.dumps({b"label_names": [b"plane", b"car", b"bird"]})
        files = {f"cifar-10-batches-py/data_batch_{i}": batch(n) for i in range(1, 6)}
        files |= {
            "cifar-10-batches-py/test_batch": batch(n),
            "cifar-10-batches-py/batches.meta": meta,
        }
    return write_tar(path, files)


def svhn_mat(n: int = 5) -> tuple[bytes, bytes]:
    from scipy.io import savemat

    out = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [3], [10]][:n], dtype=np.uint8)
        buf = io.BytesIO()
        savemat(buf, {"X": x, "y": y})
        out.append(buf.getvalue())
    return out[0], out[1]
