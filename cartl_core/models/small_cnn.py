"""A small CNN for any channel count and any input from 8x8 up: quick on a CPU.

Stem conv, three conv stages (the first two halve the resolution), a pooling block, the classifier:
T = 5 blocks.
"""

from __future__ import annotations

from torch import nn

from cartl_core.models._base import BlockModel, Head, ModelSpec


def _stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)]
    layers.append(nn.ReLU())
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def small_cnn(spec: ModelSpec, width: int = 32) -> BlockModel:
    w = width
    stem = _stage(spec.in_channels, w, pool=False)
    blocks: list[nn.Module] = [
        _stage(w, 2 * w, pool=True),
        _stage(2 * w, 4 * w, pool=True),
        _stage(4 * w, 4 * w, pool=False),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    ]
    return BlockModel(spec, stem, blocks, Head(nn.Linear(4 * w, spec.num_classes)))
