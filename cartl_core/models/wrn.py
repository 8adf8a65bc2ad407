"""Pre-activation WideResNet-D-W with LeakyReLU(0.1) and no dropout, as in the CARTL release.

With n = (D - 4) / 6 basic blocks per group: blocks 1..3n are the residual blocks, block 3n+1 the
final BN + activation (+ global pooling), block 3n+2 the classifier. WRN-34-10 has T = 17.

Initialisation follows the release: Kaiming-normal convolutions (fan_out, for the LeakyReLU(0.1)
they feed), BatchNorm weight 1 and bias 0, classifier bias 0.
"""

from __future__ import annotations

from torch import nn

from cartl_core.errors import ArchitectureError
from cartl_core.models._base import BlockModel, Head, ModelSpec
from cartl_core.models.blocks import PreActBlock


class FinalBNBlock(nn.Module):
    def __init__(self, channels: int, slope: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.LeakyReLU(slope)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.flatten(self.pool(self.act(self.bn(x))))


def wide_resnet(spec: ModelSpec, depth: int, width: int) -> BlockModel:
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ArchitectureError(
            f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...); got {depth}"
        )
    if width < 1:
        raise ArchitectureError(f"WideResNet width must be >= 1; got {width}")
    n = (depth - 4) // 6
    channels = (16, 16 * width, 32 * width, 64 * width)
    stem = nn.Conv2d(spec.in_channels, channels[0], 3, 1, 1, bias=False)
    blocks: list[nn.Module] = []
    in_planes = channels[0]
    for group, stride in zip(range(3), (1, 2, 2), strict=True):
        for i in range(n):
            blocks.append(PreActBlock(in_planes, channels[group + 1], stride if i == 0 else 1))
            in_planes = channels[group + 1]
    blocks.append(FinalBNBlock(in_planes))
    head = Head(nn.Linear(in_planes, spec.num_classes))
    model = BlockModel(spec, stem, blocks, head)
    _init_like_release(model, slope=0.1)
    return model


def _init_like_release(model: nn.Module, slope: float) -> None:
    # Sources trained here start where the paper's did: PyTorch's default conv init
    # (Kaiming-uniform, a = sqrt(5)) gives weights about 0.4x this scale, which shrinks every
    # residual branch against its shortcut at the start of training.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=slope, mode="fan_out", nonlinearity="leaky_relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
