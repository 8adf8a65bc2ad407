"""The statistics behind reported accuracies and compare's choice, against scipy's."""

from __future__ import annotations

import random

import pytest
from scipy import stats as scipy_stats

from cartl_core.stats import (
    accuracy_interval,
    discordant,
    holm,
    max_half_width,
    min_resolvable,
    pack_flags,
    sign_test,
    unpack_flags,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("k", "n"), [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (57, 120), (118, 120), (1, 2000)]
)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(k: int, n: int, confidence: float) -> None:
    ours = wilson_interval(k, n, confidence)
    ref = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert ours == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert 0 <= ours[0] <= k / n <= ours[1] <= 1


def test_known_interval_and_widths() -> None:
    # Wilson's 95% interval for 8 of 10 (Newcombe 1998, Table I: 0.4902-0.9433).
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert accuracy_interval(0.8, 10) == list(wilson_interval(8, 10))
    # The widest half-width: about 1.96 * 0.5 / sqrt(n), i.e. 8.8 points at 120, 6.9 at 200.
    assert max_half_width(120) == pytest.approx(0.0877, abs=5e-4)
    assert max_half_width(200) == pytest.approx(0.0688, abs=5e-4)
    low, high = wilson_interval(100, 200)
    assert (high - low) / 2 == pytest.approx(max_half_width(200))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(3, 2)


@pytest.mark.parametrize(("wins", "losses"), [(0, 0), (1, 0), (5, 1), (3, 9), (12, 2), (90, 60),
                                              (700, 640)])  # fmt: skip
def test_sign_test_is_scipy_exact_binomial(wins: int, losses: int) -> None:
    ours = sign_test(wins, losses)
    if wins + losses == 0:
        assert ours == 1.0
        return
    ref = scipy_stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue
    assert ours == pytest.approx(ref, rel=1e-9)


def test_min_resolvable_is_the_first_significant_margin() -> None:
    # 5 discordant samples: a 5-0 sweep has p = 1/32 < 0.05, 4-1 has p = 6/32 > 0.05.
    assert min_resolvable(5, 0.05) == 5
    # 4 discordant samples can never reach 5% (a sweep: 1/16).
    assert min_resolvable(4, 0.05) is None
    margin = min_resolvable(40, 0.05)
    assert margin is not None
    wins = (40 + margin) // 2
    assert sign_test(wins, 40 - wins) <= 0.05 < sign_test(wins - 1, 41 - wins)


def test_holm_steps_down() -> None:
    # m = 3 at 0.05: 0.01 <= 0.05/3, then 0.02 <= 0.05/2, then 0.04 <= 0.05.
    assert holm([0.04, 0.01, 0.02], 0.05) == [True, True, True]
    # The smallest fails its 0.05/3: nothing is rejected, not even the one below 0.05.
    assert holm([0.02, 0.04, 0.03], 0.05) == [False, False, False]
    assert holm([0.001, 0.5, 0.02], 0.05) == [True, False, True]
    assert holm([], 0.05) == []


def test_flags_pack_and_discordant_pairs() -> None:
    rng = random.Random(0)
    for n in (0, 1, 7, 8, 9, 2000):
        flags = [rng.random() < 0.3 for _ in range(n)]
        text = pack_flags(flags)
        assert unpack_flags(text, n) == flags
    assert len(pack_flags([True] * 2000)) == 336
    with pytest.raises(ValueError, match="not the 20 samples"):
        unpack_flags(pack_flags([True] * 9), 20)
    assert discordant([True, True, False, False], [True, False, True, True]) == (1, 2)
