"""A small CNN for any channel count and any input from 8x8 up: quick on a CPU.

Stem conv, three conv stages (the first two halve the resolution), a feature block, the
classifier: T = 5 blocks. The feature block is set by ``spec.options["fc_width"]``:

- ``fc_width`` N > 0 (what :func:`cartl_core.models.create_model` builds): average-pool to a 2x2
  grid, flatten, ``Linear(4 * 4w, N)`` and ReLU. The tuned part at k = 2 is then a two-layer MLP
  that still sees where a feature is, like the small CNNs in the robust-transfer literature.
- absent or 0 (checkpoints written before the option existed): global average pooling and no
  weights, so k = 2 tunes only the final linear layer on pooled features.

``spec.options["stages"]``, a list of ``[channels, pool]``, replaces the three conv stages.
"""

from __future__ import annotations

from torch import nn

from cartl_core.models._base import BlockModel, Head, ModelSpec

GRID = 2
# The conv stages after the stem, for width 32: 64 then 128 channels at halved resolution, then
# 128 at the same resolution.
_STAGES = ((64, True), (128, True), (128, False))


def _stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)]
    layers.append(nn.ReLU())
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def small_cnn(spec: ModelSpec, width: int = 32) -> BlockModel:
    w = width
    fc_width = int(spec.options.get("fc_width", 0))
    # (channels, halve the resolution) of each conv stage after the stem.
    stages = [(int(c), bool(pool)) for c, pool in spec.options.get("stages", _STAGES)]
    stem = _stage(spec.in_channels, w, pool=False)
    blocks: list[nn.Module] = []
    cin = w
    for cout, pool in stages:
        blocks.append(_stage(cin, cout, pool=pool))
        cin = cout
    if fc_width > 0:
        features = nn.Sequential(
            nn.AdaptiveAvgPool2d(GRID),
            nn.Flatten(),
            nn.Linear(cin * GRID * GRID, fc_width),
            nn.ReLU(),
        )
        head = Head(nn.Linear(fc_width, spec.num_classes))
    else:
        features = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        head = Head(nn.Linear(cin, spec.num_classes))
    return BlockModel(spec, stem, [*blocks, features], head)
