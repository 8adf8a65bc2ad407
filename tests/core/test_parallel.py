"""One training on two processes (gloo on the CPU, as NCCL on GPUs): the numbers of one process,
the callbacks in the caller's process, a cancel that stops every rank, and a resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cartl_core import AttackConfig, CancelledError, FDMConfig, ScheduleConfig, audit, pretrain
from cartl_core.config import AuditConfig, TraceConfig, TransferConfig
from cartl_core.models import BlockModel
from cartl_core.training import transfer

from .conftest import make_dataset

pytestmark = pytest.mark.timeout(300)

DATA = make_dataset(num_classes=3, n_train=100, n_test=32, seed=1)
SCHEDULE = ScheduleConfig(epochs=3, batch_size=32, lr=0.05)


def _numbers(history: Any) -> list[dict[str, float]]:
    return [{k: v for k, v in h.to_dict().items() if "seconds" not in k} for h in history]


def _close(a: list[dict[str, float]], b: list[dict[str, float]], rel: float) -> None:
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=rel, abs=rel), key


def _weights_close(a: BlockModel, b: BlockModel, atol: float) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module")
def source() -> BlockModel:
    config = FDMConfig(
        k=2, fdm_lambda=0.05, attack=AttackConfig(eps=0.1, steps=2), augmentation="none",
        trace=TraceConfig(samples=0), schedule=SCHEDULE,
    )  # fmt: skip
    return pretrain(DATA, "small-cnn", config, device="cpu", seed=0).model


def test_a_transfer_on_two_processes_is_the_transfer_on_one(source: BlockModel) -> None:
    """NEFT with BatchNorm re-estimating the tuned blocks' statistics (synced over the global
    batch), a last batch of 4 split 2 + 2, the robust trace each epoch: the same weights and
    records up to the order of float sums. The epoch records reach the caller, once each."""
    config = TransferConfig(method="neft", k=2, bn="trainable", augmentation="none",
                            schedule=SCHEDULE)  # fmt: skip
    one = transfer(source, DATA, config, device="cpu", seed=0)
    seen: list[int] = []
    two = transfer(source, DATA, config, device="cpu", seed=0, processes=2,
                   on_epoch=lambda record, _model: seen.append(record.epoch))  # fmt: skip
    _weights_close(one.model, two.model, atol=1e-5)
    _close(_numbers(one.history), _numbers(two.history), rel=1e-5)
    assert seen == [1, 2, 3]
    assert one.training == two.training


def test_fdm_pretraining_on_two_processes_is_the_pretraining_on_one() -> None:
    """FDM with its summed feature term and PGD's random start drawn for the whole batch and
    sliced: without attack steps the weights agree to float noise. With steps, a gradient sign
    that float noise flips moves a pixel by a whole step, so runs drift apart as any two
    orders of summation would; the records still agree closely."""
    for steps, atol, rel in ((0, 1e-3, 1e-4), (2, None, 0.05)):
        config = FDMConfig(
            k=2, fdm_lambda=0.05, attack=AttackConfig(eps=0.1, steps=steps), augmentation="none",
            trace=TraceConfig(samples=0), schedule=SCHEDULE,
        )  # fmt: skip
        one = pretrain(DATA, "small-cnn", config, device="cpu", seed=0)
        two = pretrain(DATA, "small-cnn", config, device="cpu", seed=0, processes=2)
        if atol is not None:
            _weights_close(one.model, two.model, atol=atol)
        _close(_numbers(one.history), _numbers(two.history), rel=rel)


def test_a_cancel_stops_every_rank_and_the_run_resumes(source: BlockModel, tmp_path: Path) -> None:
    config = TransferConfig(method="standard", k=2, augmentation="none", schedule=SCHEDULE)
    state = tmp_path / "state.pt"
    whole = transfer(source, DATA, config, device="cpu", seed=0, processes=2)

    epochs: list[int] = []
    with pytest.raises(CancelledError):
        transfer(source, DATA, config, device="cpu", seed=0, processes=2, state_path=state,
                 on_epoch=lambda record, _m: epochs.append(record.epoch),
                 should_stop=lambda: len(epochs) >= 1)  # fmt: skip
    assert epochs == [1]
    assert state.is_file()  # rank 0 wrote epoch 1's state before the cancel

    resumed = transfer(source, DATA, config, device="cpu", seed=0, processes=2,
                       state_path=state)  # fmt: skip
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    _weights_close(whole.model, resumed.model, atol=1e-6)
    # And on one process from the two processes' state: the same run.
    state.unlink()
    with pytest.raises(CancelledError):
        transfer(source, DATA, config, device="cpu", seed=0, processes=2, state_path=state,
                 should_stop=lambda: state.is_file())  # fmt: skip
    alone = transfer(source, DATA, config, device="cpu", seed=0, state_path=state)
    _weights_close(whole.model, alone.model, atol=1e-5)


def _attack_numbers(report: Any) -> list[tuple[Any, ...]]:
    return [(a.name, a.role, a.eps, a.samples, a.broke, a.accuracy) for a in report.attacks]


AUDITS = {
    "linf": AuditConfig(eps=(0.1,), apgd_steps=6, fab_steps=6, square_queries=40, steps=4,
                        apgd_targets=2, fab_targets=2, check_samples=16),
    "l2": AuditConfig(eps=(0.8,), norm="l2", apgd_steps=6, fab_steps=6, square_queries=40,
                      steps=4, apgd_targets=2, fab_targets=2, check_samples=16),
}  # fmt: skip


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_an_audit_does_not_depend_on_how_its_samples_are_batched(
    source: BlockModel, norm: str
) -> None:
    """Each sample's random numbers are its own (keyed by its index and the attack), so an
    audit in batches of 5 breaks exactly the samples an audit in one batch breaks: what lets
    its samples be dealt out over processes."""
    cfg = AUDITS[norm]
    whole = audit(source, DATA.test, cfg, seed=7)
    small = audit(source, DATA.test, cfg.with_(batch_size=5), seed=7)
    assert _attack_numbers(whole) == _attack_numbers(small)
    assert 0 < whole.robust_accuracy < whole.clean_accuracy
    # Some attack broke samples and left others for the next one: the survivors' batches differ.
    assert any(0 < a.broke < a.samples for a in whole.attacks)
    other = audit(source, DATA.test, cfg, seed=8)
    assert [c.name for c in other.checks] == [c.name for c in whole.checks]


def test_an_audit_on_two_processes_is_the_audit_on_one(source: BlockModel) -> None:
    """The whole audit (ensemble, named attacks, Square probe, checks at other radii) on two
    processes: every attack breaks the same samples, so every number and check is that of one
    process. Progress reaches the caller from rank 0, ending at the whole set."""
    cfg = AUDITS["linf"].with_(batch_size=8, attacks="standard")
    one = audit(source, DATA.test, cfg, seed=3)
    events: list[Any] = []
    two = audit(source, DATA.test, cfg, seed=3, processes=2, on_progress=events.append)
    assert _attack_numbers(one) == _attack_numbers(two)
    assert (one.clean_accuracy, one.robust_accuracy) == (two.clean_accuracy, two.robust_accuracy)
    assert [(c.name, c.passed) for c in one.checks] == [(c.name, c.passed) for c in two.checks]
    assert one.per_class == two.per_class
    assert one.by_eps == two.by_eps
    assert events[0].estimate is not None
    last = [e for e in events if e.attack and e.done == e.total]
    assert {e.index for e in last} == set(range(1, len(two.attacks) + 1))


def test_a_cancel_stops_an_audit_on_two_processes(source: BlockModel) -> None:
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    with pytest.raises(CancelledError):
        audit(source, DATA.test, AUDITS["linf"], seed=3, processes=2, should_stop=stop)
