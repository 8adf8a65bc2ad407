"""Attacks in [0, 1] pixel space, Linf and L2: PGD (CE or CW-margin loss), FGSM, the audit's
early-exit PGD, and the AutoAttack family: APGD-CE, APGD-T (targeted DLR), FAB-T (targeted Fast
Adaptive Boundary) and the black-box Square Attack."""

from cartl_core.attacks.apgd import AttackOutcome, apgd, apgd_checkpoints, apgd_targeted
from cartl_core.attacks.fab import fab_targeted
from cartl_core.attacks.losses import ce_loss, cw_margin_loss, dlr_loss, dlr_targeted_loss
from cartl_core.attacks.pgd import fgsm, pgd, robust_mask
from cartl_core.attacks.square import square
from cartl_core.attacks.threat import L2Ball, LinfBall, threat_model

__all__ = [
    "AttackOutcome",
    "L2Ball",
    "LinfBall",
    "apgd",
    "apgd_checkpoints",
    "apgd_targeted",
    "ce_loss",
    "cw_margin_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "fab_targeted",
    "fgsm",
    "pgd",
    "robust_mask",
    "square",
    "threat_model",
]
