"""Attack objectives, maximised by the attacker. Each returns one value per sample, in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cartl_core.errors import ConfigError


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y: positive exactly when the sample is misclassified."""
    z = logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return others.amax(dim=1) - true


def cw_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """z_t - z_y: the targeted margin, what APGD-T maximises below three classes."""
    z = logits.float()
    return (z.gather(1, target[:, None]) - z.gather(1, y[:, None])).squeeze(1)


def _needs_three_classes(z: torch.Tensor, name: str) -> None:
    if z.shape[1] < 3:
        # With two classes the ratio is the sign of the margin: constant, with zero gradient,
        # so an attack on it would silently never move.
        raise ConfigError(
            f"{name} needs at least 3 classes (the model has {z.shape[1]}); use the CW margin "
            "loss ('cw') instead",
            field="loss",
        )


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's Difference of Logits Ratio: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3).

    Dividing by a spread of the logits makes the loss invariant to their scale and shift, which
    defeats defences that only rescale logits (and needs at least three classes).
    """
    z = logits.float()
    _needs_three_classes(z, "the DLR loss")
    top = z.sort(dim=1, descending=True).values
    spread = top[:, 0] - top[:, min(2, z.shape[1] - 1)]
    return cw_margin_loss(z, y) / (spread + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).

    With three classes the missing fourth order statistic falls back to the last logit, so the
    denominator stays a positive spread; below three it is refused (see :func:`dlr_loss`).
    """
    z = logits.float()
    _needs_three_classes(z, "the targeted DLR loss")
    top = z.sort(dim=1, descending=True).values
    c = z.shape[1]
    spread = top[:, 0] - 0.5 * (top[:, min(2, c - 1)] + top[:, min(3, c - 1)])
    true = z.gather(1, y[:, None]).squeeze(1)
    tgt = z.gather(1, target[:, None]).squeeze(1)
    return (tgt - true) / (spread + 1e-12)


LOSSES = {"ce": ce_loss, "cw": cw_margin_loss, "dlr": dlr_loss}


def get_loss(name: str):  # type: ignore[no-untyped-def]
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"attack loss must be one of {', '.join(LOSSES)}; got {name!r}") from None
