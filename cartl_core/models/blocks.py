"""Residual building blocks shared by the CIFAR ResNets and the WideResNet.

Each block has a ``residual_scale`` attribute: the output is ``scale * (shortcut + residual)``,
1.0 for the plain sum and 0.5 for NEFT's averaged residual. Parameter names do not change with the
scale, so source weights load directly either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Post-activation basic block of the CIFAR ResNet (He et al.)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.residual_scale = 1.0
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        if self.residual_scale != 1.0:
            out = out * self.residual_scale
        return F.relu(out)


class Bottleneck(nn.Module):
    """Post-activation bottleneck block of the CIFAR ResNet-50/101/152 (1x1, 3x3, 1x1; x4)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.residual_scale = 1.0
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + self.shortcut(x)
        if self.residual_scale != 1.0:
            out = out * self.residual_scale
        return F.relu(out)


class PreActBlock(nn.Module):
    """Pre-activation wide basic block (Zagoruyko & Komodakis) with LeakyReLU(0.1), no dropout."""

    def __init__(self, in_planes: int, planes: int, stride: int, slope: float = 0.1) -> None:
        super().__init__()
        self.residual_scale = 1.0
        self.slope = slope
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == planes and stride == 1
        self.shortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.leaky_relu(self.bn1(x), self.slope)
        out: torch.Tensor = self.conv1(act)
        out = self.conv2(F.leaky_relu(self.bn2(out), self.slope))
        # As in the reference WRN, a projecting shortcut sees the pre-activated input.
        skip = x if self.shortcut is None else self.shortcut(act)
        out = out + skip
        if self.residual_scale != 1.0:
            out = out * self.residual_scale
        return out
