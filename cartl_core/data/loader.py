"""Batches and augmentation on the compute device: no per-sample Python in the hot loop.

A small dataset lives on the device as one tensor (uint8 where it came as uint8: 4x less memory);
each batch is an ``index_select``, a conversion to float, and one batched affine warp that does the
random crop, flip and rotation of every sample at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cartl_core.data._types import Split
from cartl_core.errors import ConfigError, DataError

__all__ = [
    "Augmentation",
    "DeviceLoader",
    "Features",
    "augment",
    "augmented_copy",
    "dataset_mean_std",
]

_PRESETS = ("auto", "none", "crop", "crop-flip", "paper")


@dataclass(frozen=True)
class Augmentation:
    """Random translation by up to ``crop_padding`` pixels (a crop of the zero-padded image),
    horizontal flip with probability 0.5, rotation uniform in +-``rotation_degrees``."""

    crop_padding: int = 0
    flip: bool = False
    rotation_degrees: float = 0.0

    @classmethod
    def none(cls) -> Augmentation:
        return cls()

    @classmethod
    def crop_flip(cls, padding: int = 4) -> Augmentation:
        return cls(crop_padding=padding, flip=True)

    @classmethod
    def paper_cifar(cls) -> Augmentation:
        """The CARTL paper's CIFAR augmentation: crop 32 with padding 4, flip, rotate 15 deg."""
        return cls(crop_padding=4, flip=True, rotation_degrees=15.0)

    @classmethod
    def auto(cls, input_shape: tuple[int, int, int]) -> Augmentation:
        """What the data can take: the paper's augmentation on 3-channel images of 32 px and up
        (natural photos, where it was made), a crop alone on other images of 16 px and up, and
        nothing on smaller ones.

        Padding scales with the image (size / 8: 4 px at 32, 2 px at 16) because 4 px on a small
        image moves it half off the canvas; flips and rotations are left out where a mirrored or
        turned image may be another class (digits, letters, small or non-photographic inputs).
        Below 16 px even a 1 px shift is an eighth of the image: on 8x8 digits it cost transfers
        from a robust source nearly all their robustness (``bench/transfer_ablation.py``, the
        "release" rows: robust accuracy 0.12-0.15 without it, 0.00-0.02 with it).
        """
        c, h, w = input_shape
        if min(h, w) < 16:
            return cls.none()
        padding = round(min(h, w) / 8)
        if c == 3 and min(h, w) >= 32:
            return cls(crop_padding=padding, flip=True, rotation_degrees=15.0)
        return cls(crop_padding=padding)

    @classmethod
    def from_name(cls, name: str, input_shape: tuple[int, int, int] | None = None) -> Augmentation:
        """A preset by name; ``auto`` and ``crop`` (size/8 px, at least 1) need the data's
        (C, H, W)."""
        if name in ("auto", "crop"):
            if input_shape is None:
                raise ConfigError(f"augmentation {name!r} needs the data's input shape")
            if name == "auto":
                return cls.auto(input_shape)
            return cls(crop_padding=max(1, round(min(input_shape[1:]) / 8)))
        if name == "none":
            return cls.none()
        if name == "crop-flip":
            return cls.crop_flip()
        if name == "paper":
            return cls.paper_cifar()
        raise ConfigError(
            f"unknown augmentation {name!r}; choose one of {', '.join(_PRESETS)}",
            field="augmentation",
        )

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``crop 1 px, flip, rotate 15 deg``."""
        parts = [f"crop {self.crop_padding} px"] if self.crop_padding else []
        if self.flip:
            parts.append("flip")
        if self.rotation_degrees:
            parts.append(f"rotate {self.rotation_degrees:g} deg")
        return ", ".join(parts) or "none"

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.rotation_degrees > 0


def augment(
    x: torch.Tensor, aug: Augmentation, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Augment a float batch (N, C, H, W) in [0, 1] with one affine warp per sample."""
    if not aug.enabled:
        return x
    n, _, h, w = x.shape
    dev = x.device
    theta = torch.zeros(n, 2, 3, device=dev)
    angle = torch.zeros(n, device=dev)
    if aug.rotation_degrees > 0:
        u = torch.rand(n, device=dev, generator=generator)
        angle = (2 * u - 1) * math.radians(aug.rotation_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx = torch.ones(n, device=dev)
    if aug.flip:
        flip = torch.rand(n, device=dev, generator=generator) < 0.5
        sx = torch.where(flip, -sx, sx)
    # Normalised coordinates span 2 units over W (or H) pixels, so a shift of p pixels is 2p/W.
    tx = torch.zeros(n, device=dev)
    ty = torch.zeros(n, device=dev)
    if aug.crop_padding > 0:
        p = aug.crop_padding
        shifts = torch.randint(-p, p + 1, (2, n), device=dev, generator=generator).float()
        tx, ty = shifts[0] * 2 / w, shifts[1] * 2 / h
    theta[:, 0, 0] = cos * sx
    theta[:, 0, 1] = -sin * (h / w)
    theta[:, 0, 2] = tx
    theta[:, 1, 0] = sin * sx * (w / h)
    theta[:, 1, 1] = cos
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Nearest sampling keeps shifts and flips exact pixel copies; rotation needs interpolation.
    mode = "bilinear" if aug.rotation_degrees > 0 else "nearest"
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


@torch.no_grad()
def augmented_copy(
    split: Split, augmentation: Augmentation, *, seed: int, batch_size: int = 1024
) -> Split:
    """One augmented pass over ``split``, drawn from ``seed`` (the same images for the same seed),
    on the split's device. uint8 images come back as uint8, rounded, as 8-bit images augmented
    by an image library would; ``split`` itself comes back when the augmentation does nothing."""
    if not augmentation.enabled:
        return split
    generator = torch.Generator(device=split.images.device).manual_seed(seed)
    chunks = []
    for start in range(0, len(split), batch_size):
        x = split.images[start : start + batch_size]
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x
        out = augment(x, augmentation, generator)
        if split.images.dtype == torch.uint8:
            out = out.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        chunks.append(out)
    return Split(torch.cat(chunks), split.labels)


@dataclass(frozen=True)
class Features:
    """Rows that are not images, to batch like a :class:`Split`: a model part's outputs for each
    image (any shape, any dtype) and the images' labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise DataError(
                f"{self.images.shape[0]} rows but labels have shape {tuple(self.labels.shape)}"
            )


class DeviceLoader:
    """Shuffled batches of a :class:`Split` held on ``device``; epoch ``e`` of seed ``s`` always
    yields the same order, so a resumed run sees the data it would have seen."""

    def __init__(
        self,
        split: Split | Features,
        batch_size: int,
        *,
        device: torch.device | str,
        shuffle: bool,
        augmentation: Augmentation | None = None,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1; got {batch_size}", field="batch_size")
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augmentation = augmentation or Augmentation.none()
        self.drop_last = drop_last
        self.seed = seed
        self.channels_last = channels_last
        self.generator = torch.Generator(device=self.device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def __len__(self) -> int:
        n = int(self.labels.shape[0])
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = int(self.labels.shape[0])
        if self.shuffle:
            order = torch.randperm(n, device=self.device, generator=self.generator)
        else:
            order = torch.arange(n, device=self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            x = augment(x, self.augmentation, self.generator)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, idx)


@torch.no_grad()
def dataset_mean_std(
    split: Split, chunk: int = 8192
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the images in [0, 1], accumulated in float64 chunks."""
    c = split.images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for start in range(0, len(split), chunk):
        x = split.images[start : start + chunk].to(torch.float64)
        if split.images.dtype == torch.uint8:
            x = x / 255.0
        total += x.sum(dim=(0, 2, 3)).cpu()
        total_sq += x.square().sum(dim=(0, 2, 3)).cpu()
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
