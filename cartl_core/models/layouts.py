"""Published checkpoints, recognised from their keys alone.

Plain weights carry no description, but their state-dict names and shapes say which code wrote
them. :func:`unwrap` takes off what the publishing code wrapped the network in, keeping the
input normalisation it held; :func:`recognise` names the network's layout, and with it the
architecture that loads it (a WideResNet's depth and width, a ResNet's blocks per stage and block
type all follow from the keys):

- MadryLab ``robustness``: ``{"model": ..., "epoch": ...}`` whose model holds ``model.*`` (the
  network), ``attacker.model.*`` (the attack's reference to the same network, ignored) and
  ``normalizer.new_mean``/``new_std`` (the input normalisation).
- RobustBench: ``normalize.mean``/``std`` + ``model.*`` (``normalize_model``, its ImageNet
  entries, timm's Swins and ConvNeXts among them), ``mu``/``sigma`` buffers (the CIFAR entries'
  subclasses), an unused ``sub_block1`` (``WideResNet(sub_block1=True)``).
- Older key names of timm's Swin (timm < 0.9, Microsoft's release: RobustBench's Liu2023
  Comprehensive files) and XCiT (Facebook's release) are read as timm's ``checkpoint_filter_fn``
  reads them.
- Layouts: RobustBench's TRADES WideResNet, DeepMind's WideResNet and PreActResNet, its
  PreActResNet; the pytorch-cifar ResNets (RobustBench's and robustness' CIFAR ResNets);
  torchvision's ResNets, ResNeXts and Wide ResNets of any width (robustness' and RobustBench's
  ImageNet models, robustness' wide_resnet50_3 to _6 among them); timm's Swin Transformers
  (swin_tiny/small/base/large: RobustBench's Liu2023Comprehensive, Mo2022When and
  RodriguezMunoz2024Characterizing Swin-B/L) and XCiTs (xcit_*, and the 12-block M12 and L12 that
  RobustBench registers in timm for Debenedetti2022Light; its S12 is xcit_small_12_p16_224), whose
  keys hold their widths, depths and heads. Names in :mod:`cartl_core.models` (``cartl models``
  lists them).
- Refused with what they are: RobustBench's ensembles and composite models (Chen2020Adversarial,
  the CARD decks, Bai2023Improving's CompositeModel and its mixing network, Bai2024MixedNUTS),
  which have no single sequence of blocks to cut at k.

Nothing here reads a file or runs the network: these are pure functions of a state dict.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from cartl_core.errors import CheckpointError
from cartl_core.models.resnet import CIFAR_RESNETS
from cartl_core.models.robustbench import PREACT_STAGES

__all__ = [
    "ZOO_NORMALIZATION",
    "Layout",
    "Unwrapped",
    "layout_hint",
    "recognise",
    "unwrap",
    "zoo_entry",
    "zoo_normalization",
]

State = dict[str, torch.Tensor]

MADRYLAB = "madrylab-robustness"
ROBUSTBENCH = "robustbench"
#: The input side the zoo's CIFAR layouts and torchvision's ImageNet models were trained at.
CIFAR_SIZE, IMAGENET_SIZE = 32, 224


_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_C10 = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
_C100 = (
    (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
    (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
)
_AUGUSTIN = (
    (0.4913997551666284, 0.48215855929893703, 0.4465309133731618),
    (0.24703225141799082, 0.24348516474564, 0.26158783926049628),
)
_KIREEV = ("Gauss50percent", "AugMixNoJSD", "RLAT", "RLATAugMixNoJSD", "RLATAugMix")
#: RobustBench entries whose normalisation lives in the zoo's code (a subclass with ``mu`` and
#: ``sigma``, or ``2x - 1``) while their published files do not carry it (robustbench's loader
#: tolerates the missing buffers for exactly these), or that take raw inputs where their layout's
#: default would normalise, by class count: (mean, std). Copied from robustbench 1.1.1's
#: ``model_zoo/cifar10.py``, ``cifar100.py`` and ``imagenet.py``. Named as the architecture
#: ``robustbench:ENTRY``, they load with it; their networks are recognised from the keys.
ZOO_NORMALIZATION: dict[str, dict[int, tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "Hendrycks2019Using": {10: _HALF, 100: _HALF},
    "Hendrycks2020AugMix_WRN": {10: _HALF, 100: _HALF},
    "Rice2020Overfitting": {10: _C10, 100: _C100},
    "Engstrom2019Robustness": {10: ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))},
    "Wong2020Fast": {10: _C10},
    "Chen2020Efficient": {10: _C10, 100: ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))},
    "Wu2020Adversarial": {100: _C100},
    "Augustin2020Adversarial": {10: _AUGUSTIN},
    "Augustin2020Adversarial_34_10": {10: _AUGUSTIN},
    "Augustin2020Adversarial_34_10_extra": {10: _AUGUSTIN},
    "Rony2019Decoupling": {10: ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262))},
    "Modas2021PRIMEResNet18": {10: _HALF, 100: _HALF},
    **{f"Kireev2021Effectiveness_{name}": {10: _C10} for name in _KIREEV},
    # An ImageNet entry the zoo runs without normalize_model: its ResNet takes [0, 1] inputs,
    # where torchvision's layout would otherwise get ImageNet's statistics.
    "Chen2024Data_WRN_50_2": {1000: ((0.0,), (1.0,))},
}
#: Entries whose normalisation no fixed mean and std reproduce.
_UNFOLDABLE = {"Ding2020MMA": "it normalises each image by that image's own mean and std"}
_ENTRY = re.compile(r"robustbench:([A-Z]\w+)")


def zoo_entry(arch: str | None) -> str | None:
    """The RobustBench entry an architecture name ``robustbench:ENTRY`` names, else None."""
    m = _ENTRY.fullmatch(arch or "")
    return m.group(1) if m else None


def zoo_normalization(
    entry: str, num_classes: int
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The normalisation RobustBench's code applies for ``entry`` at ``num_classes``; None for an
    entry whose files carry it, or that normalises with nothing. Raises
    :class:`CheckpointError` for an entry whose normalisation cannot be folded in."""
    if entry in _UNFOLDABLE:
        raise CheckpointError(
            f"RobustBench's {entry} cannot load as a source: {_UNFOLDABLE[entry]}, which no "
            "fixed normalisation reproduces"
        )
    return ZOO_NORMALIZATION.get(entry, {}).get(num_classes)


@dataclass(frozen=True)
class Unwrapped:
    """A state dict with the publishing code's wrapper taken off."""

    #: The network's own tensors.
    state: State
    #: The code whose wrapper was found: ``madrylab-robustness``, ``robustbench`` or None.
    wrapper: str | None = None
    #: The input normalisation the file carries, per channel; None where it carries none.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    #: Where in the file they were.
    normalization_keys: str | None = None
    #: What was left out, and why (one line each).
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    """A recognised layout: its name, what it is, and the architecture that loads it."""

    #: e.g. ``robustbench:dm-wrn-70-16``, ``madrylab-robustness:resnet50``.
    name: str
    #: One line for people, e.g. "DeepMind's WideResNet-70-16 (RobustBench DMWideResNet)".
    description: str
    #: What :func:`cartl_core.create_model` builds it as.
    arch: str
    num_classes: int
    in_channels: int
    #: The input side its published weights were trained at.
    input_size: int
    #: Whether the weights' shapes hold only at ``input_size`` (a Swin's relative-position tables
    #: follow from its attention windows, which follow from the input side): the model is then
    #: built at that side and resamples other sizes.
    fixed_size: bool = False


def unwrap(state: Mapping[str, torch.Tensor]) -> Unwrapped:
    """Take off MadryLab's and RobustBench's wrappers (prefixes such as ``module.`` are already
    gone) and any unused tensors; what is not recognised stays as it is."""
    sd = dict(state)
    keys = set(sd)
    composite = _composite(sd)
    if composite is not None:
        raise CheckpointError(
            f"these weights are an ensemble/composite entry of RobustBench's zoo: {composite}. "
            "It is not supported as a transfer source: its networks run side by side and their "
            "outputs are combined, so there is no single sequence of blocks to cut at k. Load "
            "one of its networks on its own (the zoo publishes each in a file of its own)"
        )
    wrapper: str | None = None
    mean = std = None
    where: str | None = None
    ignored: list[str] = []
    if {"normalizer.new_mean", "normalizer.new_std"} <= keys and _any_under(keys, "model."):
        attacker = [k for k in keys if k.startswith("attacker.")]
        mean, std = (
            _vector(sd["normalizer.new_mean"], "normalizer.new_mean"),
            _vector(sd["normalizer.new_std"], "normalizer.new_std"),
        )
        where = "normalizer.new_mean, normalizer.new_std (robustness' InputNormalize)"
        wrapper = MADRYLAB
        if attacker:
            ignored.append(
                f"attacker.* ({len(attacker)} tensors: the attack's reference to the same network)"
            )
        # Anything else stays, for the mismatch report to name.
        sd = {
            k.removeprefix("model."): v
            for k, v in sd.items()
            if not k.startswith(("attacker.", "normalizer."))
        }
    elif (
        {"normalize.mean", "normalize.std"} <= keys
        and len(keys) > 2
        and all(k.startswith("model.") for k in keys - {"normalize.mean", "normalize.std"})
    ):
        mean, std = (
            _vector(sd["normalize.mean"], "normalize.mean"),
            _vector(sd["normalize.std"], "normalize.std"),
        )
        where = "normalize.mean, normalize.std (RobustBench's normalize_model)"
        wrapper = ROBUSTBENCH
        sd = {k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")}
    elif keys and all(k.startswith("model.") for k in keys):
        sd = {k.removeprefix("model."): v for k, v in sd.items()}
    if mean is None and {"mu", "sigma"} <= set(sd):
        mean, std = _vector(sd.pop("mu"), "mu"), _vector(sd.pop("sigma"), "sigma")
        where = "mu, sigma (a RobustBench entry's normalisation buffers)"
        wrapper = wrapper or ROBUSTBENCH
    sd, legacy = _timm_legacy(sd)
    ignored += legacy
    extra = [k for k in sd if k.startswith("sub_block1.")]
    if extra and "block1.layer.0.bn1.weight" in sd:
        for k in extra:
            del sd[k]
        ignored.append(
            f"sub_block1.* ({len(extra)} tensors: a block group that "
            "WideResNet(sub_block1=True) defines but never runs)"
        )
    return Unwrapped(sd, wrapper, mean, std, where, tuple(ignored))


def recognise(state: Mapping[str, torch.Tensor], wrapper: str | None = None) -> Layout | None:
    """The layout of an unwrapped state dict, or None. ``wrapper`` (:attr:`Unwrapped.wrapper`)
    names the layout after the code that published it."""
    readers = (
        _trades_wrn,
        _dm_wrn,
        _dm_preact,
        _preact,
        _cifar_resnet,
        _torchvision_resnet,
        _timm_swin,
        _timm_xcit,
    )
    for reader in readers:
        found = reader(state, wrapper)
        if found is not None:
            return found
    return None


def layout_hint(state: Mapping[str, torch.Tensor]) -> str | None:
    """What to tell a user whose weights are not recognised, where the keys say something."""
    keys = set(state)
    if (
        _any_under(keys, "stages.0.blocks.")
        or _any_under(keys, "layers.0.blocks.")
        or ("cls_token" in keys and _any_under(keys, "patch_embed.proj."))
    ):
        return "the keys look like a timm model's: give the architecture as timm:NAME"
    if "normalize.mean" in keys and _any_under(keys, "blocks."):
        return (
            "the keys are a CARTL model's without its header: give the architecture it was built as"
        )
    return None


# --- composites and older key names -------------------------------------------------------------


def _composite(sd: Mapping[str, torch.Tensor]) -> str | None:
    """What a RobustBench entry made of several networks is, from its keys; None for one
    network. The names are those its ``model_zoo`` code gives the parts."""
    keys = set(sd)
    # CompositeModelWrapper holds the model as comp_model (and DataParallel's module inside it).
    inner = {k.removeprefix("comp_model.").removeprefix("module.") for k in keys}
    if _any_under(inner, "models.0.") and _any_under(inner, "policy_net."):
        return (
            "RobustBench's CompositeModel (Bai2023Improving: a standard and a robust network, "
            "weighed per input by a mixing network)"
        )
    if _any_under(keys, "std_model.") and _any_under(keys, "rob_model."):
        return (
            "RobustBench's NonLinMixedClassifier (Bai2024MixedNUTS: a standard and a robust "
            "network whose output probabilities are mixed)"
        )
    if _any_under(keys, "models.1."):
        return (
            "an ensemble of networks under models.N (RobustBench's Chen2020Adversarial, the "
            "Diffenderfer2021Winning CARD decks)"
        )
    head = sd.get("linear.weight")
    if (
        head is not None
        and head.ndim == 2
        and head.shape[0] == 1
        and "layers.0.0.bn1.weight" in keys
        and "conv1.weight" not in keys
    ):
        return (
            "the mixing network of RobustBench's CompositeModel (Bai2023Improving's MixingNetV3/"
            "V4, one output: how much to trust each network), not a classifier"
        )
    return None


_OLD_DOWNSAMPLE = re.compile(r"layers\.(\d+)\.downsample\.")
_SWIN_BUFFERS = ("attn.relative_position_index", "attn_mask")


def _timm_legacy(sd: State) -> tuple[State, list[str]]:
    """Swin and XCiT weights in the names of the code that first published them, as timm's
    ``checkpoint_filter_fn`` reads them (RobustBench runs Swin's on its Swin entries):

    - Swin from timm < 0.9 or Microsoft's release: a stage's patch merging is stored with the
      stage before (``layers.0.downsample``; timm now runs it at the start of the next), the
      classifier is ``head`` (now ``head.fc``), and buffers timm recomputes from the window size
      (``relative_position_index``, ``attn_mask``) are saved.
    - XCiT from Facebook's release: ``pos_embeder`` for ``pos_embed``, and the class-attention
      blocks' query, key and value in one ``qkv`` (timm splits them).
    """
    notes: list[str] = []
    if "layers.0.blocks.0.attn.relative_position_bias_table" in sd:
        buffers = [k for k in sd if k.startswith("layers.") and k.endswith(_SWIN_BUFFERS)]
        for k in buffers:
            del sd[k]
        if buffers:
            notes.append(
                f"relative_position_index, attn_mask ({len(buffers)} tensors: buffers timm "
                "computes from the window size)"
            )
        if "layers.0.downsample.reduction.weight" in sd:
            sd = {_swin_name(k): v for k, v in sd.items()}
    if "cls_token" in sd and _any_under(sd, "cls_attn_blocks."):
        sd = {_xcit_name(k): v for k, v in sd.items()}
        for i in range(_count(sd, "cls_attn_blocks.")):
            for kind in ("weight", "bias"):
                qkv = sd.pop(f"cls_attn_blocks.{i}.attn.qkv.{kind}", None)
                if qkv is not None:
                    for name, part in zip("qkv", qkv.reshape(3, -1, *qkv.shape[1:]), strict=True):
                        sd[f"cls_attn_blocks.{i}.attn.{name}.{kind}"] = part
    return sd, notes


def _xcit_name(key: str) -> str:
    return (
        "pos_embed." + key.removeprefix("pos_embeder.") if key.startswith("pos_embeder.") else key
    )


def _swin_name(key: str) -> str:
    key = _OLD_DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
    return "head.fc." + key.removeprefix("head.") if key.startswith("head.") else key


# --- the layouts -------------------------------------------------------------------------------


def _trades_wrn(sd: Mapping[str, torch.Tensor], wrapper: str | None) -> Layout | None:
    if not _has(sd, "conv1.weight", "block1.layer.0.bn1.weight", "bn1.weight", "fc.weight"):
        return None
    n = _count(sd, "block1.layer.")
    width = _width(sd["block1.layer.0.conv1.weight"], 16)
    if width is None or any(_count(sd, f"block{g}.layer.") != n for g in (2, 3)):
        return None
    name = f"wrn-{6 * n + 4}-{width}"
    return _layout(
        sd,
        f"robustbench:{name}",
        f"TRADES WideResNet-{6 * n + 4}-{width} (RobustBench wide_resnet.WideResNet)",
        "conv1.weight",
        "fc.weight",
        CIFAR_SIZE,
    )


def _dm_wrn(sd: Mapping[str, torch.Tensor], wrapper: str | None) -> Layout | None:
    if not _has(sd, "init_conv.weight", "layer.0.block.0.batchnorm_0.weight", "logits.weight"):
        return None
    n = _count(sd, "layer.0.block.")
    width = _width(sd["layer.0.block.0.conv_0.weight"], 16)
    if width is None or any(_count(sd, f"layer.{g}.block.") != n for g in (1, 2)):
        return None
    depth = 6 * n + 4
    return _layout(
        sd,
        f"robustbench:dm-wrn-{depth}-{width}",
        f"DeepMind's WideResNet-{depth}-{width}, Swish (RobustBench DMWideResNet)",
        "init_conv.weight",
        "logits.weight",
        CIFAR_SIZE,
    )


def _dm_preact(sd: Mapping[str, torch.Tensor], wrapper: str | None) -> Layout | None:
    if not _has(sd, "conv_2d.weight", "layer_0.0.batchnorm_0.weight", "logits.weight"):
        return None
    depth = _depth_of(tuple(_count(sd, f"layer_{s}.") for s in range(4)), PREACT_STAGES)
    if depth is None:
        return None
    return _layout(
        sd,
        f"robustbench:dm-preact-resnet-{depth}",
        f"DeepMind's PreActResNet-{depth}, Swish (RobustBench DMPreActResNet)",
        "conv_2d.weight",
        "logits.weight",
        CIFAR_SIZE,
    )


def _preact(sd: Mapping[str, torch.Tensor], wrapper: str | None) -> Layout | None:
    if "bn1.weight" in sd or not _has(
        sd, "conv1.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight", "linear.weight"
    ):
        return None
    if "layer1.0.conv3.weight" in sd:  # PreActBottleneck: no zoo entry uses it
        return None
    depth = _depth_of(tuple(_count(sd, f"layer{s}.") for s in range(1, 5)), PREACT_STAGES)
    if depth is None:
        return None
    bn = "bn.weight" in sd
    arch = f"robustbench:preact-resnet-{depth}" + ("-bn" if bn else "")
    what = "PreActBlockV2, final BatchNorm" if bn else "PreActBlock, no final BatchNorm"
    return _layout(
        sd,
        _named(arch, wrapper),
        f"PreActResNet-{depth} ({what}; RobustBench resnet.PreActResNet)",
        "conv1.weight",
        "linear.weight",
        CIFAR_SIZE,
        arch=arch,
    )


def _cifar_resnet(sd: Mapping[str, torch.Tensor], wrapper: str | None) -> Layout | None:
    if not _has(sd, "conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "linear.weight"):
        return None
    if sd["conv1.weight"].shape[-1] != 3 or sd["conv1.weight"].shape[0] != 64:
        return None  # robustness' wider or thinner variants (wm) have other widths
    stages = tuple(_count(sd, f"layer{s}.") for s in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in sd
    depth = next(
        (d for d, (st, bott) in CIFAR_RESNETS.items() if st == stages and bott == bottleneck), None
    )
    if depth is None:
        return None
    arch = f"resnet{depth}-cifar"
    return _layout(
        sd,
        _named(arch, wrapper),
        f"CIFAR ResNet-{depth} (pytorch-cifar layout: RobustBench resnet.ResNet, "
        "robustness cifar_models.ResNet)",
        "conv1.weight",
        "linear.weight",
        CIFAR_SIZE,
        arch=arch,
    )


#: torchvision's ResNet-family names by (blocks per stage, bottleneck, first stage's width,
#: convolution groups).
_TORCHVISION_RESNETS: dict[tuple[tuple[int, ...], bool, int, int], str] = {
    ((2, 2, 2, 2), False, 64, 1): "resnet18",
    ((3, 4, 6, 3), False, 64, 1): "resnet34",
    ((3, 4, 6, 3), True, 64, 1): "resnet50",
    ((3, 4, 23, 3), True, 64, 1): "resnet101",
    ((3, 8, 36, 3), True, 64, 1): "resnet152",
    ((3, 4, 6, 3), True, 128, 1): "wide_resnet50_2",
    ((3, 4, 23, 3), True, 128, 1): "wide_resnet101_2",
    ((3, 4, 6, 3), True, 128, 32): "resnext50_32x4d",
    ((3, 4, 23, 3), True, 256, 32): "resnext101_32x8d",
    ((3, 4, 23, 3), True, 256, 64): "resnext101_64x4d",
}


def _torchvision_resnet(sd: Mapping[str, torch.Tensor], wrapper: str | None) -> Layout | None:
    if not _has(sd, "conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight"):
        return None
    if sd["conv1.weight"].shape[-1] != 7:
        return None
    stages = tuple(_count(sd, f"layer{s}.") for s in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in sd
    width = int(sd["layer1.0.conv1.weight"].shape[0])
    per_group = int(sd["layer1.0.conv2.weight"].shape[1]) if "layer1.0.conv2.weight" in sd else 0
    groups = width // per_group if per_group and width % per_group == 0 else 0
    name = _TORCHVISION_RESNETS.get((stages, bottleneck, width, groups))
    description = f"torchvision {name}"
    depth = _WIDE_DEPTHS.get(stages)
    if name is None and depth and bottleneck and groups == 1 and width % 64 == 0 and width > 64:
        # robustness' imagenet_models widen further than torchvision (wide_resnet50_3 ... _6).
        name = f"wide_resnet{depth}_{width // 64}"
        description = (
            f"Wide ResNet-{depth}-{width // 64} (torchvision's ResNet with width_per_group "
            f"{width}, as robustness' imagenet_models.{name})"
        )
    if name is None:
        return None
    arch = f"torchvision:{name}"
    return _layout(
        sd,
        _named(arch, wrapper),
        description,
        "conv1.weight",
        "fc.weight",
        IMAGENET_SIZE,
        arch=arch,
    )


#: Bottleneck ResNets whose width torchvision's Wide ResNet recipe scales, by blocks per stage.
_WIDE_DEPTHS: dict[tuple[int, ...], int] = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}

#: timm's Swin Transformers by (embedding width, blocks per stage, heads per stage).
_SWIN_SIZES: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {
    (96, (2, 2, 6, 2), (3, 6, 12, 24)): "tiny",
    (96, (2, 2, 18, 2), (3, 6, 12, 24)): "small",
    (128, (2, 2, 18, 2), (4, 8, 16, 32)): "base",
    (192, (2, 2, 18, 2), (6, 12, 24, 48)): "large",
}
#: timm's Swin names by window: the input side it was made for.
_SWIN_WINDOWS = {7: 224, 12: 384}


def _timm_swin(sd: Mapping[str, torch.Tensor], wrapper: str | None) -> Layout | None:
    table = "layers.{}.blocks.0.attn.relative_position_bias_table"
    if not _has(sd, "patch_embed.proj.weight", table.format(0), "head.fc.weight"):
        return None
    stages = _count(sd, "layers.")
    if stages < 1 or not all(table.format(s) in sd for s in range(stages)):
        return None
    depths = tuple(_count(sd, f"layers.{s}.blocks.") for s in range(stages))
    tables = [sd[table.format(s)] for s in range(stages)]
    heads = tuple(int(t.shape[1]) for t in tables if t.ndim == 2)
    # (2w - 1)^2 relative positions in a w x w window.
    side = math.isqrt(int(tables[0].shape[0]))
    window = (side + 1) // 2
    proj = sd["patch_embed.proj.weight"]
    size = _SWIN_SIZES.get((int(proj.shape[0]), depths, heads))
    if (
        size is None
        or proj.shape[-1] != 4
        or window not in _SWIN_WINDOWS
        or any(t.shape[0] != side * side for t in tables)
        or (window == 12 and size in ("tiny", "small"))  # timm has no such model
    ):
        return None
    name = f"swin_{size}_patch4_window{window}_{_SWIN_WINDOWS[window]}"
    arch = f"timm:{name}"
    found = _layout(
        sd,
        _named(arch, wrapper),
        f"timm {name} (SwinTransformer)",
        "patch_embed.proj.weight",
        "head.fc.weight",
        _SWIN_WINDOWS[window],
        arch=arch,
    )
    return None if found is None else replace(found, fixed_size=True)


#: timm's XCiT sizes by (embedding width, heads).
_XCIT_SIZES = {(128, 4): "nano", (192, 4): "tiny", (384, 8): "small", (512, 8): "medium",
               (768, 16): "large"}  # fmt: skip
#: The (size, depth) pairs timm names, at patch 16 and 8.
_XCIT_TIMM = {("nano", 12), ("tiny", 12), ("tiny", 24), ("small", 12), ("small", 24),
              ("medium", 24), ("large", 24)}  # fmt: skip
#: The two that only RobustBench registers in timm (Debenedetti2022Light's ImageNet models; its
#: S12 is timm's xcit_small_12_p16_224).
_XCIT_ROBUSTBENCH = {
    ("medium", 12, 16): "debenedetti2022light_xcit_m12_imagenet_linf",
    ("large", 12, 16): "debenedetti2022light_xcit_l12_imagenet_linf",
}


def _timm_xcit(sd: Mapping[str, torch.Tensor], wrapper: str | None) -> Layout | None:
    if not _has(
        sd,
        "cls_token",
        "patch_embed.proj.0.0.weight",
        "blocks.0.attn.temperature",
        "blocks.0.mlp.fc1.weight",
        "cls_attn_blocks.0.attn.q.weight",
        "head.weight",
    ):
        return None
    width = int(sd["cls_token"].shape[-1])
    depth = _count(sd, "blocks.")
    heads = int(sd["blocks.0.attn.temperature"].shape[0])
    # ConvPatchEmbed: one stride-2 convolution per halving, at indices 0, 2, 4, ...
    convs = sum(1 for i in range(0, 8, 2) if f"patch_embed.proj.{i}.0.weight" in sd)
    patch = 2**convs
    size = _XCIT_SIZES.get((width, heads))
    if (
        size is None
        or patch not in (8, 16)
        or _count(sd, "cls_attn_blocks.") != 2
        or sd["blocks.0.mlp.fc1.weight"].shape[0] != 4 * width
    ):
        return None
    name = _XCIT_ROBUSTBENCH.get((size, depth, patch))
    if name is None and (size, depth) in _XCIT_TIMM:
        name = f"xcit_{size}_{depth}_p{patch}_224"
    if name is None:
        return None
    arch = f"timm:{name}"
    return _layout(
        sd,
        _named(arch, wrapper),
        f"timm {name} (Xcit)",
        "patch_embed.proj.0.0.weight",
        "head.weight",
        IMAGENET_SIZE,
        arch=arch,
    )


# --- helpers -----------------------------------------------------------------------------------


def _layout(
    sd: Mapping[str, torch.Tensor],
    name: str,
    description: str,
    first_conv: str,
    last_linear: str,
    size: int,
    *,
    arch: str | None = None,
) -> Layout | None:
    conv, fc = sd[first_conv], sd[last_linear]
    if conv.ndim != 4 or fc.ndim != 2:
        return None
    return Layout(
        name=name,
        description=description,
        arch=arch or name,
        num_classes=int(fc.shape[0]),
        in_channels=int(conv.shape[1]),
        input_size=size,
    )


def _named(arch: str, wrapper: str | None) -> str:
    """A layout's name: the code that published the file where a wrapper says so, else the
    architecture's own name."""
    if wrapper is None:
        return arch
    return f"{wrapper}:{arch.split(':', 1)[-1]}"


def _has(sd: Mapping[str, torch.Tensor], *keys: str) -> bool:
    return all(k in sd for k in keys)


def _any_under(keys: set[str] | Mapping[str, object], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


_INDEX = re.compile(r"(\d+)\.")


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many consecutive numbered children ``prefix`` has (0, 1, 2, ...)."""
    seen = {int(m.group(1)) for k in sd if k.startswith(prefix)
            if (m := _INDEX.match(k, len(prefix)))}  # fmt: skip
    n = 0
    while n in seen:
        n += 1
    return n if n == len(seen) else -1


def _width(conv: torch.Tensor, base: int) -> int | None:
    channels = int(conv.shape[0])
    return channels // base if channels % base == 0 and channels >= base else None


def _depth_of(stages: tuple[int, ...], table: Mapping[int, tuple[int, ...]]) -> int | None:
    return next((depth for depth, st in table.items() if st == stages), None)


def _vector(t: torch.Tensor, key: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in t.detach().flatten().tolist())
    if not values or not all(math.isfinite(v) for v in values):
        raise CheckpointError(f"the file's input normalisation {key} is not a finite vector")
    return values
