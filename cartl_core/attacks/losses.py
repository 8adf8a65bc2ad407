"""Attack objectives, maximised by the attacker. Both return one value per sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y: positive exactly when the sample is misclassified."""
    z = logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return others.amax(dim=1) - true


LOSSES = {"ce": ce_loss, "cw": cw_margin_loss}


def get_loss(name: str):  # type: ignore[no-untyped-def]
    from cartl_core.errors import ConfigError

    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"attack loss must be one of {', '.join(LOSSES)}; got {name!r}") from None
