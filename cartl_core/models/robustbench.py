"""The architectures of RobustBench's model zoo, as block models that load the zoo's files.

Each reproduces the forward pass of its definition in robustbench 1.1.1
(``robustbench/model_zoo/architectures``) and maps the zoo's state-dict names onto ours
(``foreign_keys``), so the published weights load unchanged:

- ``robustbench:wrn-D-W``: ``wide_resnet.WideResNet``, the TRADES WideResNet (pre-activation,
  ReLU; ``conv1, block1.layer.N..., bn1, fc``). Carmon2019Unlabeled, Zhang2019Theoretically and
  most 2019-2021 entries.
- ``robustbench:dm-wrn-D-W``: ``dm_wide_resnet.DMWideResNet``, DeepMind's WideResNet (Swish,
  TensorFlow's "SAME" padding done by hand; ``init_conv, layer.G.block.N..., batchnorm,
  logits``). Gowal2020Uncovering, Rebuffi2021Fixing, Wang2023Better, ...; ``-relu`` for the
  class's ReLU default, which no zoo entry uses.
- ``robustbench:dm-preact-resnet-D`` (D 18 or 34): ``DMPreActResNet`` (Swish; the projecting
  shortcut is a 3x3 convolution). Rebuffi2021Fixing_R18, Gowal2021Improving_R18, ...
- ``robustbench:preact-resnet-D`` (D 18 or 34): ``resnet.PreActResNet`` with ``PreActBlock`` and
  no final BatchNorm (Wong2020Fast, Andriushchenko2020Understanding; the shortcut sees the raw
  input); ``-bn`` with ``PreActBlockV2`` and ``bn_before_fc`` (Rice2020Overfitting,
  Kireev2021Effectiveness, Addepalli2021Towards_PARN18; the shortcut sees the activated input).

The zoo keeps the input normalisation out of these networks (DM: non-persistent buffers set by
the entry; others: a subclass per entry); :mod:`cartl_core.models.layouts` finds it.

Blocks: every residual block in order, then the final BatchNorm + activation + global pooling
(where the network has one), then the classifier; WRN-34-10 has T = 17, as ``wrn-34-10``. The
zoo pools with a fixed window (8 for the WRNs, 4 for the ResNets), i.e. globally at 32x32, its
only input size; here pooling is global at any size.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cartl_core.errors import ArchitectureError
from cartl_core.models._base import BlockModel, Head, ModelSpec
from cartl_core.models.tv import foreign_key_map

__all__ = [
    "dm_preact_resnet",
    "dm_wide_resnet",
    "named_tree",
    "preact_resnet",
    "trades_wide_resnet",
]

Activation = Callable[[], nn.Module]
_ACTIVATIONS: dict[str, Activation] = {"relu": nn.ReLU, "swish": nn.SiLU}
#: Residual blocks per stage of the pre-activation ResNets, by depth.
PREACT_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def named_tree(**children: nn.Module) -> nn.Module:
    """A bare module holding ``children`` under the names another codebase gives them: its
    state-dict names, mapped onto ours by tensor identity (:func:`foreign_key_map`)."""
    tree = nn.Module()
    for name, child in children.items():
        tree.add_module(name, child)
    return tree


def _add(skip: torch.Tensor, out: torch.Tensor, scale: float) -> torch.Tensor:
    total = skip + out
    return total * scale if scale != 1.0 else total


def _same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    # TensorFlow's "SAME" padding for a 3x3 kernel, as DeepMind's code pads by hand: with
    # stride 2 only the bottom and right get a pixel, which a symmetric padding=1 would not match.
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


class FinalNorm(nn.Module):
    """The last BatchNorm and activation, then global average pooling, flattened."""

    def __init__(self, channels: int, act: Activation) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.act(self.bn(x)), 1), 1)


class _Pool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


# --- robustbench.model_zoo.architectures.wide_resnet -----------------------------------------


class TradesBlock(nn.Module):
    """``wide_resnet.BasicBlock``: where the width changes, the shortcut convolution sees the
    activated input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.residual_scale = 1.0
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal_in_out = cin == cout
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        skip = x if self.convShortcut is None else self.convShortcut(act)
        return _add(skip, out, self.residual_scale)


def trades_wide_resnet(spec: ModelSpec, depth: int, width: int) -> BlockModel:
    stem, groups, final, head = _wrn_parts(spec, depth, width, TradesBlock, nn.ReLU)
    original = named_tree(
        conv1=stem,
        **{f"block{i + 1}": named_tree(layer=nn.Sequential(*g)) for i, g in enumerate(groups)},
        bn1=final.bn,
        fc=head.fc,
    )
    return keyed_model(spec, stem, [*_flat(groups), final], head, original)


# --- robustbench.model_zoo.architectures.dm_wide_resnet --------------------------------------


class DMBlock(nn.Module):
    """``dm_wide_resnet._Block``."""

    def __init__(self, cin: int, cout: int, stride: int, act: Activation) -> None:
        super().__init__()
        self.residual_scale = 1.0
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.relu_0 = act()
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.relu_1 = act()
        self.conv_1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(_same_pad(act, self.stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        skip = x if self.shortcut is None else self.shortcut(act)
        return _add(skip, out, self.residual_scale)


def dm_wide_resnet(spec: ModelSpec, depth: int, width: int, activation: str) -> BlockModel:
    act = _ACTIVATIONS[activation]
    block = partial(DMBlock, act=act)
    stem, groups, final, head = _wrn_parts(spec, depth, width, block, act)
    original = named_tree(
        init_conv=stem,
        layer=nn.Sequential(*(named_tree(block=nn.Sequential(*g)) for g in groups)),
        batchnorm=final.bn,
        logits=head.fc,
    )
    return keyed_model(spec, stem, [*_flat(groups), final], head, original)


class DMPreActBlock(nn.Module):
    """``dm_wide_resnet._PreActBlock``: the projecting shortcut is a padded 3x3 convolution of
    the raw input."""

    def __init__(self, cin: int, cout: int, stride: int, act: Activation) -> None:
        super().__init__()
        self.residual_scale = 1.0
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.relu_0 = act()
        self.conv_2d_1 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.relu_1 = act()
        self.conv_2d_2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 3, stride, 0, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu_0(self.batchnorm_0(x))
        skip = x if self.shortcut is None else self.shortcut(_same_pad(x, self.stride))
        out = self.conv_2d_1(_same_pad(out, self.stride))
        out = self.conv_2d_2(self.relu_1(self.batchnorm_1(out)))
        return _add(skip, out, self.residual_scale)


def dm_preact_resnet(spec: ModelSpec, depth: int, activation: str) -> BlockModel:
    act = _ACTIVATIONS[activation]
    stages = _preact_stages(depth)
    stem = nn.Conv2d(spec.in_channels, 64, 3, 1, 1, bias=False)
    layers = _resnet_stages(lambda cin, cout, s: DMPreActBlock(cin, cout, s, act), stages)
    final = FinalNorm(512, act)
    head = Head(nn.Linear(512, spec.num_classes))
    original = named_tree(
        conv_2d=stem,
        **{f"layer_{i}": nn.Sequential(*layer) for i, layer in enumerate(layers)},
        batchnorm=final.bn,
        logits=head.fc,
    )
    return keyed_model(spec, stem, [*_flat(layers), final], head, original)


# --- robustbench.model_zoo.architectures.resnet (PreActResNet) -------------------------------


class PreActBlock(nn.Module):
    """``resnet.PreActBlock`` (the shortcut sees the raw input) or, with ``activated_shortcut``,
    ``PreActBlockV2`` (it sees the activated input)."""

    def __init__(self, cin: int, cout: int, stride: int, activated_shortcut: bool) -> None:
        super().__init__()
        self.residual_scale = 1.0
        self.activated_shortcut = activated_shortcut
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        into = act if self.activated_shortcut else x
        skip = x if self.shortcut is None else self.shortcut(into)
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return _add(skip, out, self.residual_scale)


def preact_resnet(spec: ModelSpec, depth: int, final_bn: bool) -> BlockModel:
    stages = _preact_stages(depth)
    stem = nn.Conv2d(spec.in_channels, 64, 3, 1, 1, bias=False)
    # In the zoo the two go together: PreActBlockV2 (or out_shortcut) with bn_before_fc.
    layers = _resnet_stages(lambda cin, cout, s: PreActBlock(cin, cout, s, final_bn), stages)
    blocks = _flat(layers)
    children: dict[str, nn.Module] = {
        f"layer{i + 1}": nn.Sequential(*layer) for i, layer in enumerate(layers)
    }
    if final_bn:
        final = FinalNorm(512, nn.ReLU)
        blocks.append(final)
        children["bn"] = final.bn
        head = Head(nn.Linear(512, spec.num_classes))
    else:
        # No final BatchNorm: the head pools the last residual block's output itself.
        head = Head(nn.Linear(512, spec.num_classes), pre=_Pool())
    original = named_tree(conv1=stem, **children, linear=head.fc)
    return keyed_model(spec, stem, blocks, head, original)


# --- shared ----------------------------------------------------------------------------------


def keyed_model(
    spec: ModelSpec, stem: nn.Module, blocks: list[nn.Module], head: Head, original: nn.Module
) -> BlockModel:
    """The product's model of these modules, loading the zoo's state-dict keys: ``original``
    holds the same modules under the zoo's names."""
    model = BlockModel(spec, stem, blocks, head)
    model.foreign_keys = foreign_key_map(original, model)
    return model


def _wrn_parts(
    spec: ModelSpec,
    depth: int,
    width: int,
    block: Callable[[int, int, int], nn.Module],
    act: Activation,
) -> tuple[nn.Conv2d, list[list[nn.Module]], FinalNorm, Head]:
    """A zoo WideResNet's stem, three groups of ``block``, final BN + ``act`` and head."""
    n = _wrn_blocks_per_group(depth, width)
    channels = (16, 16 * width, 32 * width, 64 * width)
    stem = nn.Conv2d(spec.in_channels, channels[0], 3, 1, 1, bias=False)
    groups = _groups(block, channels, n)
    return stem, groups, FinalNorm(channels[3], act), Head(nn.Linear(channels[3], spec.num_classes))


def _flat(stages: list[list[nn.Module]]) -> list[nn.Module]:
    return [block for stage in stages for block in stage]


def _wrn_blocks_per_group(depth: int, width: int) -> int:
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ArchitectureError(
            f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...); got {depth}"
        )
    if width < 1:
        raise ArchitectureError(f"WideResNet width must be >= 1; got {width}")
    return (depth - 4) // 6


def _groups(
    block: Callable[[int, int, int], nn.Module], channels: tuple[int, ...], n: int
) -> list[list[nn.Module]]:
    groups: list[list[nn.Module]] = []
    cin = channels[0]
    for cout, stride in zip(channels[1:], (1, 2, 2), strict=True):
        groups.append([block(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                       for i in range(n)])  # fmt: skip
        cin = cout
    return groups


def _preact_stages(depth: int) -> tuple[int, ...]:
    if depth not in PREACT_STAGES:
        raise ArchitectureError(
            f"pre-activation ResNet depth must be one of {sorted(PREACT_STAGES)}; got {depth}"
        )
    return PREACT_STAGES[depth]


def _resnet_stages(
    block: Callable[[int, int, int], nn.Module], stages: tuple[int, ...]
) -> list[list[nn.Module]]:
    layers: list[list[nn.Module]] = []
    cin = 64
    for planes, count, stride in zip((64, 128, 256, 512), stages, (1, 2, 2, 2), strict=True):
        layers.append([block(cin if i == 0 else planes, planes, stride if i == 0 else 1)
                       for i in range(count)])  # fmt: skip
        cin = planes
    return layers
