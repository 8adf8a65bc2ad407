"""timm classification models split into CARTL blocks: ``timm:NAME``.

timm is optional (``pip install 'cartl[timm]'``). The model is built by timm with random weights
(never downloaded: the weights come from the user's state dict, in timm's names, which
``foreign_keys`` maps onto ours) and re-grouped as stem + blocks + head, reusing timm's modules:

- ResNet family (``timm.models.resnet.ResNet``: resnet*, resnext*, wide_resnet*, seresnet*, the
  deep-stem ``*d`` variants, ...): stem = conv1, bn1, act1, maxpool; every residual block of
  layer1..layer4; head = global pool + fc.
- ConvNeXt (``timm.models.convnext.ConvNeXt``): stem; every ConvNeXt block, a stage's
  downsampling layer going with its first block; head = norm_pre + timm's head (pool, norm,
  pre-logits) + its fc.
- Vision Transformers (``timm.models.vision_transformer.VisionTransformer``: vit_*, deit_* without
  distillation, ...): stem = patch embedding + class token + position embedding; every
  transformer block; head = final norm + pooling + fc_norm + head.
- Swin Transformers (``timm.models.swin_transformer.SwinTransformer``: swin_*, not swinv2_*):
  stem = patch embedding; every Swin block of every stage, a stage's patch merging going with its
  first block (timm runs it at the start of the stage); head = final norm + pool + fc. Built for
  its input size: the attention windows, and so the relative-position tables, follow from it.
- XCiT (``timm.models.xcit.Xcit``: xcit_*, and the names RobustBench registers in timm for
  Debenedetti2022Light's ImageNet models, :data:`ROBUSTBENCH_TIMM`): stem = convolutional patch
  embedding + Fourier position encoding; every XCA block; every class-attention block, the first
  taking the class token; head = final norm + class-token pooling + fc. Between blocks the patch
  tokens are kept as a (B, H, W, C) grid, which XCA's local patch interaction needs.

Other timm models are refused by name. Residual scaling (NEFT's 0.5/0.5) is not available: timm's
blocks sum their branches inside their forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cartl_core.errors import ArchitectureError
from cartl_core.models._base import BlockModel, Head, ModelSpec

__all__ = ["ROBUSTBENCH_TIMM", "SUPPORTED_TIMM", "timm_defaults", "timm_model"]

#: The timm model classes that split into blocks, for listings and errors.
SUPPORTED_TIMM = (
    "ResNet (resnet*, resnext*, ...)",
    "ConvNeXt (convnext*)",
    "VisionTransformer (vit_*, deit_*)",
    "SwinTransformer (swin_*)",
    "Xcit (xcit_*, debenedetti2022light_xcit_*)",
)

#: Names RobustBench registers in timm when its zoo is imported (``model_zoo/architectures/
#: xcit.py``; its loader asks timm for ``<entry>_<dataset>_<threat>``), which timm alone lacks:
#: the timm model they share the rest of their arguments with, and the arguments that differ.
#: Debenedetti2022Light's M12 and L12 are 12-block versions of timm's 24-block XCiTs.
ROBUSTBENCH_TIMM: dict[str, tuple[str, dict[str, Any]]] = {
    "debenedetti2022light_xcit_s12_imagenet_linf": ("xcit_small_12_p16_224", {}),
    "debenedetti2022light_xcit_m12_imagenet_linf": (
        "xcit_medium_24_p16_224",
        {"depth": 12, "eta": 1.0},
    ),
    "debenedetti2022light_xcit_l12_imagenet_linf": (
        "xcit_large_24_p16_224",
        {"depth": 12, "eta": 1.0},
    ),
}


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ArchitectureError(
            "timm:NAME architectures need timm, which is not installed: pip install 'cartl[timm]'"
        ) from None
    return timm


def timm_defaults(name: str) -> tuple[tuple[float, ...], tuple[float, ...], int] | None:
    """(mean, std, input side) of timm's pretrained configuration for ``name``: the
    normalisation its published weights expect. None where timm is missing or has none."""
    try:
        timm = _timm()
        # RobustBench's XCiT configurations keep timm's defaults (xcit._cfg): ImageNet's, 224.
        cfg = timm.models.get_pretrained_cfg(ROBUSTBENCH_TIMM.get(name, (name, {}))[0])
    except (ArchitectureError, RuntimeError):
        return None
    if cfg is None:
        return None
    return tuple(cfg.mean), tuple(cfg.std), int(cfg.input_size[-1])


class _TimmStem(nn.Module):
    """What a timm model runs before its first block, through the model's own methods: the
    model is kept with its blocks and head taken out."""

    def __init__(self, net: nn.Module, run: str) -> None:
        super().__init__()
        self.net = net
        self.run = run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net: Any = self.net
        if self.run == "vit":
            x = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))
        else:
            x = net.stem(x)
        return x


class _VitPool(nn.Module):
    """A ViT's ``norm`` after the blocks, then its ``pool`` and ``fc_norm``, as
    ``forward_features`` ends and ``forward_head`` begins."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.norm = net.norm
        self.attn_pool = net.attn_pool
        self.fc_norm = net.fc_norm
        self.head_drop = net.head_drop
        self.global_pool = str(net.global_pool)
        self.num_prefix_tokens = int(net.num_prefix_tokens)
        self.pool_include_prefix = bool(getattr(net, "pool_include_prefix", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from timm.layers.pool1d import global_pool_nlc

        x = self.norm(x)
        if self.attn_pool is not None:
            if not self.pool_include_prefix:
                x = x[:, self.num_prefix_tokens :]
            x = self.attn_pool(x)
        else:
            x = global_pool_nlc(
                x,
                pool_type=self.global_pool,
                num_prefix_tokens=self.num_prefix_tokens,
                reduce_include_prefix=self.pool_include_prefix,
            )
        return self.head_drop(self.fc_norm(x))  # type: ignore[no-any-return]


def _split_resnet(net: Any) -> tuple[nn.Module, list[nn.Module], Head]:
    stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
    blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
    return stem, blocks, Head(_linear(net.fc), pre=net.global_pool)


def _stage_blocks(stages: Any) -> list[nn.Module]:
    """Every block of every stage, a stage's downsampling run with its first block (as timm runs
    ConvNeXt's and Swin's stages)."""
    blocks: list[nn.Module] = []
    for stage in stages:
        inner = list(stage.blocks)
        if not isinstance(stage.downsample, nn.Identity):
            inner[0] = nn.Sequential(stage.downsample, inner[0])
        blocks += inner
    return blocks


def _split_convnext(net: Any) -> tuple[nn.Module, list[nn.Module], Head]:
    blocks = _stage_blocks(net.stages)
    head = net.head
    if hasattr(head, "pre_logits"):  # NormMlpClassifierHead: pool, norm, flatten, pre-logits
        pre = nn.Sequential(
            net.norm_pre, head.global_pool, head.norm, head.flatten, head.pre_logits, head.drop
        )
    else:  # ClassifierHead (head_norm_first): the norm is norm_pre
        pre = nn.Sequential(net.norm_pre, head.global_pool, head.drop)
    stem = _TimmStem(_trimmed(net, "stem"), "convnext")
    return stem, blocks, Head(_linear(head.fc), pre=pre)


def _split_vit(net: Any) -> tuple[nn.Module, list[nn.Module], Head]:
    blocks = list(net.blocks)
    pool = _VitPool(net)
    fc = _linear(net.head)
    net.blocks = nn.Sequential()
    for name in ("norm", "fc_norm", "head_drop", "head"):
        setattr(net, name, nn.Identity())
    net.attn_pool = None
    return _TimmStem(net, "vit"), blocks, Head(fc, pre=pool)


def _split_swin(net: Any) -> tuple[nn.Module, list[nn.Module], Head]:
    blocks = _stage_blocks(net.layers)
    head = net.head
    pre = nn.Sequential(net.norm, head.global_pool, head.drop, head.flatten)
    return net.patch_embed, blocks, Head(_linear(head.fc), pre=pre)


class _XcitStem(nn.Module):
    """XCiT's patch embedding and position encoding (``forward_features`` up to its blocks), the
    tokens returned as a (B, H, W, C) grid: each XCA block needs the grid's height and width, and
    a block's output must be all the next one takes."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.patch_embed = net.patch_embed
        self.pos_embed = net.pos_embed
        self.pos_drop = net.pos_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        x, (hp, wp) = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed(batch, hp, wp).reshape(batch, -1, x.shape[1]).permute(0, 2, 1)
        return self.pos_drop(x).reshape(batch, hp, wp, -1)  # type: ignore[no-any-return]


class _XcaBlock(nn.Module):
    """An XCA block on the (B, H, W, C) grid."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        out: torch.Tensor = self.block(x.reshape(b, h * w, c), h, w)
        return out.reshape(b, h, w, c)


class _ClassTokenJoins(nn.Module):
    """The first class-attention block, with the class token put in front of the patch tokens
    (``forward_cls``); from here on the tokens are (B, 1 + H * W, C)."""

    def __init__(self, cls_token: nn.Parameter, block: nn.Module) -> None:
        super().__init__()
        self.cls_token = cls_token
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)), dim=1)
        return self.block(tokens)  # type: ignore[no-any-return]


class _XcitPool(nn.Module):
    """XCiT's ``norm`` after the class-attention blocks, then ``forward_head`` up to its fc."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.norm = net.norm
        self.head_drop = net.head_drop
        self.global_pool = str(net.global_pool)
        self.num_prefix_tokens = int(net.num_prefix_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        avg = self.global_pool == "avg"
        x = x[:, self.num_prefix_tokens :].mean(dim=1) if avg else x[:, 0]
        return self.head_drop(x)  # type: ignore[no-any-return]


def _split_xcit(net: Any) -> tuple[nn.Module, list[nn.Module], Head]:
    if not net.cls_attn_blocks:
        raise ArchitectureError("an XCiT without class-attention blocks has no class token to pool")
    if not net.global_pool:
        raise ArchitectureError("an XCiT without pooling (global_pool='') has no classifier input")
    first, *rest = list(net.cls_attn_blocks)
    blocks: list[nn.Module] = [_XcaBlock(b) for b in net.blocks]
    blocks += [_ClassTokenJoins(net.cls_token, first), *rest]
    return _XcitStem(net), blocks, Head(_linear(net.head), pre=_XcitPool(net))


def _trimmed(net: Any, keep: str) -> nn.Module:
    """A holder of ``net``'s ``keep`` child alone, for :class:`_TimmStem`."""
    holder = nn.Module()
    holder.add_module(keep, getattr(net, keep))
    return holder


def _linear(fc: Any) -> nn.Linear:
    if not isinstance(fc, nn.Linear):
        raise ArchitectureError(
            f"the timm model's classifier is {type(fc).__name__}, not nn.Linear"
        )
    return fc


def timm_model(spec: ModelSpec, name: str) -> BlockModel:
    timm = _timm()
    base, overrides = ROBUSTBENCH_TIMM.get(name, (name, {}))
    if not timm.is_model(base):
        raise ArchitectureError(f"timm has no model {name!r}; see timm.list_models() for the names")
    kwargs: dict[str, Any] = {
        "num_classes": spec.num_classes,
        "in_chans": spec.in_channels,
        **overrides,
    }
    with torch.device("meta"):  # the class alone, without initialising weights
        kind = type(timm.create_model(base, pretrained=False, **kwargs))
    vit = timm.models.vision_transformer.VisionTransformer
    swin = timm.models.swin_transformer.SwinTransformer
    if kind in (vit, swin):
        # A ViT's patch grid and position embedding, a Swin's attention windows and their
        # relative-position tables, are built for one input size.
        kwargs["img_size"] = spec.input_size
    net = timm.create_model(base, pretrained=False, **kwargs)
    # Exact classes only: a subclass (DeiT's distilled ViT, ...) may run its head differently.
    if kind is timm.models.resnet.ResNet:
        split = _split_resnet
    elif kind is timm.models.convnext.ConvNeXt:
        split = _split_convnext
    elif kind is vit:
        split = _split_vit
    elif kind is swin:
        split = _split_swin
    elif kind is timm.models.xcit.Xcit:
        split = _split_xcit
    else:
        raise ArchitectureError(
            f"timm:{name} ({kind.__name__}) cannot be split into blocks yet; supported: "
            + ", ".join(SUPPORTED_TIMM)
        )
    # timm's own names, taken before the split moves the modules around.
    original = [*net.named_parameters(), *net.named_buffers()]
    stem, blocks, head = split(net)
    model = BlockModel(spec, stem, blocks, head)
    model.residual_scalable = False
    ours = {id(t): n for n, t in [*model.named_parameters(), *model.named_buffers()]}
    model.foreign_keys = {n: ours[id(t)] for n, t in original if id(t) in ours}
    return model
