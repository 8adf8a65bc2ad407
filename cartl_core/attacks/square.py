"""Square Attack (Andriushchenko et al., ECCV 2020): a score-based black-box attack, Linf and L2.

It uses only the model's outputs, never its gradients, so it finds adversarial examples behind
gradient masking (zero, noisy or shattered gradients) that white-box attacks miss. Each query
changes the perturbation inside one random square window and keeps the change if the margin
z_y - max_{j != y} z_j went down. In Linf every channel of the window gets a fresh random sign
(+-eps), redrawn only where the whole window would stay as it is, as in the paper. The window
shrinks on the reference's schedule: ``p_init`` 0.8, halved after 10, 50, 200, 500, 1000, 2000,
4000, 6000 and 8000 queries out of 10,000, rescaled to the budget (``rescale``, the Square
paper's code); AutoAttack counts them in queries instead (``rescale=False``, with its standard
budget of 5,000), which measured weaker here at 1,000 and 5,000 queries.

Samples leave the batch the moment they are misclassified, so queries are spent only on the
samples still robust.
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
from cartl_core.attacks.apgd import AttackOutcome
from cartl_core.attacks.draws import Draws
from cartl_core.attacks.threat import _per_sample_norm
from cartl_core.config import Precision
from cartl_core.errors import ConfigError

__all__ = ["square"]

_SCHEDULE = (
    (10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
    (8000, 256),
)  # fmt: skip
#: A proposal that would leave its window unchanged is redrawn at most this often: with one
#: channel each redraw succeeds with probability 1/2, so this practically never runs out.
_REDRAWS = 32
#: Each sample's signs are drawn for this many queries at once, with this many redraws each:
#: one draw instead of one or more per query, each of which costs as much as a forward pass of a
#: small model on the CPU. Later redraws (one query in 256 with one channel) are drawn apart.
_SIGN_BLOCK = 100
_REDRAWS_DRAWN = 8


def _p_selection(p_init: float, query: int, budget: int, rescale: bool) -> float:
    """The fraction of pixels the window covers at query ``query`` (0-based) of ``budget``."""
    it = int(query / budget * 10000) if rescale else query
    for limit, divisor in _SCHEDULE:
        if it <= limit:
            return p_init / divisor
    return p_init / 512


def _margin(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: Precision
) -> torch.Tensor:
    with autocast(x.device, precision):
        z = model(x).float()
    true = z.gather(1, y[:, None]).squeeze(1)
    margin: torch.Tensor = true - z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return margin


def _rectangles(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Concentric rectangles weighted 1/(r+1)^2: the building block of the L2 perturbations."""
    delta = torch.zeros(h, w, device=device)
    ch, cw = h // 2 + 1, w // 2 + 1
    top, left = ch - 1, cw - 1
    for r in range(max(ch, cw)):
        delta[max(top, 0) : min(top + 2 * r + 1, h), max(left, 0) : min(left + 2 * r + 1, w)] += (
            1.0 / (r + 1) ** 2
        )
        top, left = top - 1, left - 1
    return delta / delta.square().sum().sqrt().clamp_min(1e-12)


def _pseudo_gaussian(s: int, device: torch.device, draws: Draws) -> torch.Tensor:
    """An s x s patch: two halves of opposite sign, unit L2 norm, randomly transposed (one coin
    for the whole batch, as in the reference)."""
    delta = torch.zeros(s, s, device=device)
    if s // 2 > 0:
        delta[: s // 2] = _rectangles(s // 2, s, device)
    delta[s // 2 :] = -_rectangles(s - s // 2, s, device)
    delta = delta / delta.square().sum().sqrt().clamp_min(1e-12)
    return delta.t() if draws.shared_ints(2)[0] else delta


def _l2_init(x: torch.Tensor, eps: float, draws: Draws) -> torch.Tensor:
    n, c, h, w = x.shape
    delta = torch.zeros_like(x)
    s = max(h // 5, 1)
    start = (h - s * 5) // 2 if h >= 5 else 0
    for i, (vh, vw) in enumerate(
        (vh, vw) for vh in range(start, h - s + 1, s) for vw in range(start, w - s + 1, s)
    ):
        patch = _pseudo_gaussian(s, x.device, draws.at(i)).view(1, 1, s, s)
        delta[:, :, vh : vh + s, vw : vw + s] += patch * draws.at(i).signs((n, c, 1, 1), x.device)
    return (x + eps * delta / _per_sample_norm(delta)).clamp(0.0, 1.0)


def _linf_proposal(
    x0: torch.Tensor, x_best: torch.Tensor, eps: float, p: float, draws: Draws, drawn: torch.Tensor
) -> torch.Tensor:
    """The query's proposal: ``draws`` its window's stream, ``drawn`` (rows, 1 + redraws,
    channels) its signs, then the signs of its first redraws."""
    n, c, h, w = x0.shape
    s = min(max(round(math.sqrt(p * h * w)), 1), h - 1) if h > 1 else 1
    vh, vw = draws.shared_ints(h - s + 1, 2)
    window = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
    base, current = x0[window], x_best[window]
    signs = drawn[:, 0].view(n, c, 1, 1)
    proposal = (base + eps * signs).clamp(0.0, 1.0)
    # Only a sample whose whole window would stay as it is draws again, all its channels afresh:
    # flipping single unchanged channels instead makes the proposal for a window of one sign the
    # exact complement every time, and then no query can change a single channel.
    for k in range(1, _REDRAWS + 1):
        same = (proposal - current).abs().flatten(1).amax(dim=1) < 1e-7
        if not bool(same.any()):
            break
        if k < drawn.shape[1]:
            again = drawn[:, k].view(n, c, 1, 1)
        else:
            again = draws.at(k).signs((n, c, 1, 1), x0.device)
        signs = torch.where(same.view(-1, 1, 1, 1), again, signs)
        proposal = (base + eps * signs).clamp(0.0, 1.0)
    # Outside the window the proposal is the current best, so only the window is computed.
    x_new = x_best.clone()
    x_new[window] = proposal
    return x_new


def _l2_proposal(
    x0: torch.Tensor, x_best: torch.Tensor, eps: float, p: float, draws: Draws, drawn: torch.Tensor
) -> torch.Tensor:
    _, c, h, w = x0.shape
    s = max(round(math.sqrt(p * h * w)), 3)
    s = min(s + (s % 2 == 0), h)
    vh, vw, vh2, vw2 = draws.shared_ints(h - s + 1, 4)
    win1 = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
    win2 = (slice(None), slice(None), slice(vh2, vh2 + s), slice(vw2, vw2 + s))
    delta = x_best - x0
    norm_win1 = delta[win1].square().sum(dim=(2, 3), keepdim=True).sqrt()
    mask = torch.zeros_like(delta)
    mask[win1] = 1.0
    mask[win2] = 1.0
    norm_windows = (delta * mask).square().sum(dim=(2, 3), keepdim=True).sqrt()
    norm_best = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    patch = _pseudo_gaussian(s, x0.device, draws.at(1)).view(1, 1, s, s)
    new = patch * drawn[:, 0].view(-1, c, 1, 1)
    new = new + delta[win1] / (norm_win1 + 1e-12)
    # Move the mass of both windows into window 1, plus an even share of what the ball allows.
    budget = ((eps**2 - norm_best.square()).clamp_min(0) / c + norm_windows.square()).sqrt()
    new = new / (new.square().sum(dim=(2, 3), keepdim=True).sqrt() + 1e-12) * budget
    delta[win2] = 0.0
    delta[win1] = new
    return (x0 + eps * delta / _per_sample_norm(delta)).clamp(0.0, 1.0)


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    restarts: int = 1,
    rescale: bool = True,
    precision: Precision = "fp32",
    on_step: StepFn | None = None,
    draws: Draws | None = None,
) -> AttackOutcome:
    """Square Attack on the margin loss, ``queries`` proposals after the initial point; each
    restart attacks only the samples still robust. ``on_step`` hears (queries done, planned).
    ``draws``: the random numbers, keyed by sample (default: the global generator); the window
    of each query is the same for every sample of the batch, as in the reference."""
    if x.ndim != 4:
        raise ConfigError("Square needs image batches (N, C, H, W)")
    if queries < 1:
        raise ConfigError(f"queries must be >= 1; got {queries}", field="queries")
    if norm not in ("linf", "l2"):
        raise ConfigError(f"norm must be 'linf' or 'l2'; got {norm!r}", field="norm")
    robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    x_out = x.clone()
    evaluations = 0
    run = _SquareRun(eps, norm, queries, p_init, rescale, precision)
    progress = StepCounter(restarts, queries, on_step)

    with frozen_for_attack(model), torch.no_grad():
        for r in range(restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            evaluations += run(
                model, x, y, robust, x_out, idx, progress.run(r), (draws or Draws()).at(r)
            )
        progress.finish()
    return AttackOutcome(robust, x_out, evaluations)


@dataclass(frozen=True)
class _SquareRun:
    eps: float
    norm: str
    queries: int
    p_init: float
    rescale: bool
    precision: Precision

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        robust: torch.Tensor,
        x_out: torch.Tensor,
        idx: torch.Tensor,
        on_query: Callable[[int], None],
        draws: Draws,
    ) -> int:
        """One run over the samples ``idx``; updates ``robust`` and ``x_out`` in place and
        returns the model evaluations it spent."""
        eps = self.eps
        x0, ya = x[idx], y[idx]
        # Keyed by the samples, which follow them as they leave.
        keyed = draws.rows(idx)
        if self.norm == "linf":
            # Vertical stripes of +-eps: the reference's initialisation.
            shape = (x0.shape[0], x0.shape[1], 1, x0.shape[3])
            stripes = eps * keyed.at(0).signs(shape, x.device)
            xb = (x0 + stripes).clamp(0.0, 1.0)
            propose = _linf_proposal
        else:
            xb = _l2_init(x0, eps, keyed.at(0))
            propose = _l2_proposal
        margin = _margin(model, xb, ya, self.precision)
        evaluations = int(idx.numel())
        # A query's signs, then (Linf) its first redraws: a one-channel window needs one in two
        # queries.
        drawn = 1 + (_REDRAWS_DRAWN if self.norm == "linf" else 0)
        block = torch.empty(len(idx), _SIGN_BLOCK, drawn, x0.shape[1], device=x.device)
        for q in range(self.queries):
            check_stop("Square")
            alive = margin > 0
            if not bool(alive.all()):
                robust[idx[~alive]] = False
                x_out[idx[~alive]] = xb[~alive]
                idx, x0, ya, xb, margin = idx[alive], x0[alive], ya[alive], xb[alive], margin[alive]
                keyed = keyed.rows(alive.nonzero().squeeze(1))
                block = block[alive]
            if idx.numel() == 0:
                return evaluations
            p = _p_selection(self.p_init, q, self.queries, self.rescale)
            if q % _SIGN_BLOCK == 0:
                block_shape = (len(idx), _SIGN_BLOCK, drawn, x0.shape[1])
                block = keyed.at(2, q // _SIGN_BLOCK).signs(block_shape, x.device)
            signs = block[:, q % _SIGN_BLOCK]
            x_new = propose(x0, xb, eps, p, keyed.at(1, q), signs)
            m_new = _margin(model, x_new, ya, self.precision)
            evaluations += int(idx.numel())
            better = m_new < margin
            margin = torch.where(better, m_new, margin)
            xb = torch.where(better.view(-1, 1, 1, 1), x_new, xb)
            on_query(q + 1)
        alive = margin > 0
        robust[idx[~alive]] = False
        x_out[idx] = xb
        return evaluations
