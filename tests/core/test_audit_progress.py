"""An audit says what it will cost before it starts, then shows progress inside every attack
(per step or query, not per batch), with an ETA from measured rates; a callback that raises
stops it inside an attack's loop (a cancelled job)."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from cartl_core import AuditConfig, audit
from cartl_core.audit import AuditEvent, run_ensemble
from cartl_core.data import Split

from .conftest import make_dataset
from .masked_models import tiny_cnn, train

#: The module, not the function ``cartl_core.audit`` that shadows it as an attribute.
audit_module = importlib.import_module("cartl_core.audit")
EPS = 0.1
QUICK = AuditConfig(
    eps=(EPS,), apgd_steps=20, apgd_targets=3, fab_steps=20, fab_targets=3, square_queries=200,
    check_samples=32, batch_size=512,
)  # fmt: skip


@pytest.fixture(scope="module")
def robust() -> tuple[nn.Module, Split]:
    torch.manual_seed(0)
    data = make_dataset(n_train=256, n_test=64, noise=0.2)
    model = train(tiny_cnn(), data.train.images, data.train.labels, epochs=30, eps=EPS)
    return model, data.test


@pytest.fixture
def every_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event, not one per quarter second: the attacks here take milliseconds."""
    monkeypatch.setattr(audit_module, "_EMIT_EVERY_S", 0.0)


def test_the_estimate_comes_first_and_bounds_every_planned_attack(robust, every_event) -> None:  # type: ignore[no-untyped-def]
    model, test = robust
    events: list[AuditEvent] = []
    report = audit(model, test, QUICK, on_progress=events.append)
    first = events[0]
    assert first.estimate is not None
    assert first.attack == ""
    plan = [row["attack"] for row in first.estimate.per_attack]
    assert plan[:4] == [f"{n} @ {EPS:.4g}" for n in ("apgd-ce", "apgd-t", "fab-t", "square")]
    assert plan[4:6] == ["pgd-20", "fgsm"]
    assert len(plan) == len(report.attacks) == first.attacks
    # The bound assumes no sample ever breaks, so it is above what the attacks took.
    assert first.estimate.seconds_max >= sum(a.seconds for a in report.attacks)
    assert "at most" in first.estimate.text()
    # Every attack of the plan reported, in order, under its own label.
    seen = [e.attack for e in events[1:]]
    assert list(dict.fromkeys(seen)) == plan


def test_progress_moves_within_an_attack_and_the_eta_falls(robust, every_event) -> None:  # type: ignore[no-untyped-def]
    model, test = robust
    events: list[AuditEvent] = []
    run_ensemble(model, test, QUICK.with_(attacks="apgd-ce,apgd-t"), on_progress=events.append)
    apgd_t = [e for e in events if e.attack.startswith("apgd-t")]
    # One batch (batch_size 512 > 64 samples), yet the fraction moves with the steps.
    fractions = [e.fraction for e in apgd_t]
    assert len({round(f, 3) for f in fractions if 0 < f < 1}) >= 10
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in events[1:])
    assert events[-1].eta_s == pytest.approx(0.0, abs=1e-6)
    assert events[-1].done == events[-1].total
    assert all(e.index == 2 and e.attacks == 2 for e in apgd_t)


@pytest.mark.parametrize("attack", ["apgd-t", "fab-t", "square", "pgd-20"])
def test_a_raising_callback_stops_inside_the_attack(robust, every_event, attack: str) -> None:  # type: ignore[no-untyped-def]
    """What a cancelled job relies on: the worker's callback raises, and the attack stops at
    its next step instead of finishing its batch."""
    model, test = robust
    model.train()

    class StopError(Exception):
        pass

    def stop_midway(event: AuditEvent) -> None:
        if event.attack.startswith(attack) and 0 < event.fraction < 0.5:
            raise StopError

    with pytest.raises(StopError):
        run_ensemble(model, test, QUICK.with_(attacks=attack), on_progress=stop_midway)
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
