"""Model registry: the architecture names used by the CLI and the API.

Architectures come in families, one :class:`ModelFamily` each in a table that ``build_model``,
``list_models`` and ``cartl models`` all read. A family matches either its name exactly
(``small-cnn``) or a regular expression whose named groups become its builder's keyword arguments
(``wrn-D-W`` from ``wrn-(?P<depth>...)-(?P<width>...)``). New families join the table with
:func:`register_model`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cartl_core.errors import ArchitectureError
from cartl_core.models._base import BlockModel, Head, ModelSpec, Normalize
from cartl_core.models.resnet import resnet18_cifar
from cartl_core.models.small_cnn import small_cnn
from cartl_core.models.tv import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SUPPORTED_FAMILIES,
    torchvision_model,
)
from cartl_core.models.wrn import wide_resnet

__all__ = [
    "BlockModel",
    "Head",
    "ModelFamily",
    "ModelInfo",
    "ModelSpec",
    "Normalize",
    "build_model",
    "create_model",
    "list_models",
    "model_families",
    "model_info",
    "register_model",
    "unregister_model",
]

# What new models of an architecture are built with. A checkpoint records its own options, and
# one written before an option existed rebuilds without it.
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {"small-cnn": {"fc_width": 0}}

Builder = Callable[..., BlockModel]
_B = TypeVar("_B", bound=Builder)


@dataclass(frozen=True)
class ModelFamily:
    """One architecture family: how its names look and how its models are built."""

    #: The name as users write it, e.g. ``wrn-D-W``.
    name: str
    #: ``build(spec, **groups)``, with the pattern's named groups (strings) as keyword arguments.
    build: Builder
    #: One line for listings.
    description: str
    #: Names that ``cartl models`` builds to show their block counts.
    examples: tuple[str, ...] = ()
    #: A full-match pattern for the names; ``None`` matches ``name`` exactly.
    pattern: re.Pattern[str] | None = None
    #: For a family that wraps another library: the sub-families that split into blocks.
    supported: tuple[str, ...] = ()

    def match(self, arch: str) -> dict[str, str] | None:
        """The builder's keyword arguments for ``arch``, or ``None`` if it is not of this family."""
        if self.pattern is None:
            return {} if arch == self.name else None
        m = self.pattern.fullmatch(arch)
        return m.groupdict() if m else None

    @property
    def summary(self) -> str:
        """The description, with the supported sub-families if any."""
        if not self.supported:
            return self.description
        return f"{self.description}; supported: {', '.join(self.supported)}"


_FAMILIES: dict[str, ModelFamily] = {}


def register_model(
    name: str,
    *,
    description: str,
    examples: Sequence[str] = (),
    pattern: str | None = None,
    supported: Sequence[str] = (),
) -> Callable[[_B], _B]:
    """Add a family to the table, as a decorator on its builder (see :class:`ModelFamily`).

    Families are tried in the order they were registered; a name may be registered once.
    """

    def decorate(build: _B) -> _B:
        if name in _FAMILIES:
            raise ValueError(f"architecture family {name!r} is already registered")
        _FAMILIES[name] = ModelFamily(
            name=name,
            build=build,
            description=description,
            examples=tuple(examples),
            pattern=re.compile(pattern) if pattern is not None else None,
            supported=tuple(supported),
        )
        return build

    return decorate


def unregister_model(name: str) -> ModelFamily:
    """Remove a family from the table (and return it)."""
    try:
        return _FAMILIES.pop(name)
    except KeyError:
        raise ValueError(f"no architecture family {name!r}") from None


def model_families() -> tuple[ModelFamily, ...]:
    """The table, in registration order."""
    return tuple(_FAMILIES.values())


def list_models() -> list[str]:
    """The architecture families' names as users write them (``wrn-D-W``, ``torchvision:NAME``)."""
    return list(_FAMILIES)


register_model(
    "small-cnn",
    description="a small CNN for any channel count and inputs from 8x8 up",
    examples=["small-cnn"],
)(small_cnn)
register_model("resnet18-cifar", description="CIFAR ResNet-18", examples=["resnet18-cifar"])(
    resnet18_cifar
)


@register_model(
    "wrn-D-W",
    description="pre-activation WideResNet of depth D = 6n + 4 and width W",
    examples=["wrn-16-4", "wrn-28-4", "wrn-34-10"],
    pattern=r"wrn-(?P<depth>\d+)-(?P<width>\d+)",
)
def _wide_resnet(spec: ModelSpec, depth: str, width: str) -> BlockModel:
    return wide_resnet(spec, int(depth), int(width))


register_model(
    "torchvision:NAME",
    description="a torchvision classification model (weights never downloaded)",
    examples=["torchvision:resnet18", "torchvision:resnet50"],
    pattern=r"torchvision:(?P<name>.*)",
    supported=SUPPORTED_FAMILIES,
)(torchvision_model)


def build_model(spec: ModelSpec) -> BlockModel:
    """Build an (untrained) model from its spec, including any residual scaling it records."""
    for family in _FAMILIES.values():
        if (kwargs := family.match(spec.arch)) is not None:
            model = family.build(spec, **kwargs)
            break
    else:
        raise ArchitectureError(
            f"unknown architecture {spec.arch!r}; use one of: {', '.join(list_models())}"
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


# Last: info builds models through this module's create_model.
from cartl_core.models.info import ModelInfo, model_info  # noqa: E402
