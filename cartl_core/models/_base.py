"""The one model interface every architecture answers to.

A model is ``resample -> normalize -> stem -> blocks[0] -> ... -> blocks[T-1]``. The stem belongs
to no block and is always frozen; ``k`` counts the LAST blocks, which are the ones fine-tuned. The
last block is always a :class:`Head` so the classifier can be reset and penultimate features read
uniformly. Input normalisation lives inside the model so attacks work in [0, 1] pixel space.

A model fed images of another size than its stem was built for (an ImageNet source at 224 px
fine-tuned on 32-px images) resamples them first, inside the model, as robust-transfer studies
upsample CIFAR for ImageNet models: attacks then perturb the images as they are, and a model
describes itself by the size it is fed (:meth:`BlockModel.set_input_size`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from cartl_core.data._types import RESIZE_METHODS, resample
from cartl_core.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's structure (its weights aside)."""

    arch: str
    num_classes: int
    in_channels: int = 3
    #: The side of the images the model is fed.
    input_size: int = 32
    #: The side its stem was built for, where it differs (inputs are resampled to it, by
    #: ``resample``); None: the stem takes the inputs as they come.
    stem_size: int | None = None
    resample: str = "bilinear"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    # Blocks whose residual output is scaled (NEFT's 0.5 * shortcut + 0.5 * residual).
    residual_scale: float = 1.0
    residual_scaled_blocks: tuple[int, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("mean", "std", "residual_scaled_blocks"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """A spec written by any version: fields it lacks take their defaults (a checkpoint
        written before ``stem_size`` existed takes its inputs as they come)."""
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("mean", "std", "residual_scaled_blocks"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    @property
    def built_size(self) -> int:
        """The side the stem takes: what an architecture's builder must build for."""
        return self.input_size if self.stem_size is None else self.stem_size

    @property
    def resample_cost(self) -> float:
        """How many times the pixels (and so, for a convolutional network, the FLOPs) of a
        forward pass at ``input_size`` the model computes: (stem side / input side)^2."""
        return (self.built_size / self.input_size) ** 2

    def at_stem(self) -> ModelSpec:
        """This spec as the builders see it: fed at the size its stem was built for."""
        return _replace_spec(self, input_size=self.built_size, stem_size=None)

    def describe_resample(self) -> dict[str, Any] | None:
        """What the model does to its inputs' size, for estimates and reports; None if nothing."""
        if self.stem_size is None:
            return None
        return {
            "input_size": self.input_size,
            "stem_size": self.stem_size,
            "method": self.resample,
            "cost_factor": self.resample_cost,
        }


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers so they travel with the weights."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
        super().__init__()
        m = _per_channel(mean, channels, "mean")
        s = _per_channel(std, channels, "std")
        if any(v <= 0 for v in s):
            raise ConfigError(f"std must be > 0 in every channel; got {s}")
        self.register_buffer("mean", torch.tensor(m).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(s).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _per_channel(values: Sequence[float], channels: int, name: str) -> list[float]:
    vals = [float(v) for v in values]
    if len(vals) == 1:
        return vals * channels
    if len(vals) != channels:
        raise ConfigError(f"{name} has {len(vals)} values for {channels} input channels")
    return vals


class Resample(nn.Module):
    """Inputs resized to the stem's side with a named method (see
    :func:`cartl_core.data.resample`); differentiable, and without weights, so a checkpoint's
    keys are the same with or without it."""

    def __init__(self, size: int, method: str) -> None:
        super().__init__()
        if method not in RESIZE_METHODS:
            raise ConfigError(
                f"resample method must be one of {', '.join(RESIZE_METHODS)}; got {method!r}",
                field="resize_method",
            )
        self.size = size
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resample(x, self.size, self.method)

    def extra_repr(self) -> str:
        return f"size={self.size}, method={self.method}"


class Head(nn.Module):
    """The classifier block: optional pooling (``pre``) then the final linear layer ``fc``."""

    def __init__(self, fc: nn.Linear, pre: nn.Module | None = None) -> None:
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.fc = fc

    def penultimate(self, h: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pre(h), 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(self.penultimate(h))
        return logits


class BlockModel(nn.Module):
    """A classifier split into a stem and an ordered list of blocks."""

    # False for architectures whose residual sums cannot be rescaled (NEFT's 0.5/0.5).
    residual_scalable: bool = True
    # Names used by the architecture's original implementation -> ours (torchvision models).
    foreign_keys: dict[str, str]
    # What load_model recognised in published weights (their layout and normalisation), which
    # a description then carries; None for models built here.
    origin: dict[str, Any] | None = None

    def __init__(
        self, spec: ModelSpec, stem: nn.Module, blocks: Sequence[nn.Module], head: Head
    ) -> None:
        super().__init__()
        self.spec = spec
        self.resample: nn.Module = (
            nn.Identity() if spec.stem_size is None else Resample(spec.stem_size, spec.resample)
        )
        self.normalize = Normalize(spec.mean, spec.std, spec.in_channels)
        self.stem = stem
        self.blocks = nn.ModuleList([*blocks, head])
        self.foreign_keys = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def head(self) -> Head:
        head = self.blocks[-1]
        assert isinstance(head, Head)
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._stem(x)
        for block in self.blocks:
            h = block(h)
        return h

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor = self.stem(self.normalize(self.resample(x)))
        return h

    def frozen_part(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """phi(x): the input of block T-k+1, i.e. what the first fine-tuned block receives."""
        self.check_k(k)
        h = self._stem(x)
        for block in self.blocks[: self.num_blocks - k]:
            h = block(h)
        return h

    def tuned_part(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """The last k blocks applied to phi."""
        for block in self.blocks[self.num_blocks - k :]:
            h = block(h)
        return h

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Input of the final linear layer (LwF's feature space)."""
        h = self.frozen_part(x, 1)
        return self.head.penultimate(h)

    def check_input(self, channels: int) -> None:
        if channels != self.spec.in_channels:
            raise ConfigError(
                f"{self.spec.arch} takes {self.spec.in_channels}-channel images; the data has "
                f"{channels} channels"
            )

    def check_input_size(self, height: int, width: int) -> None:
        """Refuse images of another size than the model is fed: they would run (pooling absorbs
        the difference) but the model would be described, and later fed, at the wrong size."""
        size = self.spec.input_size
        if (height, width) != (size, size):
            raise ConfigError(
                f"the images are {height}x{width} but {self.spec.arch} takes {size}x{size} "
                f"inputs; resize them to {size}x{size} with --resize (job parameter resize: "
                f"true), or let the model resample its inputs: model.set_input_size({height})",
                field="resize",
            )

    def set_input_size(self, size: int, method: str = "bilinear") -> None:
        """Take ``size`` x ``size`` inputs from now on, resampled inside the model (with
        ``method``: bilinear, bicubic, nearest or area) to the size its stem was built for.

        Attacks and audits then work on the images as they are, in [0, 1]; the cost is that
        of a forward pass at the stem's size (:attr:`ModelSpec.resample_cost`). ``size`` equal
        to the stem's removes the resampling. The spec records both sizes, so a checkpoint
        rebuilds the same model.
        """
        if size < 8:
            raise ConfigError(f"inputs must be at least 8x8; got {size}x{size}", field="resize")
        built = self.spec.built_size
        if size == built:
            self.resample = nn.Identity()
            self.spec = _replace_spec(self.spec, input_size=built, stem_size=None)
            return
        self.resample = Resample(built, method)
        self.spec = _replace_spec(self.spec, input_size=size, stem_size=built, resample=method)

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.num_blocks:
            raise ConfigError(
                f"k={k} is out of range: {self.spec.arch} has {self.num_blocks} blocks, "
                f"so k must be between 1 and {self.num_blocks}",
                field="k",
            )

    def frozen_modules(self, k: int) -> list[nn.Module]:
        self.check_k(k)
        return [self.normalize, self.stem, *self.blocks[: self.num_blocks - k]]

    def tuned_modules(self, k: int) -> list[nn.Module]:
        self.check_k(k)
        return list(self.blocks[self.num_blocks - k :])

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh final layer with the standard PyTorch initialisation."""
        old = self.head.fc
        self.head.fc = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(
            device=old.weight.device, dtype=old.weight.dtype
        )
        self.spec = _replace_spec(self.spec, num_classes=num_classes)

    def set_residual_scale(self, scale: float, block_indices: Sequence[int]) -> None:
        """Scale the residual sum of the given blocks (NEFT's 0.5/0.5 when scale=0.5)."""
        for i in block_indices:
            for m in self.blocks[i].modules():
                if hasattr(m, "residual_scale"):
                    setattr(m, "residual_scale", float(scale))  # noqa: B010 (Module types attributes as Tensor | Module)
        scaled = tuple(sorted(block_indices)) if scale != 1.0 else ()
        self.spec = _replace_spec(
            self.spec, residual_scale=float(scale), residual_scaled_blocks=scaled
        )


def _replace_spec(spec: ModelSpec, **changes: Any) -> ModelSpec:
    from dataclasses import replace

    return replace(spec, **changes)
