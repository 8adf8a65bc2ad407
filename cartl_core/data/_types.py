"""In-memory datasets: image tensors plus labels, small enough to live on the compute device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from cartl_core.errors import ConfigError, DataError

#: How images are resized: bilinear and bicubic (antialiased when they shrink, as an image
#: library does), nearest (pixels copied, for masks and pixel art) or area (each output pixel the
#: mean of the input pixels it covers: the sharpest way to shrink).
ResizeMethod = Literal["bilinear", "bicubic", "nearest", "area"]
RESIZE_METHODS: tuple[ResizeMethod, ...] = get_args(ResizeMethod)
#: The smallest image side a dataset may have, after any resize.
MIN_SIDE = 8
#: The largest side a resize may give: twice the largest input of the published ImageNet models
#: (512 px); a uint8 RGB image of this side is 3 MB, so 1,000 of them are already 3 GB.
MAX_SIDE = 1024


@dataclass(frozen=True)
class Resize:
    """Make every image ``size`` x ``size`` with ``method`` (see :data:`ResizeMethod`)."""

    size: int
    method: ResizeMethod = "bilinear"

    def __post_init__(self) -> None:
        size = self.size
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIDE <= size <= MAX_SIDE:
            raise ConfigError(
                f"resize must be an image side from {MIN_SIDE} to {MAX_SIDE} pixels; got {size!r}",
                field="resize",
            )
        if self.method not in RESIZE_METHODS:
            raise ConfigError(
                f"resize_method must be one of {', '.join(RESIZE_METHODS)}; got {self.method!r}",
                field="resize_method",
            )

    @classmethod
    def of(cls, value: int | Resize | None) -> Resize | None:
        """``value`` as a Resize: a side alone is resized bilinearly."""
        return value if value is None or isinstance(value, Resize) else cls(value)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "method": self.method}

    def describe(self) -> str:
        """``32x32 (bilinear)``, for messages and reports."""
        return f"{self.size}x{self.size} ({self.method})"


def resample(x: torch.Tensor, size: int, method: str) -> torch.Tensor:
    """A float batch (N, C, H, W) resized to ``size`` x ``size``; differentiable, so a model can
    do it to its inputs and attacks still see the pixels they were given.

    Bilinear and bicubic are antialiased only when they shrink (enlarging has nothing to
    alias, and PyTorch's antialiased kernels would then cost more for the same result); nearest
    is PyTorch's ``nearest-exact``, the pixel centres an image library picks.
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if method == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest-exact")
    if method == "area":
        return F.interpolate(x, size=(size, size), mode="area")
    shrinks = size < max(h, w)
    return F.interpolate(x, size=(size, size), mode=method, align_corners=False, antialias=shrinks)


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
