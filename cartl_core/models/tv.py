"""torchvision classification models split into CARTL blocks.

``torchvision:resnet50`` and friends are rebuilt from torchvision (never downloaded: weights come
from the user's checkpoint) and re-grouped as stem + blocks + head. The torchvision modules
themselves are reused, so a plain torchvision state dict loads through :func:`foreign_key_map`.

Supported families and their blocks:
- ResNet / ResNeXt / Wide ResNet: stem (conv1, bn1, relu, maxpool); every Basic/Bottleneck block
  of layer1..layer4 in order; head = global pool + fc. ``wide_resnet50_N`` and
  ``wide_resnet101_N`` take any width N >= 2 (torchvision ships 2; MadryLab ``robustness``'
  ``imagenet_models`` publish 3 to 6), as torchvision builds its own: ``width_per_group=64 * N``.
- VGG: conv stages split after each max-pool; head = pool + hidden classifier layers + last linear.
- MobileNet V2/V3, EfficientNet, ConvNeXt: ``features[0]`` is the stem, each later child of
  ``features`` a block; head = pool + classifier layers + last linear.
Residual scaling (NEFT's 0.5/0.5) is supported for ResNet-family blocks; other families refuse it.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from cartl_core.errors import ArchitectureError
from cartl_core.models._base import BlockModel, Head, ModelSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESNET_PREFIXES = ("resnet", "resnext", "wide_resnet")
_FEATURE_PREFIXES = ("vgg", "mobilenet_v2", "mobilenet_v3", "efficientnet", "convnext")
#: The torchvision model names that split into blocks, as shell-style patterns: what
#: :func:`torchvision_model` accepts, for listings and errors.
SUPPORTED_FAMILIES = tuple(f"{prefix}*" for prefix in (*_RESNET_PREFIXES, *_FEATURE_PREFIXES))
_WIDE = re.compile(r"wide_resnet(?P<depth>50|101)_(?P<width>[2-9]|[1-9]\d+)")


def _scaled_class(base: type[nn.Module]) -> type[nn.Module]:
    """A subclass of a torchvision residual block whose forward honours ``residual_scale``."""
    from torchvision.models import resnet as tvr

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if isinstance(self, tvr.Bottleneck):
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
        else:
            out = self.bn2(self.conv2(out))
        out = out + identity
        if self.residual_scale != 1.0:
            out = out * self.residual_scale
        return self.relu(out)  # type: ignore[no-any-return]

    return type(f"Scaled{base.__name__}", (base,), {"forward": forward})


def _child(net: nn.Module, name: str) -> nn.Module:
    return net.get_submodule(name)


def _split_resnet(net: nn.Module) -> tuple[nn.Module, list[nn.Module], Head]:
    stem = nn.Sequential(*(_child(net, n) for n in ("conv1", "bn1", "relu", "maxpool")))
    blocks: list[nn.Module] = []
    scaled: dict[type[nn.Module], type[nn.Module]] = {}
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        for block in _child(net, layer).children():
            cls = type(block)
            scaled.setdefault(cls, _scaled_class(cls))
            # Swapping the class keeps every parameter name and only replaces forward.
            block.__class__ = scaled[cls]
            setattr(block, "residual_scale", 1.0)  # noqa: B010 (Module types attributes as Tensor | Module)
            blocks.append(block)
    fc = _child(net, "fc")
    assert isinstance(fc, nn.Linear)
    return stem, blocks, Head(fc, pre=_child(net, "avgpool"))


def _split_features(name: str, net: nn.Module) -> tuple[nn.Module, list[nn.Module], Head]:
    features = net.features
    classifier = net.classifier
    assert isinstance(features, nn.Sequential)
    assert isinstance(classifier, nn.Sequential)
    fc = classifier[-1]
    if not isinstance(fc, nn.Linear):
        raise ArchitectureError(f"torchvision:{name}: the classifier does not end in nn.Linear")
    pool = getattr(net, "avgpool", None) or nn.AdaptiveAvgPool2d(1)
    if name.startswith("vgg"):
        stages: list[nn.Module] = []
        current: list[nn.Module] = []
        for layer in features:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                stages.append(nn.Sequential(*current))
                current = []
        if current:
            stages.append(nn.Sequential(*current))
        stem: nn.Module = nn.Identity()
        blocks = stages
        pre = nn.Sequential(pool, nn.Flatten(), *list(classifier)[:-1])
    else:
        stem, blocks = features[0], list(features)[1:]
        hidden = list(classifier)[:-1]
        # torchvision flattens in forward(), outside the classifier, except ConvNeXt, whose
        # classifier flattens itself after a LayerNorm2d that needs the 4-D map. MobileNet V3's
        # hidden Linear would otherwise meet the (N, C, 1, 1) pooled map.
        if not any(isinstance(m, nn.Flatten) for m in hidden):
            hidden.insert(0, nn.Flatten())
        pre = nn.Sequential(pool, *hidden)
    return stem, blocks, Head(fc, pre=pre)


def torchvision_model(spec: ModelSpec, name: str) -> BlockModel:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    wide = _WIDE.fullmatch(name)
    if name not in known and wide is None:
        raise ArchitectureError(
            f"torchvision has no classification model {name!r}; see "
            "torchvision.models.list_models() for the names"
        )
    if name.startswith(_RESNET_PREFIXES):
        split = _split_resnet
        scalable = True
    elif name.startswith(_FEATURE_PREFIXES):

        def split(net: nn.Module) -> tuple[nn.Module, list[nn.Module], Head]:
            return _split_features(name, net)

        scalable = name.startswith("vgg")  # no residuals at all, so scaling is a no-op
    else:
        raise ArchitectureError(
            f"torchvision:{name} cannot be split into blocks yet; supported families: "
            f"{', '.join(SUPPORTED_FAMILIES)}"
        )
    if name in known:
        net = torchvision.models.get_model(name, weights=None, num_classes=spec.num_classes)
    else:
        assert wide is not None
        net = torchvision.models.get_model(
            f"resnet{wide['depth']}",
            weights=None,
            num_classes=spec.num_classes,
            width_per_group=64 * int(wide["width"]),
        )
    if spec.in_channels != 3:
        raise ArchitectureError(
            f"torchvision:{name} expects 3 input channels; the data has {spec.in_channels}"
        )
    stem, blocks, head = split(net)
    model = BlockModel(spec, stem, blocks, head)
    model.residual_scalable = scalable
    model.foreign_keys = foreign_key_map(net, model)
    return model


def foreign_key_map(original: nn.Module, model: nn.Module) -> dict[str, str]:
    """Map torchvision's state-dict names to ours, by tensor identity (the modules are shared)."""
    ours = {id(t): n for n, t in [*model.named_parameters(), *model.named_buffers()]}
    return {
        n: ours[id(t)]
        for n, t in [*original.named_parameters(), *original.named_buffers()]
        if id(t) in ours
    }
