"""FAB-T: its box-constrained projections against exact solvers, its strength against an
independent FAB (torchattacks), its early exit against a plain loop of the reference, and the
properties every attack here has (ball, box, caller's state, progress)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

from cartl_core import ConfigError
from cartl_core.attacks import AttackOutcome, fab_targeted
from cartl_core.attacks.fab import _project_l2, _project_linf
from cartl_core.errors import CancelledError

from .conftest import make_dataset
from .masked_models import tiny_cnn, train

#: The training radius; the attacks run at twice that (Linf) or at EPS_L2, where about half the
#: test samples are robust, so that the comparisons rest on many samples either way.
EPS = 0.05
EPS_LINF = 0.1
EPS_L2 = 0.5
CLASSES = 4

Projection = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _problem(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A point of the box (some coordinates on its faces), a hyperplane normal with some zero
    coordinates, and an offset that the box reaches in about 3 cases out of 4."""
    d = int(rng.integers(5, 13))
    p = rng.random(d)
    p[rng.random(d) < 0.15] = 0.0
    p[rng.random(d) < 0.15] = 1.0
    w = rng.normal(size=d)
    w[rng.random(d) < 0.2] = 0.0
    lo, hi = np.minimum(w, 0).sum(), np.maximum(w, 0).sum()
    return p, w, float(rng.uniform(lo - 0.2 * (hi - lo), hi + 0.2 * (hi - lo)))


def _linf_optimum(p: np.ndarray, w: np.ndarray, b: float) -> float:
    """min t subject to -t <= d_i <= t, the box and the hyperplane, as a linear program."""
    d = len(p)
    bounds_t = np.c_[np.eye(d), -np.ones(d)]
    result = linprog(
        np.r_[np.zeros(d), 1.0],
        A_ub=np.r_[bounds_t, np.c_[-np.eye(d), -np.ones(d)]],
        b_ub=np.zeros(2 * d),
        A_eq=np.r_[w, 0.0][None],
        b_eq=[b - w @ p],
        bounds=[*zip(-p, 1 - p, strict=True), (0, None)],
    )
    assert result.success
    return float(result.fun)


def _l2_optimum(p: np.ndarray, w: np.ndarray, b: float) -> float:
    """min ||d||^2 subject to the box and the hyperplane, by SLSQP from several starts."""
    best = np.inf
    for start in (np.zeros_like(p), 0.5 - p, (w > 0) - p):
        result = minimize(
            lambda z: z @ z,
            start,
            jac=lambda z: 2 * z,
            constraints=[{"type": "eq", "fun": lambda z: w @ (p + z) - b, "jac": lambda z: w}],
            bounds=list(zip(-p, 1 - p, strict=True)),
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        if result.success and abs(w @ (p + result.x) - b) < 1e-9:
            best = min(best, float(np.sqrt(result.fun)))
    return best


@pytest.mark.parametrize(
    ("project", "optimum", "order"),
    [(_project_linf, _linf_optimum, np.inf), (_project_l2, _l2_optimum, 2)],
    ids=["linf", "l2"],
)
def test_projection_is_the_exact_minimum_or_the_closest_corner(
    project: Projection, optimum: Callable[[np.ndarray, np.ndarray, float], float], order: float
) -> None:
    rng = np.random.default_rng(0)
    problems = [_problem(rng) for _ in range(300)]
    infeasible = 0
    for p, w, b in problems:
        d = project(*(torch.tensor(a)[None] for a in (p, w, np.array(b))))[0].numpy()
        z = p + d
        assert z.min() >= -1e-12
        assert z.max() <= 1 + 1e-12
        assert np.all(d[w == 0] == 0)
        lo, hi = np.minimum(w, 0).sum(), np.maximum(w, 0).sum()
        if lo <= b <= hi:
            assert w @ z == pytest.approx(b, abs=1e-9)
            assert np.linalg.norm(d, order) == pytest.approx(optimum(p, w, b), abs=1e-6)
        else:
            infeasible += 1
            up = b > hi  # the box pushed as far as it goes towards the hyperplane
            corner = np.where(w > 0, float(up), float(not up))
            assert np.array_equal(z[w != 0], corner[w != 0])
    assert 30 < infeasible < 270  # both kinds were tested


def test_projection_batches_rows_independently() -> None:
    torch.manual_seed(0)
    p, w = torch.rand(64, 300), torch.randn(64, 300)
    w[:, ::7] = 0
    b = (w * torch.rand(64, 300)).sum(1)
    for project in (_project_linf, _project_l2):
        whole = project(p, w, b)
        rows = torch.cat([project(p[i : i + 1], w[i : i + 1], b[i : i + 1]) for i in range(64)])
        assert torch.allclose(whole, rows)
        assert torch.allclose(((p + whole) * w).sum(1), b, atol=1e-4)


def test_projection_of_degenerate_rows_is_finite() -> None:
    """A zero normal, a point already on the hyperplane, and a normal so tiny (a subnormal
    float) that its L2 breakpoint overflows: nothing moves but what must, and nothing is NaN."""
    torch.manual_seed(0)
    p, w = torch.rand(3, 20), torch.zeros(3, 20)
    w[1, 3] = 1e-42
    w[2] = torch.randn(20)
    b = (w * p).sum(1)
    b[1] += 1.0
    for project in (_project_linf, _project_l2):
        d = project(p, w, b)
        assert bool(d.isfinite().all())
        assert not bool(d[[0, 2]].any())
        assert d[1, 3] == 1 - p[1, 3]  # out of reach: the corner
        assert int(d[1].count_nonzero()) == 1


@pytest.fixture(scope="module")
def partly_robust() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The tiny CNN adversarially trained (PGD-3) at EPS: robust on some test samples and not on
    others. Returns the clean-correct test samples only."""
    torch.manual_seed(0)
    data = make_dataset(num_classes=CLASSES, n_train=256, n_test=96, noise=0.2)
    model = train(tiny_cnn(CLASSES), data.train.images, data.train.labels, epochs=40, eps=EPS)
    x, y = data.test.float_images(), data.test.labels
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    return model, x[correct], y[correct]


def _distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _check_outcome(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: AttackOutcome, eps: float, norm: str
) -> None:
    broken = ~out.robust
    with torch.no_grad():
        assert bool((model(out.x_adv[broken]).argmax(1) != y[broken]).all())
    assert bool((_distance(out.x_adv - x, norm)[broken] <= eps + 1e-6).all())
    assert torch.equal(out.x_adv[~broken], x[~broken])
    assert float(out.x_adv.min()) >= 0.0
    assert float(out.x_adv.max()) <= 1.0


@pytest.mark.parametrize(
    ("norm", "eps", "ta_norm"), [("linf", EPS_LINF, "Linf"), ("l2", EPS_L2, "L2")]
)
def test_at_least_as_strong_as_torchattacks_fab(partly_robust, norm, eps, ta_norm) -> None:  # type: ignore[no-untyped-def]
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = partly_robust
    start = time.perf_counter()
    ours = fab_targeted(model, x, y, eps=eps, norm=norm)
    ours_s = time.perf_counter() - start
    _check_outcome(model, x, y, ours, eps, norm)
    reference = torchattacks.FAB(
        model, norm=ta_norm, eps=eps, steps=100, n_restarts=1, multi_targeted=True,
        n_classes=CLASSES, seed=0,
    )  # fmt: skip
    start = time.perf_counter()
    x_ref = reference(x, y)
    ref_s = time.perf_counter() - start
    with torch.no_grad():
        ref_robust = int((model(x_ref).argmax(1) == y).sum())
    ours_robust = int(ours.robust.sum())
    print(f"{norm}: robust {ours_robust} (ours, {ours_s:.2f} s) vs {ref_robust} (torchattacks, "
          f"{ref_s:.2f} s) of {len(y)}; ours spent {ours.evaluations} evaluations")  # fmt: skip
    assert 0 < ref_robust < len(y)
    assert 0 < ours_robust < len(y)
    assert ours_robust <= ref_robust + max(1, round(0.01 * len(y)))


def _slow_reference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
    restarts: int, targets: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The reference's loop as written: a separate forward classifies every iterate, no sample
    leaves a run early, the smallest adversarial norm decides at the end of each run. Returns the
    robust flags and, for each broken sample, its first adversarial iterate within eps."""
    project = _project_linf if norm == "linf" else _project_l2
    with torch.no_grad():
        logits = model(x)
    robust: torch.Tensor = logits.argmax(1) == y
    ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
    first = x.clone()
    for t in range(min(targets, logits.shape[1] - 1)):
        for r in range(restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            x0, ya, target = x[idx], y[idx], ranked[idx, t]
            x1 = x0.clone()
            if r > 0:
                if norm == "linf":
                    u = torch.rand_like(x0) * 2 - 1
                    u = u / u.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
                else:
                    u = torch.randn_like(x0)
                    u = u / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                x1 = (x0 + eps / 2 * u).clamp(0, 1)
            smallest = torch.full((len(idx),), float("inf"))
            for _ in range(steps):
                xg = x1.clone().requires_grad_(True)
                z = model(xg)
                f = z.gather(1, target[:, None]).squeeze(1) - z.gather(1, ya[:, None]).squeeze(1)
                (g,) = torch.autograd.grad(f.sum(), xg)
                w = g.flatten(1)
                b = (w * x1.flatten(1)).sum(1) - f.detach()
                d1 = project(x1.flatten(1), w, b).view_as(x1)
                d2 = project(x0.flatten(1), w, b).view_as(x1)
                a1 = _distance(d1, norm).clamp_min(1e-8).view(-1, 1, 1, 1)
                a2 = _distance(d2, norm).clamp_min(1e-8).view(-1, 1, 1, 1)
                alpha = (a1 / (a1 + a2)).clamp(0, 0.1)
                x1 = ((x1 + 1.05 * d1) * (1 - alpha) + (x0 + 1.05 * d2) * alpha).clamp(0, 1)
                with torch.no_grad():
                    adv = model(x1).argmax(1) != ya
                dist = _distance(x1 - x0, norm)
                hit = (adv & (dist <= eps + 1e-6) & (smallest > eps + 1e-6)).nonzero().squeeze(1)
                first[idx[hit]] = x1[hit]
                smallest = torch.where(adv, smallest.minimum(dist), smallest)
                x1 = torch.where(adv.view(-1, 1, 1, 1), x0 + 0.9 * (x1 - x0), x1)
            robust[idx[smallest <= eps + 1e-6]] = False
    return robust, first


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_early_exit_and_shared_forward_change_nothing(partly_robust, norm) -> None:  # type: ignore[no-untyped-def]
    model, x, y = partly_robust
    x, y = x[:40], y[:40]
    eps = EPS_LINF if norm == "linf" else EPS_L2
    torch.manual_seed(5)
    slow, first = _slow_reference(model, x, y, eps=eps, norm=norm, steps=25, restarts=2, targets=3)
    torch.manual_seed(5)
    fast = fab_targeted(model, x, y, eps=eps, norm=norm, steps=25, restarts=2, targets=3)
    assert 0 < int(slow.sum()) < len(y)
    assert torch.equal(fast.robust, slow)
    # The same trajectories: each broken sample leaves at the reference's first in-ball iterate.
    assert torch.allclose(fast.x_adv, first, atol=1e-5)
    # Every run at full cost would be 2 evaluations per sample and step.
    assert fast.evaluations < 2 * 25 * 6 * len(y)


def test_tiny_eps_leaves_every_correct_sample_robust(partly_robust) -> None:  # type: ignore[no-untyped-def]
    model, x, y = partly_robust
    for norm in ("linf", "l2"):
        out = fab_targeted(model, x, y, eps=1e-4, norm=norm, steps=20)
        assert bool(out.robust.all())
        assert torch.equal(out.x_adv, x)


def test_misclassified_input_is_its_own_adversarial_example(partly_robust) -> None:  # type: ignore[no-untyped-def]
    model, x, y = partly_robust
    wrong = (y[:8] + 1) % CLASSES
    out = fab_targeted(model, x[:8], wrong, eps=1e-4, steps=3)
    assert not bool(out.robust.any())
    assert torch.equal(out.x_adv, x[:8])
    assert out.evaluations == 8  # the clean forward only


def test_binary_model_is_broken() -> None:
    torch.manual_seed(0)
    data = make_dataset(num_classes=2, n_train=128, n_test=32)
    model = train(tiny_cnn(2), data.train.images, data.train.labels, epochs=30)
    x, y = data.test.float_images(), data.test.labels
    calls: list[tuple[int, int]] = []
    out = fab_targeted(model, x, y, eps=0.2, steps=20, on_step=lambda d, t: calls.append((d, t)))
    assert int((~out.robust).sum()) > len(y) // 2
    _check_outcome(model, x, y, out, 0.2, "linf")
    assert calls[-1] == (20, 20)  # one target: the other class


def test_restores_mode_requires_grad_and_leaves_no_gradients(partly_robust) -> None:  # type: ignore[no-untyped-def]
    model, x, y = partly_robust
    model.zero_grad(set_to_none=True)  # torchattacks' FAB leaves parameter gradients
    model.train()
    model[0].requires_grad_(False)
    try:
        fab_targeted(model, x[:6], y[:6], eps=EPS, norm="l2", steps=3, restarts=2)
        assert model.training
        assert not any(p.requires_grad for p in model[0].parameters())
        assert all(p.requires_grad for p in model[2].parameters())
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.requires_grad_(True)
        model.eval()


def test_on_step_counts_to_the_total_even_after_an_early_exit(partly_robust) -> None:  # type: ignore[no-untyped-def]
    model, x, y = partly_robust
    calls: list[tuple[int, int]] = []
    out = fab_targeted(
        model, x, y, eps=1.0, steps=10, restarts=2, on_step=lambda d, t: calls.append((d, t))
    )
    assert not bool(out.robust.any())
    total = 3 * 2 * 10
    assert len(calls) < total  # the runs left with no sample were skipped
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})
    assert all(t == total for _, t in calls)


def test_exception_from_on_step_propagates_and_restores_the_model(partly_robust) -> None:  # type: ignore[no-untyped-def]
    model, x, y = partly_robust

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise CancelledError("stopped")

    model.zero_grad(set_to_none=True)
    model.train()
    try:
        with pytest.raises(CancelledError):
            fab_targeted(model, x, y, eps=EPS, steps=5, on_step=stop)
        assert model.training
        assert all(p.requires_grad for p in model.parameters())
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"eps": 0.0}, "eps"),
        ({"norm": "l1"}, "norm"),
        ({"steps": 0}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"targets": 0}, "targets"),
        ({"alpha_max": 1.5}, "alpha_max"),
        ({"eta": 0.5}, "eta"),
        ({"beta": 0.0}, "beta"),
        ({"precision": "fp16"}, "precision"),
    ],
)
def test_bad_settings(kw: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"eps": 0.1, **kw}
    with pytest.raises(ConfigError) as info:
        fab_targeted(tiny_cnn(3), torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), **args)  # type: ignore[arg-type]
    assert info.value.field == field
