"""PGD and FGSM in [0, 1] pixel space, batched, on any device.

The input gets gradients, the parameters do not; the model is in eval mode during the attack and
returns to the caller's mode afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cartl_core._runtime import StepFn, autocast, frozen_for_attack
from cartl_core._stop import check_stop
from cartl_core.attacks._progress import StepCounter
from cartl_core.attacks.draws import Draws
from cartl_core.attacks.losses import get_loss
from cartl_core.attacks.threat import L2Ball, LinfBall, threat_model
from cartl_core.config import Precision
from cartl_core.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def compact_every(device: torch.device) -> int:
    """How many steps robust_mask runs between reads of its broken-sample mask.

    Dropping broken samples needs the mask on the host. On the CPU that is free; on CUDA each
    read stalls the queue of launched kernels, so the mask is read every few steps instead
    (broken samples stay broken: attacking them a little longer changes no result).
    """
    return 1 if device.type == "cpu" else 4


def _check(steps: int, alpha: float, restarts: int) -> None:
    if steps < 0:
        raise ConfigError(f"steps must be >= 0; got {steps}", field="steps")
    if alpha <= 0:
        raise ConfigError(f"alpha (step size) must be > 0; got {alpha}", field="alpha")
    if restarts < 1:
        raise ConfigError(f"restarts must be >= 1; got {restarts}", field="restarts")


def _input_grad(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, precision: Precision
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed per-sample loss w.r.t. the input, and the logits it came from."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast(x_adv.device, precision):
            logits = model(x_adv)
        loss = loss_fn(logits, y).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
    return grad, logits.detach()


def _pgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ball: LinfBall | L2Ball,
    alpha: float,
    steps: int,
    random_start: bool,
    loss_fn: LossFn,
    precision: Precision,
) -> torch.Tensor:
    x_adv = ball.random_init(x) if random_start else x.clone()
    for _ in range(steps):
        check_stop("PGD")
        grad, _ = _input_grad(model, x_adv, y, loss_fn, precision)
        x_adv = ball.project(ball.step(x_adv.detach(), grad, alpha), x)
    return x_adv.detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    loss: str = "ce",
    precision: Precision = "fp32",
) -> torch.Tensor:
    """Projected gradient descent (Madry et al.): the adversarial examples for ``x``.

    With several restarts, a sample fooled by some restart keeps that restart's example; one that
    is never fooled keeps the last restart's. Adversarial training passes ``precision="bf16"``
    (autocast on CUDA): its examples only need to be hard, not a measurement.
    """
    _check(steps, alpha, restarts)
    ball = threat_model(norm, eps)
    loss_fn = get_loss(loss)
    with frozen_for_attack(model):
        if restarts == 1:
            return _pgd_run(model, x, y, ball, alpha, steps, random_start, loss_fn, precision)
        best = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(restarts):
            x_adv = _pgd_run(model, x, y, ball, alpha, steps, random_start, loss_fn, precision)
            with torch.no_grad(), autocast(x.device, precision):
                wrong = model(x_adv).argmax(1) != y
            open_ = ~fooled
            best[open_] = x_adv[open_]
            fooled |= wrong
        return best


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    loss: str = "ce",
    precision: Precision = "fp32",
) -> torch.Tensor:
    """Fast gradient sign method: one Linf step of size eps from the clean input."""
    ball = LinfBall(eps)
    with frozen_for_attack(model):
        grad, _ = _input_grad(model, x, y, get_loss(loss), precision)
    return ball.project(ball.step(x, grad, eps), x).detach()


def robust_mask(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    loss: str = "ce",
    precision: Precision = "fp32",
    on_step: StepFn | None = None,
    draws: Draws | None = None,
) -> torch.Tensor:
    """Which samples survive the attack: a stronger and cheaper test than ``pgd`` then predict.

    A sample is broken as soon as ANY iterate of ANY restart is misclassified (checked on the
    logits each step computes anyway), and broken samples leave the batch at once, so a weak
    model costs a fraction of a full run. Clean-misclassified samples are broken at iterate 0
    when ``random_start`` is off; callers usually pass only clean-correct samples. ``draws``:
    the random starts' numbers, keyed by sample (default: the global generator).
    """
    _check(steps, alpha, restarts)
    ball = threat_model(norm, eps)
    loss_fn = get_loss(loss)
    robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    progress = StepCounter(restarts, steps, on_step)

    with frozen_for_attack(model):
        for r in range(restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            _track_run(
                model, x, y, idx, robust, ball, alpha, steps, random_start, loss_fn, precision,
                progress.run(r), (draws or Draws()).at(r),
            )  # fmt: skip
        progress.finish()
    return robust


def _track_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    robust: torch.Tensor,
    ball: LinfBall | L2Ball,
    alpha: float,
    steps: int,
    random_start: bool,
    loss_fn: LossFn,
    precision: Precision,
    on_step: Callable[[int], None],
    draws: Draws,
) -> None:
    x0, ya = x[idx], y[idx]
    xa = ball.random_init(x0, draws.rows(idx)) if random_start else x0.clone()
    every = compact_every(xa.device)
    alive = torch.ones_like(ya, dtype=torch.bool)
    for t in range(steps + 1):
        check_stop("PGD")
        if t < steps:
            grad, logits = _input_grad(model, xa, ya, loss_fn, precision)
        else:
            with torch.no_grad(), autocast(xa.device, precision):
                logits = model(xa)
        alive &= logits.argmax(1) == ya
        if (t == steps or t % every == every - 1) and not bool(alive.all()):
            robust[idx[~alive]] = False
            idx, x0, ya, xa = idx[alive], x0[alive], ya[alive], xa.detach()[alive]
            if t < steps:
                grad = grad[alive]
            if idx.numel() == 0:
                return
            alive = torch.ones_like(ya, dtype=torch.bool)
        if t < steps:
            xa = ball.project(ball.step(xa.detach(), grad, alpha), x0)
            on_step(t + 1)
