"""compare's choice on synthetic per-sample flags: it keeps the preferred (cheaper) candidate
unless another is more robust beyond noise, and the noise-aware clean-accuracy limit."""

from __future__ import annotations

import importlib
import random

import pytest
import torch

from cartl_core import ConfigError, create_model
from cartl_core.compare import choose_candidate, plan_candidates, validation_split
from cartl_core.config import CompareConfig


def _flags(n: int, right: set[int]) -> list[bool]:
    return [i in right for i in range(n)]


def _pair(n: int, both: int, only_a: int, only_b: int) -> tuple[list[bool], list[bool]]:
    """Flags of two candidates on n images: ``both`` right for both, then ``only_a`` right for
    the first alone, then ``only_b`` for the second alone."""
    a = set(range(both + only_a))
    b = set(range(both)) | set(range(both + only_a, both + only_a + only_b))
    return _flags(n, a), _flags(n, b)


ALL_CLEAN = [True] * 200


def test_a_difference_within_the_noise_keeps_the_preferred_candidate() -> None:
    # 200 images: the second is 3 points more robust (13 images against 7 of the 20 on which
    # they disagree): p = 0.13, not beyond noise.
    first, second = _pair(200, both=54, only_a=7, only_b=13)
    choice = choose_candidate([ALL_CLEAN, ALL_CLEAN], [first, second], 0.05)
    assert choice.index == choice.preferred == 0
    assert not choice.resolved
    (comparison,) = choice.comparisons
    assert (comparison["wins"], comparison["losses"]) == (13, 7)
    assert comparison["p_value"] == pytest.approx(0.1316, abs=1e-4)
    assert comparison["better"] is False
    # 20 discordant images resolve a margin of 10 (15 against 5: p = 0.021): 5 points of 200.
    assert choice.resolution == pytest.approx(10 / 200)


def test_a_clear_difference_is_chosen() -> None:
    first, second = _pair(300, both=80, only_a=5, only_b=50)
    choice = choose_candidate([[True] * 300] * 2, [first, second], 0.05)
    assert choice.index == 1
    assert choice.resolved
    assert choice.comparisons[0]["better"] is True
    assert choice.comparisons[0]["p_value"] < 1e-9


def test_among_candidates_better_beyond_noise_the_most_robust_wins() -> None:
    n = 400
    preferred = _flags(n, set(range(100)))
    good = _flags(n, set(range(160)))
    better = _flags(n, set(range(200)))
    noise = _flags(n, set(range(95)) | set(range(300, 310)))  # 5 fewer, 10 more: within noise
    choice = choose_candidate([[True] * n] * 4, [preferred, good, noise, better], 0.05)
    assert choice.index == 3
    assert [c["better"] for c in choice.comparisons] == [True, False, True]


def test_the_preference_is_the_cost_then_the_grid() -> None:
    same = [True] * 50
    flags = [same] * 4
    # Unknown costs (an older file's): the grid's order.
    assert choose_candidate(flags, flags, 0.05, costs=[10.0, None, 5.0, 1.0]).order == [0, 1, 2, 3]
    choice = choose_candidate(flags, flags, 0.05, costs=[10.0, 11.0, 3.0, 3.5])
    assert choice.preference == "cost"
    # 3.0 and 3.5 are within 1.25x: equally cheap, so the grid's order; then 10 and 11.
    assert choice.order == [2, 3, 0, 1]
    assert choice.index == 2


def test_the_clean_limit_leaves_out_only_what_is_lower_beyond_noise() -> None:
    n = 200
    best = [True] * n
    slightly = _flags(n, set(range(n - 14)))  # 7 points lower: not beyond 5 points + noise
    far = _flags(n, set(range(n - 40)))  # 20 points lower: beyond it
    robust = [_flags(n, set(range(10))), _flags(n, set(range(60))), _flags(n, set(range(150)))]
    choice = choose_candidate([best, slightly, far], robust, 0.05)
    assert [d["index"] for d in choice.left_out] == [2]
    assert choice.left_out[0]["drop"] == pytest.approx(0.2)
    assert choice.left_out[0]["drop_low"] > 0.05
    # The one kept is more robust beyond noise (50 images against none): chosen.
    assert choice.eligible == [0, 1]
    assert choice.index == 1
    # With no clean drop allowed, anything lower beyond noise goes: only the cleanest is left.
    strict = choose_candidate([best, slightly, far], robust, 0.0)
    assert strict.eligible == [0]
    assert strict.index == 0


def test_equal_candidates_rarely_produce_a_winner() -> None:
    """The false-claim rate under no difference at all stays within the 5% asked for."""
    rng = random.Random(0)
    n, candidates, trials = 200, 4, 300
    claimed = 0
    for _ in range(trials):
        robust = [[rng.random() < 0.3 for _ in range(n)] for _ in range(candidates)]
        if choose_candidate([[True] * n] * candidates, robust, 0.05).resolved:
            claimed += 1
    # Holm over 3 comparisons at 5%: at most 5% in expectation (conservative here).
    assert claimed / trials <= 0.06


def test_bad_flags_are_refused() -> None:
    with pytest.raises(ConfigError, match="same validation images"):
        choose_candidate([[True], [True, False]], [[True], [True, False]], 0.05)
    with pytest.raises(ConfigError, match="flags for every candidate"):
        choose_candidate([], [], 0.05)
    for bad in (0.5, 1.0):
        with pytest.raises(ConfigError) as info:
            CompareConfig(confidence=bad)
        assert info.value.field == "confidence"
    with pytest.raises(ConfigError) as info:
        CompareConfig(min_val_samples=-1)
    assert info.value.field == "min_val_samples"


def test_the_validation_split_reaches_its_minimum_but_keeps_half_to_train() -> None:
    labels = torch.tensor([0] * 540 + [1] * 270 + [2] * 90)
    # 20% of 900 is 180: raised to 200, spread in proportion (120, 60, 20).
    held = validation_split(labels, 0.2, seed=0, min_samples=200)
    assert len(held.val) == 200
    assert torch.bincount(labels[held.val]).tolist() == [120, 60, 20]
    assert held.fraction == pytest.approx(200 / 900)
    # Never more than a third: 400 asked of 900 gives 300.
    assert len(validation_split(labels, 0.2, seed=0, min_samples=400).val) == 300
    # A fraction that already reaches the minimum gives the split it gives alone.
    alone = validation_split(labels, 0.5, seed=0)
    assert torch.equal(validation_split(labels, 0.5, seed=0, min_samples=200).val, alone.val)


def test_the_preference_counts_training_work_not_seconds() -> None:
    compare_module = importlib.import_module("cartl_core.compare")
    model = create_model("small-cnn", 4, in_channels=1, input_size=8, options={"fc_width": 16})
    config = CompareConfig(methods=("standard", "cartl", "adversarial"), ks=(2,), epochs=3,
                           batch_size=32, bn_presets=("trainable",))  # fmt: skip
    plan, _ = plan_candidates(model, config)
    work = compare_module._training_work(plan, config, 100)
    # 3 epochs of 4 batches; adversarial fine-tuning adds its PGD-7's 7 passes to each batch.
    assert dict(zip([c.method for c in plan], work, strict=True)) == {
        "standard": 12.0, "cartl": 12.0, "adversarial": 96.0,
    }  # fmt: skip
    flags = [[True] * 10] * 3
    order = choose_candidate(flags, flags, 0.05, costs=work).order
    assert [plan[i].method for i in order] == ["standard", "cartl", "adversarial"]
