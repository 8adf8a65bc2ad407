"""In-memory datasets: image tensors plus labels, small enough to live on the compute device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cartl_core.errors import DataError


@dataclass(frozen=True)
class Split:
    """One split: ``images`` (N, C, H, W), uint8 0..255 or float32 in [0, 1]; ``labels`` int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(f"images must be (N, C, H, W); got shape {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise DataError(
                f"{self.images.shape[0]} images but labels have shape {tuple(self.labels.shape)}"
            )
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise DataError(f"images must be uint8 or float32; got {self.images.dtype}")
        if self.labels.dtype != torch.int64:
            raise DataError(f"labels must be int64; got {self.labels.dtype}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])

    def float_images(self) -> torch.Tensor:
        """Images as float32 in [0, 1], whatever the stored dtype."""
        if self.images.dtype == torch.uint8:
            return self.images.float().div_(255.0)
        return self.images


@dataclass(frozen=True)
class Dataset:
    """A train and a test split sharing one label space ``0 .. num_classes - 1``."""

    train: Split
    test: Split
    class_names: tuple[str, ...]
    format: str

    def __post_init__(self) -> None:
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            raise DataError(
                f"train images are {tuple(self.train.images.shape[1:])} but test images are "
                f"{tuple(self.test.images.shape[1:])}; both splits must share one shape"
            )
        n = len(self.class_names)
        for name, split in (("train", self.train), ("test", self.test)):
            if len(split) == 0:
                raise DataError(f"the {name} split is empty")
            lo, hi = int(split.labels.min()), int(split.labels.max())
            if lo < 0 or hi >= n:
                raise DataError(
                    f"{name} labels must lie in 0..{n - 1} for {n} classes; found {lo}..{hi}"
                )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)
