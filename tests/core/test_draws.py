"""The attacks' keyed random numbers: a sample's numbers are its own, whatever its batch, and
they look like the distributions they stand for."""

from __future__ import annotations

import math

import pytest
import torch

from cartl_core.attacks import apgd, robust_mask, square
from cartl_core.attacks.draws import Draws


def test_a_samples_numbers_do_not_depend_on_its_batch() -> None:
    d = Draws(torch.arange(100, 200), seed=5, stream=(2, 1))
    like = torch.zeros(100, 3, 4, 4)
    pick = torch.tensor([17, 3, 99])
    for kind in ("uniform", "normal"):
        whole = getattr(d, kind)(like)
        assert torch.equal(getattr(d.rows(pick), kind)(like[:3]), whole[pick])
    # A batch that holds the same keys in another order gives each key its numbers.
    shuffled = Draws(torch.arange(100, 200).flip(0), seed=5, stream=(2, 1))
    assert torch.equal(shuffled.uniform(like).flip(0), d.uniform(like))
    # The memory layout does not change which number lands on which element.
    cl = like.contiguous(memory_format=torch.channels_last)
    assert torch.equal(d.uniform(cl), d.uniform(like))
    assert d.uniform(cl).is_contiguous(memory_format=torch.channels_last)


def test_streams_seeds_and_keys_give_other_numbers() -> None:
    like = torch.zeros(64, 32)
    base = Draws(torch.arange(64), seed=1, stream=(0,))
    others = [base.at(1), Draws(torch.arange(64), seed=2, stream=(0,)),
              Draws(torch.arange(64, 128), seed=1, stream=(0,))]  # fmt: skip
    u = base.uniform(like)
    for other in others:
        v = other.uniform(like)
        assert float(torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1]) < 0.05
    assert base.at(3).shared_ints(1000, 4) == base.at(3).shared_ints(1000, 4)
    assert base.at(3).shared_ints(1000, 4) != base.at(4).shared_ints(1000, 4)


def test_the_numbers_have_their_distributions() -> None:
    d = Draws(torch.arange(2000), seed=11)
    like = torch.zeros(2000, 50)
    u = d.uniform(like)
    assert float(u.min()) > 0
    assert float(u.max()) < 1
    assert float(u.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(u.std()) == pytest.approx(math.sqrt(1 / 12), abs=0.005)
    # Neighbouring elements and neighbouring samples are uncorrelated.
    assert (
        abs(float(torch.corrcoef(torch.stack([u[:, :-1].flatten(), u[:, 1:].flatten()]))[0, 1]))
        < 0.01
    )
    assert abs(float(torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1])) < 0.01
    z = d.at(1).normal(like)
    assert float(z.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(z.std()) == pytest.approx(1.0, abs=0.01)
    assert float(z.pow(4).mean()) == pytest.approx(3.0, abs=0.1)
    s = d.at(2).signs((2000, 3, 1, 1), torch.device("cpu"))
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert float(s.mean()) == pytest.approx(0.0, abs=0.02)
    ints = [Draws(torch.arange(1), seed=i).shared_ints(10)[0] for i in range(2000)]
    counts = torch.bincount(torch.tensor(ints), minlength=10)
    assert int(counts.min()) > 150
    assert int(counts.max()) < 250


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_keyed_attacks_break_the_same_samples_in_any_batch(norm: str) -> None:
    """APGD, PGD and Square with keyed draws: attacking samples one at a time breaks the
    samples the whole batch breaks."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3)).eval()
    x, y = torch.rand(24, 3, 4, 4), torch.arange(24) % 3
    eps = 0.05 if norm == "linf" else 0.3
    keys = torch.arange(24)

    def run(idx: torch.Tensor) -> list[torch.Tensor]:
        d = Draws(keys[idx], seed=4)
        xs, ys = x[idx], y[idx]
        return [
            apgd(model, xs, ys, eps=eps, norm=norm, steps=5, draws=d).robust,
            robust_mask(model, xs, ys, eps=eps, alpha=eps / 4, steps=3, norm=norm, draws=d),
            square(model, xs, ys, eps=eps, norm=norm, queries=30, draws=d).robust,
        ]

    whole = run(keys)
    apart = [run(keys[i : i + 1]) for i in range(24)]
    for j, flags in enumerate(whole):
        assert torch.equal(flags, torch.cat([a[j] for a in apart])), j
    assert any(0 < int(f.sum()) < 24 for f in whole)
