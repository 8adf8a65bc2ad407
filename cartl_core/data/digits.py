"""scikit-learn's bundled handwritten digits, split into a source and a target task.

A real dataset that ships inside scikit-learn (1,797 8x8 grey images), so the paper's experiment
can be reproduced in about a minute on a CPU without downloading anything: adversarially train on
some digit classes, transfer to the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from cartl_core.data._types import Dataset, Split
from cartl_core.errors import DataError

__all__ = ["digits_task", "save_npz"]


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits demo needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)
    return images, torch.from_numpy(bunch.target).long()


def digits_task(
    classes: Sequence[int],
    *,
    test_fraction: float = 0.5,
    train_limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """The digits of ``classes`` relabelled 0..len-1, split per class into train and test."""
    if len(set(classes)) < 2 or not set(classes) <= set(range(10)):
        raise DataError(f"pick at least two distinct digits in 0..9; got {list(classes)}")
    images, labels = _load_digits()
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in classes:
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = round(idx.numel() * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train = torch.cat(train_idx)
    train = train[torch.randperm(train.numel(), generator=g)]
    if train_limit is not None:
        train = train[:train_limit]
    test = torch.cat(test_idx)
    remap = torch.full((10,), -1, dtype=torch.long)
    remap[torch.tensor(list(classes))] = torch.arange(len(classes))
    return Dataset(
        Split(images[train], remap[labels[train]]),
        Split(images[test], remap[labels[test]]),
        tuple(str(c) for c in classes),
        "sklearn-digits",
    )


def save_npz(data: Dataset, path: str | Path) -> Path:
    """Write a dataset in the ``.npz`` layout ``load_dataset`` reads (float NCHW in [0, 1])."""
    import numpy as np

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        x_train=data.train.float_images().numpy(),
        y_train=data.train.labels.numpy(),
        x_test=data.test.float_images().numpy(),
        y_test=data.test.labels.numpy(),
        class_names=np.array(data.class_names),
    )
    return out
