"""Model registry: architecture names used by the CLI and the API.

- ``small-cnn``: a small CNN for any channel count and inputs from 8x8 up (T = 5).
- ``resnet18-cifar``: CIFAR ResNet-18 (T = 9).
- ``wrn-D-W``: pre-activation WideResNet of depth D and width W, e.g. ``wrn-34-10`` (T = 17).
- ``torchvision:NAME``: a torchvision classification model, e.g. ``torchvision:resnet50``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from cartl_core.errors import ArchitectureError
from cartl_core.models._base import BlockModel, Head, ModelSpec, Normalize
from cartl_core.models.resnet import resnet18_cifar
from cartl_core.models.small_cnn import small_cnn
from cartl_core.models.tv import IMAGENET_MEAN, IMAGENET_STD, torchvision_model
from cartl_core.models.wrn import wide_resnet

__all__ = [
    "BlockModel",
    "Head",
    "ModelSpec",
    "Normalize",
    "build_model",
    "create_model",
    "list_models",
]

_WRN = re.compile(r"^wrn-(\d+)-(\d+)$")

# What new models of an architecture are built with. A checkpoint records its own options, and
# one written before an option existed rebuilds without it.
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {"small-cnn": {"fc_width": 0}}


def list_models() -> list[str]:
    """Architecture names, with examples for the parameterised families."""
    return ["small-cnn", "resnet18-cifar", "wrn-D-W (e.g. wrn-34-10, wrn-28-4)", "torchvision:NAME"]


def build_model(spec: ModelSpec) -> BlockModel:
    """Build an (untrained) model from its spec, including any residual scaling it records."""
    arch = spec.arch
    model: BlockModel
    if arch == "small-cnn":
        model = small_cnn(spec)
    elif arch == "resnet18-cifar":
        model = resnet18_cifar(spec)
    elif m := _WRN.match(arch):
        model = wide_resnet(spec, int(m.group(1)), int(m.group(2)))
    elif arch.startswith("torchvision:"):
        model = torchvision_model(spec, arch.removeprefix("torchvision:"))
    else:
        raise ArchitectureError(
            f"unknown architecture {arch!r}; use one of: {', '.join(list_models())}"
        )
    if spec.residual_scaled_blocks:
        model.set_residual_scale(spec.residual_scale, spec.residual_scaled_blocks)
    return model


def create_model(
    arch: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    input_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    options: Mapping[str, Any] | None = None,
) -> BlockModel:
    """A fresh model. Normalisation defaults: ImageNet's for torchvision models, none otherwise.

    ``options`` are architecture variants recorded in the model's spec (so a checkpoint rebuilds
    the variant it was trained as); left out, new models get ``DEFAULT_OPTIONS`` for their arch.
    """
    if num_classes < 2:
        raise ArchitectureError(f"num_classes must be >= 2; got {num_classes}")
    if input_size < 8:
        raise ArchitectureError(f"inputs must be at least 8x8; got {input_size}x{input_size}")
    tv = arch.startswith("torchvision:")
    spec = ModelSpec(
        arch=arch,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        mean=tuple(mean) if mean is not None else (IMAGENET_MEAN if tv else (0.0,)),
        std=tuple(std) if std is not None else (IMAGENET_STD if tv else (1.0,)),
        options=dict(options if options is not None else DEFAULT_OPTIONS.get(arch, {})),
    )
    return build_model(spec)
