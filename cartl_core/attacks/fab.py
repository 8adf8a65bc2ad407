"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), Linf and L2.

FAB looks for the adversarial example closest to the input. Each step linearises the decision
boundary between the true class y and a target class c at the current iterate x1 (the hyperplane
where the linearised z_c - z_y is zero) and projects onto it, inside the [0, 1] box, both x1 and
the clean input x0. The next iterate is a convex combination of the two projections, extrapolated
by ``eta``, that leans towards x0 by at most ``alpha_max``; an iterate that crosses the boundary
is pulled back towards x0 by the factor ``beta``, so the search keeps shrinking the distance. It
has no step size. AutoAttack runs FAB-T with 9 targets (the classes with the highest clean logits
after the true one), 100 steps and one restart.

Unlike the reference implementation, a sample leaves the batch the moment an iterate is
misclassified within ``eps`` of x0; the samples that stay follow the reference's trajectory. The
forward-backward pass that linearises the boundary at an iterate also classifies it, so only the
iterates that crossed the boundary outside ``eps`` cost a second pass (at their pulled-back point).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cartl_core._runtime import StepFn, autocast, frozen_for_attack
from cartl_core._stop import check_stop
from cartl_core.attacks._progress import StepCounter
from cartl_core.attacks.apgd import AttackOutcome, _Active, _random_start
from cartl_core.attacks.draws import Draws
from cartl_core.config import PRECISIONS, Precision
from cartl_core.errors import ConfigError

__all__ = ["fab_targeted"]

#: Slack for float error when a misclassified iterate's distance is compared with eps.
TOLERANCE = 1e-6
#: Floor of the projection norms, as in the reference: two zero projections give alpha = 0.
MIN_NORM = 1e-8


def _project(points: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: bool) -> torch.Tensor:
    """Minimal-norm d with <w, points + d> = b and 0 <= points + d <= 1, row by row.

    Each moving coordinate goes in the direction that brings <w, .> towards b, by
    min(lam * s_i, room_i) (Linf: s_i = 1; L2: s_i = |w_i|, the KKT form of the solution), where
    room_i is its distance to the box bound in that direction. The reach <w, d> is increasing and
    piecewise linear in lam, with breakpoints where coordinates saturate: sorting them turns the
    search for lam into cumulative sums and a count. A hyperplane out of the box's reach gives the
    corner that gets closest (every coordinate at its bound).
    """
    gap = b - (w * points).sum(dim=1)
    direction = torch.sign(w) * torch.sign(gap)[:, None]
    room = torch.where(direction > 0, 1 - points, points).clamp_min(0)
    size = w.abs()
    moving = size > 0
    rate = size.square() if l2 else size
    saturate_at = torch.where(moving, room / size.where(moving, 1), 0) if l2 else room * moving
    key, order = saturate_at.sort(dim=1)
    zero = points.new_zeros(points.shape[0], 1)
    # before[k]: what the k first coordinates (in saturation order) contribute once saturated;
    # after[k]: the rate at which the coordinates k and later still raise the reach.
    before = torch.cat([zero, (size * room).gather(1, order).cumsum(dim=1)], dim=1)
    after = torch.cat([rate.gather(1, order).flip(1).cumsum(dim=1).flip(1), zero], dim=1)
    # A tiny |w_i| can make its L2 breakpoint overflow to inf; inf * 0 must not become NaN.
    reach = before[:, 1:] + torch.where(after[:, 1:] > 0, key * after[:, 1:], 0)
    need = gap.abs()[:, None]
    segment = (reach < need).sum(dim=1, keepdim=True)
    feasible = segment < points.shape[1]
    slope = after.gather(1, segment)
    lam = torch.where(slope > 0, (need - before.gather(1, segment)) / slope, 0).clamp_min(0)
    step = torch.minimum(lam * (size if l2 else 1), room)
    return torch.where(feasible & moving, direction * step, direction * room)


def _project_linf(points: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solves min ||d||_inf subject to <w, p + d> = b and 0 <= p + d <= 1 for each row p of
    ``points`` (n, d), with w (n, d) and b (n,); where the box cannot reach the hyperplane, the
    box corner closest to it. Coordinates with w_i = 0 do not move."""
    return _project(points, w, b, l2=False)


def _project_l2(points: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solves min ||d||_2 subject to <w, p + d> = b and 0 <= p + d <= 1 for each row p of
    ``points`` (n, d), with w (n, d) and b (n,); where the box cannot reach the hyperplane, the
    box corner closest to it. Coordinates with w_i = 0 do not move."""
    return _project(points, w, b, l2=True)


def _norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else torch.linalg.vector_norm(flat, dim=1)


def _margin_grad(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, precision: Precision
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f = z_target - z_y, its input gradient and the logits, in one forward-backward."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast(x.device, precision):
            logits = model(x)
        logits = logits.float()
        f = (logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])).squeeze(1)
        (grad,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), grad.detach(), logits.detach()


@dataclass(frozen=True)
class _Settings:
    eps: float
    norm: str
    steps: int
    alpha_max: float
    eta: float
    beta: float
    precision: Precision


def _fab_step(s: _Active, cfg: _Settings) -> torch.Tensor:
    """The next iterate from the linearised boundary at ``s["x1"]``."""
    n = len(s)
    x1, x0, g = s["x1"].flatten(1), s["x0"].flatten(1), s["g"].flatten(1).float()
    w = torch.cat([g, g])
    b = (g * x1).sum(dim=1) - s["f"]
    project = _project_l2 if cfg.norm == "l2" else _project_linf
    d = project(torch.cat([x1, x0]).float(), w, torch.cat([b, b]))
    size = _norm(d, cfg.norm).clamp_min(MIN_NORM)
    alpha = (size[:n] / (size[:n] + size[n:])).clamp(0, cfg.alpha_max)[:, None]
    nxt = ((x1 + cfg.eta * d[:n]) * (1 - alpha) + (x0 + cfg.eta * d[n:]) * alpha).clamp(0, 1)
    return nxt.view_as(s["x1"]).to(s["x1"].dtype)


def _fab_run(
    model: nn.Module,
    s: _Active,
    robust: torch.Tensor,
    x_out: torch.Tensor,
    cfg: _Settings,
    random_start: bool,
    on_iteration: Callable[[int], None],
    draws: Draws,
) -> int:
    """One FAB-T run over the samples in ``s`` (their ``idx`` into the batch, clean ``x0``, label
    ``y`` and ``target``); updates ``robust`` and ``x_out`` in place and returns the model
    evaluations it spent."""
    # The reference starts at radius min(smallest adversarial norm found, eps) / 2: every sample
    # still here found none within eps, so that is eps / 2.
    s["x1"] = (
        _random_start(s["x0"], cfg.eps / 2, cfg.norm, draws.rows(s["idx"]))
        if random_start
        else s["x0"]
    )
    # As in the reference, the start itself is not checked: its logits go unused.
    s["f"], s["g"], _ = _margin_grad(model, s["x1"], s["y"], s["target"], cfg.precision)
    evaluations = len(s)
    for i in range(cfg.steps):
        check_stop("FAB")
        evaluations += _iterate(model, s, robust, x_out, cfg, last=i == cfg.steps - 1)
        on_iteration(i + 1)
        if len(s) == 0:
            break
    return evaluations


def _iterate(
    model: nn.Module,
    s: _Active,
    robust: torch.Tensor,
    x_out: torch.Tensor,
    cfg: _Settings,
    last: bool,
) -> int:
    """One FAB step for the samples in ``s``; the broken ones leave. Returns the evaluations."""
    x1 = _fab_step(s, cfg)
    if last:
        with torch.no_grad(), autocast(x1.device, cfg.precision):
            logits = model(x1).float()
    else:
        # The boundary at the new iterate, for the next step; its logits classify the iterate.
        s["f"], s["g"], logits = _margin_grad(model, x1, s["y"], s["target"], cfg.precision)
    evaluations = len(s)
    wrong = logits.argmax(dim=1) != s["y"]
    broken = wrong & (_norm(x1 - s["x0"], cfg.norm) <= cfg.eps + TOLERANCE)
    robust[s["idx"][broken]] = False
    x_out[s["idx"][broken]] = x1[broken]
    crossed = wrong & ~broken
    if bool(crossed.any()) and not last:
        x0 = s["x0"][crossed]
        x1[crossed] = x0 + cfg.beta * (x1[crossed] - x0)
        f, g, _ = _margin_grad(
            model, x1[crossed], s["y"][crossed], s["target"][crossed], cfg.precision
        )
        s["f"][crossed], s["g"][crossed] = f, g
        evaluations += int(crossed.sum())
    s["x1"] = x1
    s.keep(~broken)
    return evaluations


def _check(
    eps: float,
    norm: str,
    steps: int,
    restarts: int,
    targets: int,
    alpha_max: float,
    eta: float,
    beta: float,
    precision: str,
) -> None:
    problems = [
        (eps > 0, "eps", f"eps must be > 0; got {eps}"),
        (norm in ("linf", "l2"), "norm", f"norm must be 'linf' or 'l2'; got {norm!r}"),
        (steps >= 1, "steps", f"FAB steps must be >= 1; got {steps}"),
        (restarts >= 1, "restarts", f"restarts must be >= 1; got {restarts}"),
        (targets >= 1, "targets", f"targets must be >= 1; got {targets}"),
        (0 <= alpha_max <= 1, "alpha_max", f"alpha_max must be in [0, 1]; got {alpha_max}"),
        (eta >= 1, "eta", f"eta (overshoot) must be >= 1; got {eta}"),
        (0 < beta <= 1, "beta", f"beta (backward step) must be in (0, 1]; got {beta}"),
        (precision in PRECISIONS, "precision", f"precision must be one of {PRECISIONS}"),
    ]
    for ok, field, message in problems:
        if not ok:
            raise ConfigError(message, field=field)


def fab_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    targets: int = 9,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    precision: Precision = "fp32",
    on_step: StepFn | None = None,
    draws: Draws | None = None,
) -> AttackOutcome:
    """FAB-T: FAB towards each of the ``targets`` classes with the highest clean logits after the
    true one (bounded by the class count minus one), each run (and restart: a random start at
    eps / 2) on the samples that survived the earlier ones. A broken sample's example is its
    misclassified iterate within ``eps``; a robust sample's is ``x`` itself. AutoAttack's
    standard: 9 targets, 100 steps, one restart."""
    _check(eps, norm, steps, restarts, targets, alpha_max, eta, beta, precision)
    cfg = _Settings(eps, norm, steps, alpha_max, eta, beta, precision)
    x_out = x.clone()
    with frozen_for_attack(model):
        with torch.no_grad(), autocast(x.device, precision):
            logits = model(x).float()
        evaluations = x.shape[0]
        # Misclassified already: x itself is the adversarial example.
        robust = logits.argmax(dim=1) == y
        ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
        runs = min(targets, logits.shape[1] - 1) * restarts
        progress = StepCounter(runs, steps, on_step)
        for run in range(runs):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            s = _Active(idx=idx, x0=x[idx], y=y[idx], target=ranked[idx, run // restarts])
            evaluations += _fab_run(
                model, s, robust, x_out, cfg, run % restarts > 0, progress.run(run),
                (draws or Draws()).at(run),
            )  # fmt: skip
        progress.finish()
    return AttackOutcome(robust, x_out, evaluations)
