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

Other timm models are refused by name. Residual scaling (NEFT's 0.5/0.5) is not available: timm's
blocks sum their branches inside their forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cartl_core.errors import ArchitectureError
from cartl_core.models._base import BlockModel, Head, ModelSpec

__all__ = ["SUPPORTED_TIMM", "timm_defaults", "timm_model"]

#: The timm model classes that split into blocks, for listings and errors.
SUPPORTED_TIMM = (
    "ResNet (resnet*, resnext*, ...)",
    "ConvNeXt (convnext*)",
    "VisionTransformer (vit_*, deit_*)",
)


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
        cfg = timm.models.get_pretrained_cfg(name)
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


def _split_convnext(net: Any) -> tuple[nn.Module, list[nn.Module], Head]:
    blocks: list[nn.Module] = []
    for stage in net.stages:
        inner = list(stage.blocks)
        if not isinstance(stage.downsample, nn.Identity):
            inner[0] = nn.Sequential(stage.downsample, inner[0])
        blocks += inner
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
    if not timm.is_model(name):
        raise ArchitectureError(f"timm has no model {name!r}; see timm.list_models() for the names")
    kwargs: dict[str, Any] = {"num_classes": spec.num_classes, "in_chans": spec.in_channels}
    with torch.device("meta"):  # the class alone, without initialising weights
        kind = type(timm.create_model(name, pretrained=False, **kwargs))
    vit = timm.models.vision_transformer.VisionTransformer
    if kind is vit:
        # A ViT's patch grid and position embedding are built for one input size.
        kwargs["img_size"] = spec.input_size
    net = timm.create_model(name, pretrained=False, **kwargs)
    # Exact classes only: a subclass (DeiT's distilled ViT, ...) may run its head differently.
    if kind is timm.models.resnet.ResNet:
        split = _split_resnet
    elif kind is timm.models.convnext.ConvNeXt:
        split = _split_convnext
    elif kind is vit:
        split = _split_vit
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
