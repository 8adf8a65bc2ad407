"""What compare's candidates cost: measured per candidate, estimated before training, and a
budget (``max_cost_seconds``) that drops what does not fit; adversarial fine-tuning among them."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

from cartl_core import (
    AttackConfig,
    ConfigError,
    FDMConfig,
    ScheduleConfig,
    create_model,
    pretrain,
)
from cartl_core.compare import (
    CostEstimate,
    candidate_table,
    compare,
    estimate_cost,
    plan_candidates,
)
from cartl_core.config import CompareConfig, TraceConfig
from cartl_core.models import BlockModel

from .conftest import make_dataset

# The module (``cartl_core.compare`` the attribute is the function).
compare_module = importlib.import_module("cartl_core.compare")


def _row(name: str, train: float, val_audit: float) -> dict[str, object]:
    return {
        "name": name,
        "train_batches": 1,
        "train_seconds": train,
        "audit_seconds_max": 3 * val_audit,
        "val_audit_seconds_max": val_audit,
        "cost_seconds": train + val_audit,
    }


def test_the_budget_keeps_candidates_in_order_while_they_fit() -> None:
    rows = [_row("a", 4, 1), _row("b", 30, 1), _row("c", 2, 1), _row("d", 3, 1)]
    estimate = CostEstimate(4, 39.0, 12.0, rows, device="cpu, 2 threads")
    # a (5) fits; b (31) would make 36; c (3) still fits (8); d (4) would make 12.
    fitted = estimate.within_budget(10.0)
    assert [r["name"] for r in fitted.per_candidate] == ["a", "c"]
    assert [d["name"] for d in fitted.over_budget] == ["b", "d"]
    assert (fitted.candidates, fitted.train_seconds, fitted.audit_seconds_max) == (2, 6.0, 6.0)
    assert fitted.budget_seconds == 10.0
    assert "estimated 31 s" in fitted.over_budget[0]["reason"]
    assert "5.0 s of max_cost 10 s left" in fitted.over_budget[0]["reason"]
    text = fitted.text()
    assert "2 candidates on cpu, 2 threads" in text
    assert "dropped to fit max_cost 10 s" in text
    assert "b (31 s)" in text
    as_dict = fitted.to_dict()
    assert as_dict["over_budget"] == fitted.over_budget
    assert as_dict["budget_seconds"] == 10.0
    # No budget: everything stays, and nothing is said about one.
    assert estimate.within_budget(None) is estimate
    assert "dropped" not in estimate.text()


def test_adversarial_and_trades_candidates_train_at_the_comparisons_threat_model() -> None:
    model = create_model("small-cnn", 4, in_channels=1, input_size=8, options={"fc_width": 16})
    methods = ("standard", "adversarial", "trades")
    config = CompareConfig(eps=0.1, norm="l2", methods=methods, ks=(2, 5))
    plan, _ = plan_candidates(model, config)
    assert [c.name for c in plan] == [
        "standard-k2-source-stats",
        "adversarial-k2-trainable",
        "trades-k2-trainable",
        "standard-k5-source-stats",
        "adversarial-k5-trainable",
        "trades-k5-trainable",
    ]
    for cand in (plan[1], plan[2]):
        attack = cand.transfer_config(config).resolved_attack()
        assert attack is not None
        assert (attack.eps, attack.norm, attack.steps, attack.step_size) == (0.1, "l2", 7, 0.025)
    assert plan[2].transfer_config(config).trades_beta == 6.0
    assert plan[0].transfer_config(config).resolved_attack() is None


@pytest.fixture(scope="module")
def source() -> BlockModel:
    """A source that classifies (briefly trained on clean data): a model that predicts one class
    whatever the input keeps every sample it gets right through all 300 attack steps of the
    audits, which makes a small comparison slow."""
    torch.manual_seed(0)
    clean = AttackConfig(eps=0.01, steps=0)  # no attack steps: clean training
    config = FDMConfig(
        k=2, fdm_lambda=0, attack=clean, augmentation="none", trace=TraceConfig(samples=0),
        schedule=ScheduleConfig(epochs=3, batch_size=32, lr=0.05),
    )  # fmt: skip
    data = make_dataset(num_classes=2, n_train=64, n_test=16, seed=1)
    return pretrain(data, "small-cnn", config, device="cpu").model


# A radius that breaks these non-robust candidates in the audits' first steps.
CONFIG = CompareConfig(
    eps=0.3, methods=("standard", "adversarial"), ks=(2,), epochs=2, batch_size=32,
    augmentation="none",
)  # fmt: skip


def test_every_candidate_records_its_measured_cost(source: BlockModel, tmp_path: Path) -> None:
    data = make_dataset(num_classes=3, n_train=96, n_test=48)
    result = compare(source, data, CONFIG, device="cpu", seed=0, out_dir=tmp_path)
    assert [c.method for c in result.candidates] == ["standard", "adversarial"]
    for c in result.candidates:
        assert c.train_seconds > 0
        assert c.audit_seconds > 0
        assert c.cost_seconds == c.train_seconds + c.audit_seconds
        # The test audit is outside the cost, inside the total.
        assert c.seconds >= c.cost_seconds
        assert c.device == f"cpu, {torch.get_num_threads()} threads"
        row = c.to_dict()
        assert (row["train_seconds"], row["audit_seconds"], row["cost_seconds"]) == (
            c.train_seconds, c.audit_seconds, c.cost_seconds,
        )  # fmt: skip
    adversarial = result.candidates[1]
    assert adversarial.training["attack"]["eps"] == CONFIG.eps
    assert "adv_accuracy" in adversarial.history[-1]
    # The estimate times adversarial fine-tuning's step with its 7 PGD steps.
    est = {r["name"]: r for r in result.estimate.per_candidate}
    assert est[adversarial.name]["train_seconds"] > est[result.candidates[0].name]["train_seconds"]
    assert all(r["cost_seconds"] > r["train_seconds"] for r in est.values())
    assert result.estimate.device == result.candidates[0].device
    # The table shows the cost beside the accuracies.
    table = candidate_table([c.to_dict() for c in result.candidates], result.chosen.name)
    assert "cost s" in table.splitlines()[0]
    assert f"{adversarial.cost_seconds:.1f}" in table
    # A reused candidate carries the cost its first run measured.
    again = compare(source, data, CONFIG, device="cpu", seed=0, out_dir=tmp_path)
    assert all(c.reused for c in again.candidates)
    assert [c.cost_seconds for c in again.candidates] == [c.cost_seconds for c in result.candidates]
    assert [c.device for c in again.candidates] == [c.device for c in result.candidates]


def test_max_cost_drops_before_training_what_does_not_fit(
    source: BlockModel, tmp_path: Path
) -> None:
    data = make_dataset(num_classes=3, n_train=96, n_test=48)
    # Nothing fits a microsecond: refused before anything trains, naming the option.
    with pytest.raises(ConfigError, match="no candidate fits max_cost") as info:
        compare(source, data, CONFIG.with_(max_cost_seconds=1e-6), device="cpu", out_dir=tmp_path)
    assert info.value.field == "max_cost_seconds"
    assert "the cheapest, standard-k2-source-stats" in str(info.value)
    assert not list(tmp_path.iterdir())
    # A budget that holds everything drops nothing and says it was applied; what
    # max_candidates cut, the estimate says too.
    config = CONFIG.with_(max_cost_seconds=1e6, max_candidates=1)
    result = compare(source, data, config, device="cpu")
    assert [c.name for c in result.candidates] == ["standard-k2-source-stats"]
    assert result.estimate.budget_seconds == 1e6
    assert result.estimate.over_budget == []
    assert result.estimate.beyond_max_candidates == ["adversarial-k2-trainable"]
    assert "1 more beyond max_candidates not trained: adversarial-k2-trainable" in (
        result.estimate.text()
    )
    assert result.dropped == ["adversarial-k2-trainable"]
    with pytest.raises(ConfigError) as info:
        CompareConfig(max_cost_seconds=0)
    assert info.value.field == "max_cost_seconds"


def test_a_cpu_run_without_a_budget_gets_the_cpu_default_and_says_so(
    source: BlockModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_dataset(num_classes=3, n_train=96, n_test=48)
    # The real default (2 h) holds this tiny grid whole; it is applied all the same.
    result = compare(source, data, CONFIG.with_(max_candidates=1), device="cpu")
    assert (result.estimate.budget_seconds, result.estimate.budget_default) == (7200.0, True)
    assert result.estimate.over_budget == []

    # A default that holds only the cheap candidate drops the costly one and names the default:
    # set from this run's own estimate, which compare reads the default after.
    def estimate_then_shrink_the_default(*args: Any, **kw: Any) -> CostEstimate:
        est = estimate_cost(*args, **kw)
        cost = {r["name"]: r["cost_seconds"] for r in est.per_candidate}
        assert cost["adversarial-k2-trainable"] > cost["standard-k2-source-stats"]
        monkeypatch.setattr(compare_module, "CPU_MAX_COST_SECONDS",
                            cost["standard-k2-source-stats"] * 1.01)  # fmt: skip
        return est

    monkeypatch.setattr(compare_module, "estimate_cost", estimate_then_shrink_the_default)
    result = compare(source, data, CONFIG, device="cpu")
    assert [c.name for c in result.candidates] == ["standard-k2-source-stats"]
    assert [d["name"] for d in result.estimate.over_budget] == ["adversarial-k2-trainable"]
    assert "(the CPU default; max_cost sets another)" in result.estimate.text()
    # A budget the run names is its own.
    named = compare(source, data, CONFIG.with_(max_cost_seconds=1e6), device="cpu")
    assert len(named.candidates) == 2
    assert not named.estimate.budget_default
    assert "CPU default" not in named.estimate.text()


def test_transfer_on_frozen_features_gives_the_same_model(source: BlockModel) -> None:
    """Training the tuned part on the frozen part's features computed once is the same training:
    the same weights bit for bit and the same history (on the CPU, where a sample's features do
    not depend on its batch)."""
    from cartl_core.config import TransferConfig
    from cartl_core.data import Augmentation
    from cartl_core.training import transfer
    from cartl_core.training.transfer import frozen_features, shares_frozen_part

    data = make_dataset(num_classes=3, n_train=96, n_test=32)
    schedule = ScheduleConfig(epochs=3, batch_size=32, lr=0.05)
    for method, bn in (
        ("standard", "source-stats"),
        ("neft", "trainable"),
        ("cartl", "all-source"),
    ):
        tc = TransferConfig(method=method, k=2, bn=bn, schedule=schedule, augmentation="none")  # type: ignore[arg-type]
        assert shares_frozen_part(tc, Augmentation.none()) is None
        plain = transfer(source, data, tc, device="cpu", seed=3)
        features = frozen_features(source, data.train, 2)
        shared = transfer(source, data, tc, device="cpu", seed=3, features=features)
        a, b = plain.model.state_dict(), shared.model.state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a), method

        def numbers(history: Any) -> list[dict[str, Any]]:
            return [{k: v for k, v in h.to_dict().items() if "seconds" not in k} for h in history]

        assert numbers(plain.history) == numbers(shared.history), method
        assert plain.training == shared.training


def test_what_cannot_share_the_frozen_features_says_why(source: BlockModel) -> None:
    from cartl_core.config import TransferConfig
    from cartl_core.data import Augmentation
    from cartl_core.training import transfer
    from cartl_core.training.transfer import frozen_features, shares_frozen_part

    none, crops = Augmentation.none(), Augmentation.from_name("crop-flip", (3, 32, 32))
    cases = {
        ("cartl", "frozen", none): "re-estimates or trains the frozen blocks' BatchNorm",
        ("lwf", None, none): "its second phase trains the whole model",
        ("trades", None, none): "attacked through the whole model",
        ("adversarial", None, none): "attacked through the whole model",
        ("standard", None, crops): "augmented before the frozen part",
    }
    for (method, bn, augmentation), why in cases.items():
        tc = TransferConfig(method=method, k=2, bn=bn)  # type: ignore[arg-type]
        assert why in str(shares_frozen_part(tc, augmentation)), (method, bn)
    # Handed features anyway: refused, saying why, before anything trains.
    data = make_dataset(num_classes=3, n_train=32, n_test=16)
    features = frozen_features(source, data.train, 2)
    tc = TransferConfig(method="cartl", k=2, bn="frozen", augmentation="none")
    with pytest.raises(ConfigError, match="cannot train on precomputed features: BN frozen"):
        transfer(source, data, tc, device="cpu", features=features)


def test_compare_shares_the_frozen_features_with_the_same_numbers(source: BlockModel) -> None:
    """Computed once per k for the candidates that can use them; every candidate's numbers are
    those of a comparison that computes them in every batch; the estimate names the ones that
    cannot share, with the reason."""
    data = make_dataset(num_classes=3, n_train=96, n_test=48)
    config = CompareConfig(
        eps=0.3, methods=("standard", "neft", "cartl", "lwf"), ks=(1, 2), epochs=2, batch_size=32,
        augmentation="none", bn_presets=("source-stats", "frozen"), max_candidates=8,
    )  # fmt: skip
    shared = compare(source, data, config, device="cpu", seed=0)
    plain = compare(source, data, config, device="cpu", seed=0, share_features=False)
    assert [c.name for c in shared.candidates] == [c.name for c in plain.candidates]
    for a, b in zip(shared.candidates, plain.candidates, strict=True):
        assert (a.val_clean, a.val_robust, a.test_clean, a.test_robust) == (
            b.val_clean, b.val_robust, b.test_clean, b.test_robust,
        ), a.name  # fmt: skip
        assert a.val_robust_flags == b.val_robust_flags
        assert a.model is not None
        assert b.model is not None
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert all(torch.equal(sa[n], sb[n]) for n in sa), a.name
    assert shared.chosen.name == plain.chosen.name

    rows = {r["name"]: r for r in shared.estimate.per_candidate}
    sharing = {n for n, r in rows.items() if r["shares_features"]}
    assert sharing == {n for n in rows if n.endswith("source-stats") and not n.startswith("lwf")}, (
        rows
    )
    assert "whole model" in shared.estimate.not_shared["lwf-k1-source-stats"]
    assert set(shared.estimate.not_shared) == set(rows) - sharing
    frozen = next(n for n in rows if n.endswith("-frozen"))
    assert "BatchNorm" in shared.estimate.not_shared[frozen]
    text = shared.estimate.text()
    assert f"{len(sharing)} train on the frozen part's features, computed once per k" in text
    assert f"{frozen} (BN frozen re-estimates" in text
    assert plain.estimate.not_shared == dict.fromkeys(rows, "not asked to")


@pytest.mark.timeout(300)
def test_a_compare_on_two_processes_is_the_compare_on_one(source: BlockModel) -> None:
    """Each candidate trains data-parallel and its audits deal the samples out: the numbers of
    one process, up to the float noise of a data-parallel training. The features are not
    shared then, and the estimate says why."""
    data = make_dataset(num_classes=3, n_train=96, n_test=48)
    config = CompareConfig(
        eps=0.3, methods=("standard", "neft"), ks=(2,), epochs=2, batch_size=32,
        augmentation="none", bn_presets=("source-stats",), max_candidates=2,
    )  # fmt: skip
    one = compare(source, data, config, device="cpu", seed=0)
    two = compare(source, data, config, device="cpu", seed=0, processes=2)
    assert [c.name for c in one.candidates] == [c.name for c in two.candidates]
    for a, b in zip(one.candidates, two.candidates, strict=True):
        for split, n in (("val", a.val_samples), ("test", len(data.test))):
            for what in ("clean", "robust"):
                x, y = getattr(a, f"{split}_{what}"), getattr(b, f"{split}_{what}")
                assert abs(x - y) <= 1 / n + 1e-9, (a.name, split, what)
    assert set(two.estimate.not_shared) == {c.name for c in two.candidates}
    assert all("2 processes" in why for why in two.estimate.not_shared.values())
