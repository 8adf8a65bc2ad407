"""Attacks in [0, 1] pixel space: PGD (Linf, L2; CE or CW-margin loss), FGSM, and the audit's
early-exit robustness test."""

from cartl_core.attacks.losses import ce_loss, cw_margin_loss
from cartl_core.attacks.pgd import fgsm, pgd, robust_mask
from cartl_core.attacks.threat import L2Ball, LinfBall, threat_model

__all__ = [
    "L2Ball",
    "LinfBall",
    "ce_loss",
    "cw_margin_loss",
    "fgsm",
    "pgd",
    "robust_mask",
    "threat_model",
]
