"""Auto-PGD (Croce & Hein, ICML 2020): APGD with cross-entropy or DLR, and APGD-T (targeted DLR).

APGD needs no step size: it starts at 2 * eps and halves the step for a sample at checkpoints
where that sample's loss stopped improving (condition 1: the loss rose in at most ``rho`` of the
steps since the last checkpoint; condition 2: the step was not halved last time and the best loss
has not moved since). A halving restarts the sample from its best point. Steps carry momentum
0.75. Checkpoints fall at fractions p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
0.06) of the iterations, as in the paper.

Unlike the reference implementation, a sample leaves the batch the moment any iterate (random
start included) is misclassified, so a model that is easy to break costs a fraction of the full
run; the samples that stay are attacked exactly as the algorithm prescribes (every per-sample
quantity, the step size included, is independent of the other samples).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cartl_core._runtime import StepFn, autocast, frozen_for_attack
from cartl_core._stop import check_stop
from cartl_core.attacks._progress import StepCounter
from cartl_core.attacks.draws import Draws
from cartl_core.attacks.losses import (
    ce_loss,
    cw_margin_loss,
    cw_targeted_loss,
    dlr_loss,
    dlr_targeted_loss,
)
from cartl_core.attacks.threat import _per_sample_norm, threat_model
from cartl_core.config import Precision
from cartl_core.errors import ConfigError

__all__ = ["AttackOutcome", "apgd", "apgd_checkpoints", "apgd_targeted", "targeted_loss_for"]

#: A loss of the logits and the labels, one value per sample; the attack maximises it.
SampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MOMENTUM = 0.75
RHO = 0.75


@dataclass
class AttackOutcome:
    """Per-sample result of an attack: ``robust`` flags, and an example for each sample (the
    misclassified iterate for a broken one, the highest-loss point found for a robust one)."""

    robust: torch.Tensor
    x_adv: torch.Tensor
    #: Model evaluations spent, summed over samples (forward + backward counts as one).
    evaluations: int = 0


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD decides whether to halve the step (the paper's schedule)."""
    fractions = [0.0, 0.22]
    while fractions[-1] < 1:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    # Rounded first: 0.57 * 100 is 57.000000000000007 in floating point.
    return sorted({math.ceil(round(p * steps, 9)) for p in fractions if 0 < p <= 1})


def _random_start(x: torch.Tensor, eps: float, norm: str, draws: Draws) -> torch.Tensor:
    """The reference's start: a random point on the boundary of the ball (Linf: one coordinate at
    +-eps, the rest scaled alike; L2: a random direction at radius eps), clipped to [0, 1]."""
    if norm == "linf":
        t = draws.uniform(x).mul_(2).sub_(1)
        t = t / t.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
    else:
        t = draws.normal(x)
        t = t / _per_sample_norm(t)
    return (x + eps * t).clamp_(0.0, 1.0)


class _Active:
    """The samples still in the batch: their index into the caller's batch and their state."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        self.t = tensors

    def keep(self, alive: torch.Tensor) -> None:
        self.t = {k: v[alive] for k, v in self.t.items()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.t[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.t[key] = value

    def __len__(self) -> int:
        return int(self.t["idx"].shape[0])


def _loss_grad(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: SampleLoss, precision: Precision
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loss, its gradient w.r.t. the input, and the logits, in one forward-backward."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast(x.device, precision):
            logits = model(x)
        loss = loss_fn(logits, y)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad.detach(), logits.detach()


def _apgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    robust: torch.Tensor,
    x_out: torch.Tensor,
    idx: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    loss_for: Callable[[_Active], SampleLoss],
    extra: dict[str, torch.Tensor],
    precision: Precision,
    on_iteration: Callable[[int], None],
    draws: Draws,
) -> int:
    """One APGD run over the samples ``idx`` of the batch; updates ``robust`` and ``x_out`` in
    place and returns the model evaluations it spent. ``extra`` holds per-sample tensors (such
    as target classes) that follow the samples as they leave; ``loss_for`` builds the loss of
    the samples still active from their state."""
    ball = threat_model(norm, eps)
    view = (-1, *([1] * (x.ndim - 1)))
    checkpoints = set(apgd_checkpoints(steps))
    s = _Active(idx=idx, x0=x[idx], y=y[idx], **{k: v[idx] for k, v in extra.items()})
    s["x"] = _random_start(s["x0"], eps, norm, draws.rows(idx))
    evaluations = 0

    def evaluate() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nonlocal evaluations
        evaluations += len(s)
        loss, grad, logits = _loss_grad(model, s["x"], s["y"], loss_for(s), precision)
        alive = logits.argmax(1) == s["y"]
        if not bool(alive.all()):
            broken = s["idx"][~alive]
            robust[broken] = False
            x_out[broken] = s["x"][~alive]
        return loss, grad, alive

    loss, grad, alive = evaluate()
    s["loss_best"], s["x_best"], s["grad"], s["grad_best"] = loss, s["x"], grad, grad
    s["loss_prev"] = loss
    s["step"] = torch.full((len(s),), 2.0 * eps, device=x.device)
    s["x_prev"] = s["x"]
    s["increases"] = torch.zeros(len(s), device=x.device)
    s["best_at_check"] = loss
    s["halved_at_check"] = torch.zeros(len(s), dtype=torch.bool, device=x.device)
    s.keep(alive)
    last_check = 0
    for i in range(steps):
        check_stop("APGD")
        if len(s) == 0:
            return evaluations
        cur, prev, step = s["x"], s["x_prev"], s["step"].view(view)
        z = ball.project(ball.step(cur, s["grad"], step), s["x0"])
        if i > 0:
            z = ball.project(cur + MOMENTUM * (z - cur) + (1 - MOMENTUM) * (cur - prev), s["x0"])
        s["x_prev"], s["x"] = cur, z
        loss, grad, alive = evaluate()
        s["grad"] = grad
        s["increases"] = s["increases"] + (loss > s["loss_prev"]).float()
        s["loss_prev"] = loss
        better = loss > s["loss_best"]
        s["loss_best"] = torch.where(better, loss, s["loss_best"])
        s["x_best"] = torch.where(better.view(view), s["x"], s["x_best"])
        s["grad_best"] = torch.where(better.view(view), grad, s["grad_best"])
        if i + 1 in checkpoints:
            interval = i + 1 - last_check
            last_check = i + 1
            stalled = s["increases"] <= RHO * interval
            no_gain = ~s["halved_at_check"] & (s["best_at_check"] >= s["loss_best"])
            halve = stalled | no_gain
            s["step"] = torch.where(halve, s["step"] / 2, s["step"])
            s["x"] = torch.where(halve.view(view), s["x_best"], s["x"])
            s["grad"] = torch.where(halve.view(view), s["grad_best"], s["grad"])
            s["halved_at_check"], s["best_at_check"] = halve, s["loss_best"]
            s["increases"] = torch.zeros_like(s["increases"])
        s.keep(alive)
        on_iteration(i + 1)
    # The samples that stayed robust keep their highest-loss point as their example.
    x_out[s["idx"]] = s["x_best"]
    return evaluations


def _targeted(loss: str) -> Callable[[_Active], SampleLoss]:
    fn = dlr_targeted_loss if loss == "dlr" else cw_targeted_loss

    def for_active(s: _Active) -> SampleLoss:
        target = s["target"]
        return lambda logits, y: fn(logits, y, target)

    return for_active


def _check(steps: int, restarts: int) -> None:
    if steps < 1:
        raise ConfigError(f"APGD steps must be >= 1; got {steps}", field="steps")
    if restarts < 1:
        raise ConfigError(f"restarts must be >= 1; got {restarts}", field="restarts")


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    loss: str = "ce",
    precision: Precision = "fp32",
    on_step: StepFn | None = None,
    draws: Draws | None = None,
) -> AttackOutcome:
    """Untargeted APGD with the ``ce`` (APGD-CE), ``dlr`` or ``cw`` (margin) loss; the standard
    AutoAttack runs APGD-CE with 100 steps and one restart. Each restart attacks only the samples
    still robust. ``on_step`` hears (iterations done, planned) over all restarts. ``draws``: the
    random starts' numbers, keyed by sample (default: the global generator)."""
    _check(steps, restarts)
    losses: dict[str, SampleLoss] = {"ce": ce_loss, "dlr": dlr_loss, "cw": cw_margin_loss}
    if loss not in losses:
        raise ConfigError(f"APGD loss must be 'ce', 'dlr' or 'cw'; got {loss!r}", field="loss")
    fn = losses[loss]
    robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    x_out = x.clone()
    evaluations = 0
    progress = StepCounter(restarts, steps, on_step)
    with frozen_for_attack(model):
        for r in range(restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            evaluations += _apgd_run(
                model, x, y, robust, x_out, idx, eps=eps, norm=norm, steps=steps,
                loss_for=lambda _s: fn, extra={}, precision=precision,
                on_iteration=progress.run(r), draws=(draws or Draws()).at(r),
            )  # fmt: skip
        progress.finish()
    return AttackOutcome(robust, x_out, evaluations)


def apgd_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    targets: int = 9,
    loss: str = "auto",
    precision: Precision = "fp32",
    on_step: StepFn | None = None,
    draws: Draws | None = None,
) -> AttackOutcome:
    """APGD-T: APGD on a targeted loss, once for each of the ``targets`` classes with the highest
    clean logits after the true one (bounded by the class count minus one), each run on the
    samples that survived the earlier ones. AutoAttack's standard: 9 targets, 100 steps.

    ``loss``: ``dlr`` (targeted DLR, AutoAttack's), ``cw`` (the targeted margin z_t - z_y) or
    ``auto``: DLR from three classes on, the margin below (where DLR is constant); see
    :func:`targeted_loss_for`.
    """
    _check(steps, restarts)
    if targets < 1:
        raise ConfigError(f"targets must be >= 1; got {targets}", field="targets")
    if loss not in ("auto", "dlr", "cw"):
        raise ConfigError(f"APGD-T loss must be auto, dlr or cw; got {loss!r}", field="loss")
    robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    x_out = x.clone()
    evaluations = 0
    with frozen_for_attack(model):
        with torch.no_grad(), autocast(x.device, precision):
            logits = model(x).float()
        evaluations += x.shape[0]
        classes = logits.shape[1]
        loss_for = _targeted(targeted_loss_for(classes) if loss == "auto" else loss)
        ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
        runs = min(targets, classes - 1)
        progress = StepCounter(runs * restarts, steps, on_step)
        for t in range(runs):
            for r in range(restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                evaluations += _apgd_run(
                    model, x, y, robust, x_out, idx, eps=eps, norm=norm, steps=steps,
                    loss_for=loss_for, extra={"target": ranked[:, t]}, precision=precision,
                    on_iteration=progress.run(t * restarts + r), draws=(draws or Draws()).at(t, r),
                )  # fmt: skip
        progress.finish()
    return AttackOutcome(robust, x_out, evaluations)


def targeted_loss_for(classes: int) -> str:
    """APGD-T's loss for a model with ``classes`` outputs: AutoAttack's targeted DLR needs three
    (with two its ratio is the sign of the margin, constant, and the attack never moves); below
    that the targeted CW margin, which with two classes is the plain margin."""
    return "dlr" if classes >= 3 else "cw"
