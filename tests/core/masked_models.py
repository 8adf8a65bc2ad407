"""Deliberately broken defences: each fools some attack in a known way, so the audit's masking
checks have something real to catch. Each wraps a normally trained (non-robust) model."""

from __future__ import annotations

import torch
from torch import nn


def tiny_cnn(num_classes: int = 4) -> nn.Module:
    """A small CNN for 1x8x8 inputs, a few times cheaper than ``small-cnn``: the audit tests
    run thousands of queries on it."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, num_classes),
    )


def train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, eps: float = 0.0
) -> nn.Module:
    """Full-batch SGD; with ``eps`` > 0, PGD-3 adversarial training (Linf, step eps/2)."""
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(epochs):
        x_in = x
        if eps > 0:
            model.eval()
            delta = torch.empty_like(x).uniform_(-eps, eps).requires_grad_(True)
            for _ in range(3):
                (g,) = torch.autograd.grad(
                    F.cross_entropy(model((x + delta).clamp(0, 1)), y), delta
                )
                delta = (delta + eps / 2 * g.sign()).clamp(-eps, eps).detach().requires_grad_(True)
            x_in = (x + delta.detach()).clamp(0, 1)
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x_in), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


class LogitScaled(nn.Module):
    """Logits x 1e4: softmax saturates to one-hot in fp32, so the cross-entropy gradient of
    every correctly classified sample is exactly zero (CE-PGD and APGD-CE stall), while the
    scale-invariant DLR loss of APGD-T still finds the way."""

    def __init__(self, base: nn.Module, scale: float = 1e4) -> None:
        super().__init__()
        self.base, self.scale = base, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x) * self.scale
        return out


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor, levels: int) -> torch.Tensor:
        return torch.round(x * levels) / levels

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(grad), None


class Quantized(nn.Module):
    """Input quantisation whose gradient is zero everywhere (shattered gradients): every
    gradient attack is blind, even at huge radii, but a black-box attack is not."""

    def __init__(self, base: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.base, self.levels = base, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(_RoundSTE.apply(x, self.levels))
        return out


class FarInputLookup(nn.Module):
    """A 'detector' defence: inputs farther than ``radius`` (Linf) from every known clean image
    get the label of the nearest one, as constant logits (no gradient); nearer inputs go to the
    vulnerable base model. Small balls are attackable; larger ones look robust."""

    def __init__(self, base: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 radius: float, num_classes: int) -> None:  # fmt: skip
        super().__init__()
        self.base, self.radius, self.num_classes = base, radius, num_classes
        self.images: torch.Tensor
        self.labels: torch.Tensor
        self.register_buffer("images", images.flatten(1).clone())
        self.register_buffer("labels", labels.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = (x.flatten(1)[:, None, :] - self.images[None]).abs().amax(dim=2)
        nearest, which = dist.min(dim=1)
        lookup = 10.0 * nn.functional.one_hot(self.labels[which], self.num_classes).float()
        far = (nearest > self.radius)[:, None]
        out: torch.Tensor = torch.where(far, lookup, self.base(x))
        return out


class WrongOnCleanGrid(nn.Module):
    """Wrong on inputs that lie exactly on the data's 1/``levels`` grid (the clean images) and
    the base model elsewhere: any perturbation makes it more accurate, so attacked accuracy
    exceeds clean accuracy."""

    def __init__(self, base: nn.Module, num_classes: int, levels: int = 8) -> None:
        super().__init__()
        self.base, self.num_classes, self.levels = base, num_classes, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.base(x)
        scaled = x.flatten(1) * self.levels
        on_grid = ((scaled - scaled.round()).abs() < 1e-6).all(dim=1)[:, None]
        shifted = logits.roll(1, dims=1)
        return torch.where(on_grid, shifted, logits)


class NoisyInput(nn.Module):
    """A randomised defence: Gaussian noise on every input, in eval mode too. Its robust accuracy
    is one random draw's, not a fixed model's."""

    def __init__(self, base: nn.Module, sigma: float = 0.05) -> None:
        super().__init__()
        self.base, self.sigma = base, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x + self.sigma * torch.randn_like(x))
        return out


class ConstantClass(nn.Module):
    """A degenerate 'classifier': a tiny input-dependent wobble on logits that always rank one
    class first. Every attack fails on the images of that class, so robust accuracy equals clean
    accuracy: perfect 'robustness' that means nothing."""

    def __init__(self, num_classes: int, winner: int = 0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1e-3))
        self.num_classes, self.winner = num_classes, winner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = torch.zeros(x.shape[0], self.num_classes, device=x.device)
        base[:, self.winner] = 10.0
        return base + self.scale * x.flatten(1).mean(dim=1, keepdim=True)
