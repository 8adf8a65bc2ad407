"""Threat models: an eps-ball in pixel space, intersected with the [0, 1] box.

Each ball knows how to start (random point inside), step (steepest ascent for its norm) and
project back, so one PGD loop serves every norm.
"""

from __future__ import annotations

from typing import Protocol

import torch

from cartl_core.attacks.draws import Draws
from cartl_core.errors import ConfigError
from cartl_core.parallel import batch_noise


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    norms: torch.Tensor = torch.linalg.vector_norm(t.flatten(1), dim=1).clamp_min(1e-12)
    return norms.view(-1, *([1] * (t.ndim - 1)))


class ThreatModel(Protocol):
    eps: float

    def random_init(self, x: torch.Tensor, draws: Draws | None = None) -> torch.Tensor: ...
    def step(
        self, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float | torch.Tensor
    ) -> torch.Tensor: ...
    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...


class LinfBall:
    def __init__(self, eps: float) -> None:
        self.eps = eps

    def random_init(self, x: torch.Tensor, draws: Draws | None = None) -> torch.Tensor:
        if draws is not None and draws.keyed:
            noise = draws.uniform(x).mul_(2 * self.eps).sub_(self.eps)
        else:
            noise = batch_noise(lambda t: torch.empty_like(t).uniform_(-self.eps, self.eps), x)
        return (x + noise).clamp_(0.0, 1.0)

    def step(
        self, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float | torch.Tensor
    ) -> torch.Tensor:
        return x_adv + alpha * grad.sign()

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(x_adv, x - self.eps), x + self.eps).clamp_(0.0, 1.0)


class L2Ball:
    def __init__(self, eps: float) -> None:
        self.eps = eps

    def random_init(self, x: torch.Tensor, draws: Draws | None = None) -> torch.Tensor:
        # Uniform in the ball: a random direction scaled by eps * U^(1/d).
        d = x[0].numel()
        if draws is not None and draws.keyed:
            direction = draws.at(0).normal(x)
            u = draws.at(1).uniform(x.new_empty(x.shape[0], 1)).view(-1)
        else:
            direction = batch_noise(torch.randn_like, x)
            u = batch_noise(lambda t: torch.rand(t.shape[0], device=t.device, dtype=t.dtype), x)
        direction = direction / _per_sample_norm(direction)
        radius = u.pow(1.0 / d) * self.eps
        return (x + direction * radius.view(-1, *([1] * (x.ndim - 1)))).clamp_(0.0, 1.0)

    def step(
        self, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float | torch.Tensor
    ) -> torch.Tensor:
        return x_adv + alpha * grad / _per_sample_norm(grad)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        factor = (self.eps / _per_sample_norm(delta)).clamp(max=1.0)
        return (x + delta * factor).clamp_(0.0, 1.0)


def threat_model(norm: str, eps: float) -> LinfBall | L2Ball:
    if eps <= 0:
        raise ConfigError(f"eps must be > 0; got {eps}", field="eps")
    if norm == "linf":
        return LinfBall(eps)
    if norm == "l2":
        return L2Ball(eps)
    raise ConfigError(f"norm must be 'linf' or 'l2'; got {norm!r}", field="norm")
