"""Facts about an architecture (block count, residual scaling) without building its weights.

A pre-training job names an architecture rather than a checkpoint; its ``k`` is checked against
the block count of the model it will build, before the job is queued. Building on PyTorch's
``meta`` device allocates no memory and takes milliseconds, and the answer is cached per
(arch, classes, channels, size).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

__all__ = ["ModelInfo", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    num_blocks: int
    residual_scalable: bool


@lru_cache(maxsize=128)
def model_info(arch: str, num_classes: int, in_channels: int, input_size: int) -> ModelInfo:
    """Raises :class:`cartl_core.ArchitectureError` for an unknown or unusable architecture."""
    import torch

    from cartl_core.models import create_model

    with torch.device("meta"):
        model = create_model(arch, num_classes, in_channels=in_channels, input_size=input_size)
    return ModelInfo(model.num_blocks, model.residual_scalable)
