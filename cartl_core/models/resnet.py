"""CIFAR ResNets: 3x3 stem, no max-pool; every residual block is a block, the last the classifier.

ResNet-18 and -34 use basic blocks, ResNet-50, -101 and -152 bottlenecks (T = 9, 17, 17, 34, 51).
This is the layout of Kuang Liu's pytorch-cifar, which RobustBench's
``model_zoo.architectures.resnet.ResNet`` and MadryLab's ``robustness.cifar_models.resnet`` both
copy: their state-dict names (``conv1, bn1, layerS.N..., linear``) load through ``foreign_keys``.
"""

from __future__ import annotations

from torch import nn

from cartl_core.errors import ArchitectureError
from cartl_core.models._base import BlockModel, Head, ModelSpec
from cartl_core.models.blocks import BasicBlock, Bottleneck
from cartl_core.models.robustbench import keyed_model, named_tree

#: Residual blocks per stage and whether they are bottlenecks, by depth.
CIFAR_RESNETS: dict[int, tuple[tuple[int, ...], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def resnet_cifar(spec: ModelSpec, depth: int = 18) -> BlockModel:
    if depth not in CIFAR_RESNETS:
        raise ArchitectureError(
            f"CIFAR ResNet depth must be one of {sorted(CIFAR_RESNETS)}; got {depth}"
        )
    stages, bottleneck = CIFAR_RESNETS[depth]
    expansion = Bottleneck.expansion if bottleneck else 1
    stem = nn.Sequential(
        nn.Conv2d(spec.in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
    )
    layers: list[list[nn.Module]] = []
    in_planes = 64
    for planes, count, stride in zip((64, 128, 256, 512), stages, (1, 2, 2, 2), strict=True):
        layer: list[nn.Module] = []
        for s in [stride] + [1] * (count - 1):
            block = Bottleneck if bottleneck else BasicBlock
            layer.append(block(in_planes, planes, s))
            in_planes = planes * expansion
        layers.append(layer)
    head = Head(nn.Linear(512 * expansion, spec.num_classes), pre=nn.AdaptiveAvgPool2d(1))
    original = named_tree(
        conv1=stem[0],
        bn1=stem[1],
        **{f"layer{i + 1}": nn.Sequential(*layer) for i, layer in enumerate(layers)},
        linear=head.fc,
    )
    return keyed_model(spec, stem, [b for layer in layers for b in layer], head, original)


def resnet18_cifar(spec: ModelSpec) -> BlockModel:
    return resnet_cifar(spec, 18)
