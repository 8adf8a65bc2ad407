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
from cartl_core.models.resnet import CIFAR_RESNETS, resnet_cifar
from cartl_core.models.robustbench import (
    dm_preact_resnet,
    dm_wide_resnet,
    preact_resnet,
    trades_wide_resnet,
)
from cartl_core.models.small_cnn import small_cnn
from cartl_core.models.timm_adapter import SUPPORTED_TIMM, timm_defaults, timm_model
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
    "default_normalization",
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


@register_model(
    "resnetD-cifar",
    description="CIFAR ResNet (3x3 stem, no max-pool) of depth D in "
    f"{', '.join(map(str, CIFAR_RESNETS))}; loads pytorch-cifar's names (RobustBench's and "
    "MadryLab robustness' CIFAR ResNets)",
    examples=["resnet18-cifar", "resnet50-cifar"],
    pattern=r"resnet(?P<depth>\d+)-cifar",
)
def _resnet_cifar(spec: ModelSpec, depth: str) -> BlockModel:
    return resnet_cifar(spec, int(depth))


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
    description="a torchvision classification model (weights never downloaded); "
    "wide_resnet50_N and wide_resnet101_N at any width N (robustness' go to 6)",
    examples=["torchvision:resnet18", "torchvision:resnet50"],
    pattern=r"torchvision:(?P<name>.*)",
    supported=SUPPORTED_FAMILIES,
)(torchvision_model)


@register_model(
    "robustbench:wrn-D-W",
    description="RobustBench's TRADES WideResNet (ReLU; conv1, block1.layer.N, bn1, fc)",
    examples=["robustbench:wrn-28-10"],
    pattern=r"robustbench:wrn-(?P<depth>\d+)-(?P<width>\d+)",
)
def _trades_wrn(spec: ModelSpec, depth: str, width: str) -> BlockModel:
    return trades_wide_resnet(spec, int(depth), int(width))


@register_model(
    "robustbench:dm-wrn-D-W[-relu]",
    description="DeepMind's WideResNet in RobustBench (Swish; init_conv, layer.G.block.N, "
    "batchnorm, logits); -relu for ReLU",
    examples=["robustbench:dm-wrn-70-16"],
    pattern=r"robustbench:dm-wrn-(?P<depth>\d+)-(?P<width>\d+)(?P<relu>-relu)?",
)
def _dm_wrn(spec: ModelSpec, depth: str, width: str, relu: str | None) -> BlockModel:
    return dm_wide_resnet(spec, int(depth), int(width), "relu" if relu else "swish")


@register_model(
    "robustbench:dm-preact-resnet-D[-relu]",
    description="DeepMind's pre-activation ResNet-18/34 in RobustBench (Swish; conv_2d, "
    "layer_S.N, batchnorm, logits); -relu for ReLU",
    examples=["robustbench:dm-preact-resnet-18"],
    pattern=r"robustbench:dm-preact-resnet-(?P<depth>\d+)(?P<relu>-relu)?",
)
def _dm_preact(spec: ModelSpec, depth: str, relu: str | None) -> BlockModel:
    return dm_preact_resnet(spec, int(depth), "relu" if relu else "swish")


@register_model(
    "robustbench:preact-resnet-D[-bn]",
    description="RobustBench's pre-activation ResNet-18/34 (conv1, layerS.N, linear): "
    "PreActBlock without a final BatchNorm (Wong2020Fast); -bn: PreActBlockV2 with one "
    "(Rice2020Overfitting)",
    examples=["robustbench:preact-resnet-18", "robustbench:preact-resnet-18-bn"],
    pattern=r"robustbench:preact-resnet-(?P<depth>\d+)(?P<bn>-bn)?",
)
def _preact(spec: ModelSpec, depth: str, bn: str | None) -> BlockModel:
    return preact_resnet(spec, int(depth), final_bn=bool(bn))


register_model(
    "timm:NAME",
    description="a timm model (optional: pip install 'cartl[timm]'; weights never downloaded)",
    examples=[
        "timm:resnet18",
        "timm:convnext_atto",
        "timm:vit_tiny_patch16_224",
        "timm:swin_tiny_patch4_window7_224",
        "timm:xcit_nano_12_p16_224",
    ],
    pattern=r"timm:(?P<name>.+)",
    supported=SUPPORTED_TIMM,
)(timm_model)

#: RobustBench's CIFAR statistics (``dm_wide_resnet.CIFAR10_MEAN`` ...), which every zoo entry
#: of DeepMind's layouts normalises with, by class count.
CIFAR_STATS: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    10: ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def default_normalization(
    arch: str, num_classes: int
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, why) an architecture's inputs are normalised with when nothing says otherwise:
    what its published weights expect. ImageNet's for torchvision; timm's pretrained
    configuration; RobustBench's CIFAR-10 (CIFAR-100 at 100 classes) statistics for DeepMind's
    layouts; none for the rest."""
    if arch.startswith("torchvision:"):
        return IMAGENET_MEAN, IMAGENET_STD, "ImageNet's statistics, as torchvision's weights use"
    if arch.startswith("timm:"):
        found = timm_defaults(arch.removeprefix("timm:"))
        if found is not None:
            return found[0], found[1], "timm's pretrained configuration for this model"
        return IMAGENET_MEAN, IMAGENET_STD, "ImageNet's statistics (timm has none for this name)"
    if arch.startswith("robustbench:dm-"):
        cifar100 = num_classes == 100
        mean, std = CIFAR_STATS[100 if cifar100 else 10]
        return (
            mean,
            std,
            f"RobustBench's CIFAR-{100 if cifar100 else 10} statistics, which every zoo entry of "
            "DeepMind's layouts uses",
        )
    return (0.0,), (1.0,), "none: inputs are taken in [0, 1] as they are"


def build_model(spec: ModelSpec) -> BlockModel:
    """Build an (untrained) model from its spec, including any residual scaling it records and
    the resampling of inputs of another size than its stem's."""
    for family in _FAMILIES.values():
        if (kwargs := family.match(spec.arch)) is not None:
            # Builders build for the size the stem takes (a ViT's patch grid depends on it).
            model = family.build(spec.at_stem(), **kwargs)
            break
    else:
        raise ArchitectureError(
            f"unknown architecture {spec.arch!r}; use one of: {', '.join(list_models())}"
        )
    if spec.residual_scaled_blocks:
        model.set_residual_scale(spec.residual_scale, spec.residual_scaled_blocks)
    if spec.stem_size is not None:
        model.set_input_size(spec.input_size, spec.resample)
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
    """A fresh model. Normalisation defaults: :func:`default_normalization`.

    ``options`` are architecture variants recorded in the model's spec (so a checkpoint rebuilds
    the variant it was trained as); left out, new models get ``DEFAULT_OPTIONS`` for their arch.
    """
    if num_classes < 2:
        raise ArchitectureError(f"num_classes must be >= 2; got {num_classes}")
    if input_size < 8:
        raise ArchitectureError(f"inputs must be at least 8x8; got {input_size}x{input_size}")
    default_mean, default_std, _ = default_normalization(arch, num_classes)
    spec = ModelSpec(
        arch=arch,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        mean=tuple(mean) if mean is not None else default_mean,
        std=tuple(std) if std is not None else default_std,
        options=dict(options if options is not None else DEFAULT_OPTIONS.get(arch, {})),
    )
    return build_model(spec)


# Last: info builds models through this module's create_model.
from cartl_core.models.info import ModelInfo, model_info  # noqa: E402
