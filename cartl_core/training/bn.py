"""BatchNorm behaviour during fine-tuning, applied identically on every batch of every epoch.

(The authors' release set eval mode for kept statistics only in the first epoch; here the modes are
re-applied each time the trainer puts the model in train mode.)
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cartl_core.config import BNPolicy
from cartl_core.models import BlockModel


def _bns(modules: Iterable[nn.Module]) -> list[_BatchNorm]:
    return [m for root in modules for m in root.modules() if isinstance(m, _BatchNorm)]


def set_trainable(model: BlockModel, k: int, policy: BNPolicy) -> None:
    """requires_grad for the frozen part, the tuned part and their BN affine parameters."""
    frozen, tuned = model.frozen_modules(k), model.tuned_modules(k)
    for group, trainable, affine in (
        (frozen, False, policy.frozen_affine_trainable),
        (tuned, True, policy.tuned_affine_trainable),
    ):
        for module in group:
            for p in module.parameters():
                p.requires_grad_(trainable)
        for bn in _bns(group):
            for p in (bn.weight, bn.bias):
                if p is not None:
                    p.requires_grad_(affine)


def set_modes(model: BlockModel, k: int, policy: BNPolicy) -> None:
    """Train mode for the tuned part, eval for the frozen part; BN follows its stats switch."""
    frozen, tuned = model.frozen_modules(k), model.tuned_modules(k)
    model.train()
    for module in frozen:
        module.eval()
    for bn in _bns(frozen):
        bn.train(policy.frozen_stats == "target")
    for bn in _bns(tuned):
        bn.train(policy.tuned_stats == "target")
