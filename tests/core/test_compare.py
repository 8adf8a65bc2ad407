"""``compare``: the candidate plan, the validation split, the choice, and one small run."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

from cartl_core import ConfigError, create_model, load_model, read_description, save_checkpoint
from cartl_core.compare import (
    CompareEvent,
    choose_candidate,
    compare,
    plan_candidates,
    pretrained_k,
    validation_split,
)
from cartl_core.config import COMPARE_METHODS, CompareConfig

from .conftest import make_dataset

# The package exports the function ``compare``, which hides the module of that name.
compare_module = importlib.import_module("cartl_core.compare")


def _cnn(**options: Any) -> Any:
    return create_model("small-cnn", 4, in_channels=1, input_size=8, options=options or None)


# --- the choice: tests/core/test_compare_choice.py -----------------------------------------


# --- the plan ------------------------------------------------------------------------------


def test_names_are_readable_and_the_defaults_cover_every_method() -> None:
    plan, dropped = plan_candidates(_cnn(), CompareConfig(ks=(3,)))
    assert [c.name for c in plan] == [
        "standard-k3-source-stats",
        # The spectral-norm methods try keeping the source's BN statistics first, then their own.
        "cartl-k3-b0.4-source-stats",
        "neft-k3-b0.6-source-stats",
        "lwf-k3-trainable",
        "trades-k3-trainable",
        "cartl-k3-b0.4-frozen",
        "neft-k3-b0.6-trainable",
    ]
    assert [c.method for c in plan[:5]] == list(COMPARE_METHODS)
    assert dropped == []
    # TRADES (7-10x the others' training) is tried at the default k list's centre only.
    default_ks = plan_candidates(_cnn(fc_width=16), CompareConfig(max_candidates=99), centre_k=3)[0]
    assert [c.k for c in default_ks if c.method == "trades"] == [3]
    assert {c.k for c in default_ks if c.method == "standard"} == {3, 2, 4}


def test_default_ks_lie_around_the_pretraining_k_and_skip_weightless_blocks() -> None:
    config = CompareConfig(methods=("cartl",), bn_presets=("frozen",))
    # Global pooling: block T-2 (k = 2) has no weights, so k 2 would tune what k 1 tunes.
    pooled = _cnn(fc_width=0)
    assert [c.k for c in plan_candidates(pooled, config, centre_k=3)[0]] == [3, 4]
    assert [c.k for c in plan_candidates(pooled, config, centre_k=1)[0]] == [1]
    with_fc = _cnn(fc_width=16)
    assert [c.k for c in plan_candidates(with_fc, config, centre_k=2)[0]] == [2, 1, 3]
    # Centre beyond the model, or none recorded (TransferConfig's k 4): clipped to T = 5.
    assert [c.k for c in plan_candidates(with_fc, config, centre_k=9)[0]] == [5, 4]
    assert [c.k for c in plan_candidates(with_fc, config)[0]] == [4, 3, 5]


def test_the_budget_keeps_candidates_in_priority_order() -> None:
    config = CompareConfig(ks=(2, 3), norm_betas=(0.4, 1.0), max_candidates=5)
    plan, dropped = plan_candidates(_cnn(fc_width=16), config)
    # k first, then beta, then BN preset, then method.
    assert [c.name for c in plan] == [
        "standard-k2-source-stats",
        "cartl-k2-b0.4-source-stats",
        "neft-k2-b0.4-source-stats",
        "lwf-k2-trainable",
        "trades-k2-trainable",
    ]
    assert dropped[0].name == "cartl-k2-b0.4-frozen"
    # Per k (a given k list applies to every method): standard, lwf, trades, and neft and cartl
    # at 2 betas x 2 BN presets each.
    assert len(plan) + len(dropped) == 2 * (1 + 1 + 1 + 4 + 4)
    assert len({c.name for c in plan + dropped}) == len(plan) + len(dropped)


def test_bad_settings_name_their_field() -> None:
    with pytest.raises(ConfigError) as info:
        plan_candidates(_cnn(), CompareConfig(ks=(6,)))
    assert info.value.field == "ks"
    for kw, field in (
        ({"methods": ("magic",)}, "methods"),
        ({"methods": ()}, "methods"),
        ({"ks": (2, 2)}, "ks"),
        ({"bn_presets": ("nope",)}, "bn_presets"),
        ({"norm_betas": (0.0,)}, "norm_betas"),
        ({"max_candidates": 0}, "max_candidates"),
        ({"max_clean_drop": 1.5}, "max_clean_drop"),
        ({"val_fraction": 1.0}, "val_fraction"),
    ):
        with pytest.raises(ConfigError) as info:
            CompareConfig(**kw)
        assert info.value.field == field, kw


def test_pretrained_k_is_read_from_a_pretraining_header_only() -> None:
    assert pretrained_k({"training": {"kind": "pretrain", "k": 3}}) == 3
    assert pretrained_k({"training": {"kind": "transfer", "k": 3}}) is None
    assert pretrained_k({"training": {}}) is None
    assert pretrained_k(None) is None


# --- the split -----------------------------------------------------------------------------


def test_validation_split_is_stratified_disjoint_and_seeded() -> None:
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 5 + [3])
    held = validation_split(labels, 0.2, seed=0)
    train, val = set(held.train.tolist()), set(held.val.tolist())
    assert not train & val
    assert train | val == set(range(len(labels)))
    counts = torch.bincount(labels[held.val], minlength=4).tolist()
    # A fifth of each class, at least one, and a class of one image only trains.
    assert counts == [2, 4, 1, 0]
    again = validation_split(labels, 0.2, seed=0)
    assert torch.equal(again.val, held.val)
    assert not torch.equal(validation_split(labels, 0.2, seed=1).val, held.val)


# --- a whole (small) comparison ------------------------------------------------------------


def test_compare_chooses_on_validation_data_and_writes_every_candidate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_dataset(num_classes=3, n_train=96, n_test=48)
    # A source with fewer classes than the target: every candidate gets a new classifier.
    source = create_model("small-cnn", 2, in_channels=1, input_size=8, options={"fc_width": 16})
    seen: list[Any] = []
    real_transfer = compare_module.transfer

    def spy(model: Any, fit_data: Any, *args: Any, **kw: Any) -> Any:
        seen.append(fit_data)
        return real_transfer(model, fit_data, *args, **kw)

    monkeypatch.setattr(compare_module, "transfer", spy)
    config = CompareConfig(
        eps=0.05, methods=("standard", "cartl"), ks=(2,), epochs=1, batch_size=32,
        augmentation="none", max_candidates=2, min_val_samples=0,
    )  # fmt: skip
    events: list[CompareEvent] = []
    result = compare(
        source, data, config, device="cpu", seed=3, out_dir=tmp_path, on_progress=events.append
    )

    names = ["standard-k2-source-stats", "cartl-k2-b0.4-source-stats"]
    assert [c.name for c in result.candidates] == names
    # Candidates trained on the training split less the validation split, chosen on the latter.
    held = validation_split(data.train.labels, config.val_fraction, seed=3)
    assert len(seen) == 2
    for fit in seen:
        assert torch.equal(fit.train.images, data.train.images[held.train])
        assert torch.equal(fit.test.images, data.train.images[held.val])
        assert torch.equal(fit.test.labels, data.train.labels[held.val])
    assert result.selection["val_samples"] == len(held.val)
    assert result.selection["train_samples"] == len(data.train) - len(held.val)
    # Chosen by the paired rule on every candidate's flags on the same validation images.
    flags = [c.flags() for c in result.candidates]
    choice = choose_candidate(
        [clean for clean, _ in flags],
        [robust for _, robust in flags],
        config.max_clean_drop,
        # The same training work (epochs, batches, no training attack): the grid's order.
        costs=[1.0] * len(result.candidates),
    )
    assert result.chosen is result.candidates[choice.index]
    assert result.model is result.chosen.model
    selection = result.selection
    # The rule, its confidence and the validation size are stated, in the sentence too.
    assert selection["confidence"] == 0.95
    assert "McNemar" in selection["rule"]
    assert f"{len(held.val)} validation images" in selection["reason"]
    assert "95%" in selection["reason"]
    assert selection["preferred"] == result.candidates[choice.preferred].name
    assert [c["name"] for c in selection["comparisons"]] == [
        result.candidates[c["index"]].name for c in choice.comparisons
    ]
    for c in result.candidates:
        assert 0 <= c.val_robust <= c.val_clean <= 1
        assert 0 <= c.test_robust <= c.test_clean <= 1
        assert (c.val_samples, c.test_samples) == (len(held.val), len(data.test))
        clean, robust = c.flags()
        assert sum(clean) == round(c.val_clean * len(held.val))
        assert sum(robust) == round(c.val_robust * len(held.val))
        assert all(cl or not r for cl, r in zip(clean, robust, strict=True))  # robust => clean
        row = c.to_dict()
        for key in ("val_clean", "val_robust", "test_clean", "test_robust"):
            low, high = row[f"{key}_interval"]
            assert low <= row[key] <= high
        assert c.path == tmp_path / f"{c.name}.safetensors"
        description = read_description(c.path)
        assert description is not None
        assert description["metrics"]["val_robust"] == c.val_robust
        assert description["metrics"]["val_robust_flags"] == c.val_robust_flags
        assert description["training"]["method"] == c.method
        assert "val_accuracy" in c.history[-1]
    assert not list(tmp_path.glob("*.state"))

    # The estimate comes first, before any training, and progress ends at 1.
    assert events[0].stage == "estimate"
    assert events[0].estimate is result.estimate
    assert result.estimate.train_seconds > 0
    assert result.estimate.audit_seconds_max > 0
    assert [r["name"] for r in result.estimate.per_candidate] == names
    assert [e.candidate for e in events if e.stage == "candidate-done"] == [0, 1]
    assert events[-1].fraction == 1.0
    assert {e.stage for e in events} >= {"train", "audit-val", "audit-test"}

    # A rerun with the same settings and data reuses the files instead of training again.
    seen.clear()
    again = compare(source, data, config, device="cpu", seed=3, out_dir=tmp_path)
    assert seen == []
    assert all(c.reused for c in again.candidates)
    assert [c.to_dict()["val_robust"] for c in again.candidates] == [
        c.val_robust for c in result.candidates
    ]
    assert [c.val_robust_flags for c in again.candidates] == [
        c.val_robust_flags for c in result.candidates
    ]
    assert again.chosen.name == result.chosen.name
    assert again.selection["reason"] == result.selection["reason"]

    # A file written before flags were recorded: its weights are reused, its validation audit
    # runs again and gives the same flags.
    first = result.candidates[0]
    assert first.path is not None
    old = read_description(first.path)
    assert old is not None
    metrics = {k: v for k, v in old["metrics"].items() if not k.endswith("_flags")}
    save_checkpoint(load_model(first.path), first.path, class_names=data.class_names,
                    training=old["training"], metrics=metrics)  # fmt: skip
    redone = compare(source, data, config, device="cpu", seed=3, out_dir=tmp_path)
    assert seen == []
    assert redone.candidates[0].val_robust_flags == first.val_robust_flags
    assert redone.chosen.name == result.chosen.name

    # Numbers measured by other attacks are not reused: other settings, or the same settings
    # after a change to the attacks' code, train and audit again.
    monkeypatch.setattr(compare_module, "SELECTION_ATTACKS", "apgd-ce")
    compare(source, data, config, device="cpu", seed=3, out_dir=tmp_path)
    assert len(seen) == 2
    seen.clear()
    monkeypatch.setattr(compare_module, "ATTACKS_REVISION", compare_module.ATTACKS_REVISION + 1)
    compare(source, data, config, device="cpu", seed=3, out_dir=tmp_path)
    assert len(seen) == 2
