"""Training: FDM pre-training (source side) and transfer methods (target side)."""

from cartl_core.training.fdm import TrainResult, fdm_step, pretrain
from cartl_core.training.loop import EpochRecord, ProgressEvent, evaluate_accuracy
from cartl_core.training.spectral import (
    BoundedSpectralNorm,
    apply_spectral_norm,
    fold_spectral_norm,
    matrix_spectral_norm,
)
from cartl_core.training.transfer import transfer

__all__ = [
    "BoundedSpectralNorm",
    "EpochRecord",
    "ProgressEvent",
    "TrainResult",
    "apply_spectral_norm",
    "evaluate_accuracy",
    "fdm_step",
    "fold_spectral_norm",
    "matrix_spectral_norm",
    "pretrain",
    "transfer",
]
