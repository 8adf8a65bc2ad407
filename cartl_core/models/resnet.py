"""CIFAR ResNet-18: 3x3 stem, no max-pool; blocks 1-8 are basic blocks, block 9 the classifier."""

from __future__ import annotations

from torch import nn

from cartl_core.models._base import BlockModel, Head, ModelSpec
from cartl_core.models.blocks import BasicBlock


def resnet18_cifar(spec: ModelSpec) -> BlockModel:
    stem = nn.Sequential(
        nn.Conv2d(spec.in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
    )
    blocks: list[nn.Module] = []
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for s in (stride, 1):
            blocks.append(BasicBlock(in_planes, planes, s))
            in_planes = planes
    head = Head(nn.Linear(512, spec.num_classes), pre=nn.AdaptiveAvgPool2d(1))
    return BlockModel(spec, stem, blocks, head)
