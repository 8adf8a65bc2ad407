"""The robust trace: per-epoch robust accuracy on a fixed test subset, and the
catastrophic-overfitting warning read from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from app.cli.library import main
from app.cli.progress import warning_line
from cartl_core import (
    AttackConfig,
    ConfigError,
    FDMConfig,
    ScheduleConfig,
    TraceConfig,
    TransferConfig,
    create_model,
    pretrain,
    transfer,
)
from cartl_core.data import Dataset
from cartl_core.jobs import TransferParams, parse_params
from cartl_core.training import EpochRecord, TrainResult
from cartl_core.training.trace import (
    CATASTROPHIC_OVERFITTING,
    RobustTrace,
    catastrophic_overfitting,
    trace_size,
)

from .test_cli import _npz

ATTACK = AttackConfig(eps=0.1, alpha=0.03, steps=3)
TRACE_KEYS = {"trace_clean_accuracy", "trace_robust_accuracy", "trace_seconds"}


def _fdm(epochs: int = 2, trace: TraceConfig | None = None) -> FDMConfig:
    return FDMConfig(
        k=2,
        attack=ATTACK,
        augmentation="none",
        schedule=ScheduleConfig(epochs=epochs, batch_size=32, lr=0.05),
        trace=trace or TraceConfig(),
    )


def _scripted_trace(
    monkeypatch: pytest.MonkeyPatch, robust: list[float], clean: list[float]
) -> None:
    """Replace the attack by a scripted sequence of (robust, clean) trace accuracies."""
    calls = iter(zip(robust, clean, strict=True))

    def fake(self: RobustTrace) -> dict[str, float]:
        r, c = next(calls)
        return {"trace_clean_accuracy": c, "trace_robust_accuracy": r, "trace_seconds": 0.0}

    monkeypatch.setattr(RobustTrace, "__call__", fake)


def test_every_epoch_records_the_trace_in_the_jobs_threat_model(tiny_data: Dataset) -> None:
    events: list[Any] = []
    result = pretrain(tiny_data, "small-cnn", _fdm(), device="cpu", on_progress=events.append)
    for record in result.history:
        assert set(record.metrics) >= TRACE_KEYS
        m = record.metrics
        assert 0 <= m["trace_robust_accuracy"] <= m["trace_clean_accuracy"] <= 1
    trace = result.training["trace"]
    # The training attack's threat model, step eps/4, and the floor of 64 on tiny data.
    assert (trace["eps"], trace["norm"], trace["alpha"]) == (0.1, "linf", 0.025)
    assert trace["size"] == 64
    # Each epoch's last progress event carries the trace, for the worker's progress.
    last = [e for e in events if e.batch == e.batches][-1]
    assert "trace_robust_accuracy" in last.metrics


def test_transfer_trace_uses_the_given_radius(tiny_data: Dataset) -> None:
    source = create_model("small-cnn", 4, in_channels=1, input_size=8)
    cfg = TransferConfig(
        method="standard",
        k=2,
        augmentation="none",
        schedule=ScheduleConfig(epochs=1, batch_size=32),
        trace=TraceConfig(samples=32, eps=0.05),
    )
    result = transfer(source, tiny_data, cfg, device="cpu")
    assert set(result.history[0].metrics) >= TRACE_KEYS
    assert (result.training["trace"]["eps"], result.training["trace"]["size"]) == (0.05, 32)


def test_trace_zero_turns_it_off(tiny_data: Dataset) -> None:
    result = pretrain(tiny_data, "small-cnn", _fdm(trace=TraceConfig(samples=0)), device="cpu")
    assert all(not TRACE_KEYS & set(r.metrics) for r in result.history)
    assert "test_accuracy" in result.history[-1].metrics
    assert result.training["trace"]["samples"] == 0


def test_trace_does_not_change_training(tiny_data: Dataset) -> None:
    on = pretrain(tiny_data, "small-cnn", _fdm(), device="cpu", seed=3)
    off = pretrain(tiny_data, "small-cnn", _fdm(trace=TraceConfig(samples=0)), device="cpu", seed=3)
    for (name, a), b in zip(
        on.model.state_dict().items(), off.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def _trace(model: torch.nn.Module, data: Dataset, size: int = 40) -> RobustTrace:
    config = TraceConfig(steps=5, batch_size=16).resolved(0.1, "linf")
    return RobustTrace(model, data.test, config, size=size, device=torch.device("cpu"))


def test_subset_is_fixed_and_the_attack_repeatable(tiny_data: Dataset) -> None:
    model = create_model("small-cnn", 4, in_channels=1, input_size=8)
    first, second = _trace(model, tiny_data), _trace(model, tiny_data)
    assert torch.equal(first.indices, second.indices)
    assert len(set(first.indices.tolist())) == 40
    rng = torch.get_rng_state()
    a, b = first(), first()
    # Same samples, same random start: an unchanged model gets the same numbers every epoch,
    # and the training's random stream is untouched.
    assert (a["trace_robust_accuracy"], a["trace_clean_accuracy"]) == (
        b["trace_robust_accuracy"],
        b["trace_clean_accuracy"],
    )
    assert torch.equal(rng, torch.get_rng_state())


def test_pretrain_attacks_the_same_samples_every_epoch(
    tiny_data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[torch.Tensor] = []
    real = RobustTrace._chunk

    def spy(self: RobustTrace, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(self.labels[start : start + self.batch_size].clone())
        seen.append(self.indices.clone())
        return real(self, start)

    monkeypatch.setattr(RobustTrace, "_chunk", spy)
    pretrain(tiny_data, "small-cnn", _fdm(epochs=2, trace=TraceConfig(samples=64)), device="cpu")
    per_epoch = len(seen) // 2
    assert per_epoch > 0
    assert all(torch.equal(x, y) for x, y in zip(seen[:per_epoch], seen[per_epoch:], strict=True))


@pytest.mark.parametrize("training", [True, False])
def test_trace_leaves_mode_and_requires_grad_as_found(tiny_data: Dataset, training: bool) -> None:
    model = create_model("small-cnn", 4, in_channels=1, input_size=8)
    model.train(training)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()  # a BN policy that keeps source statistics in a training model
    frozen = list(model.parameters())[:2]
    for p in frozen:
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    _trace(model, tiny_data)()
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes


def test_subset_size_follows_the_cost_rule() -> None:
    default = TraceConfig()
    # CIFAR-sized PGD-7 training (about 9 passes a sample): the full 512.
    assert trace_size(default, available=10_000, train_samples=50_000, passes_per_sample=9) == 512
    # Clean fine-tuning on 50k: 10% of 50k passes / 11 passes a trace sample.
    assert trace_size(default, available=10_000, train_samples=50_000, passes_per_sample=1) == 454
    # Tiny data: the floor of 64, but never more than the test split or the request.
    assert trace_size(default, available=500, train_samples=700, passes_per_sample=1) == 64
    assert trace_size(default, available=40, train_samples=700, passes_per_sample=1) == 40
    small = TraceConfig(samples=32)
    assert trace_size(small, available=500, train_samples=700, passes_per_sample=1) == 32
    off = TraceConfig(samples=0)
    assert trace_size(off, available=500, train_samples=50_000, passes_per_sample=9) == 0


def test_bad_trace_settings_name_the_parameter() -> None:
    with pytest.raises(ConfigError) as info:
        parse_params("pretrain", {"trace_samples": -1})
    assert info.value.field == "trace_samples"
    with pytest.raises(ConfigError) as info:
        parse_params("transfer", {"trace_steps": 0})
    assert info.value.field == "trace_steps"


def test_transfer_job_traces_at_the_final_audits_radius() -> None:
    params = parse_params("transfer", {"audit_eps": ["4/255", "8/255"], "trace_samples": 128})
    assert isinstance(params, TransferParams)
    trace = params.config().trace
    assert (trace.eps, trace.norm, trace.samples) == (4 / 255, "linf", 128)
    pre = parse_params("pretrain", {"eps": "2/255"}).config()
    assert isinstance(pre, FDMConfig)
    assert pre.trace.eps is None  # resolved to the training attack's radius by pretrain()


def _history(robust: list[float], clean: list[float]) -> list[EpochRecord]:
    return [
        EpochRecord(
            i + 1, 0.1, 1.0, {"trace_robust_accuracy": r, "trace_clean_accuracy": c, "loss": 1.0}
        )
        for i, (r, c) in enumerate(zip(robust, clean, strict=True))
    ]


def test_overfitting_fires_on_a_big_drop_while_clean_rises() -> None:
    found = catastrophic_overfitting(
        _history([0.30, 0.45, 0.44, 0.40, 0.30], [0.60, 0.70, 0.72, 0.75, 0.80])
    )
    assert found is not None
    assert found["name"] == CATASTROPHIC_OVERFITTING
    assert found["meaning"]
    values = found["values"]
    assert (values["best_epoch"], values["epoch"]) == (2, 5)
    assert (values["best_robust_accuracy"], values["robust_accuracy"]) == (0.45, 0.30)
    assert (values["best_clean_accuracy"], values["clean_accuracy"]) == (0.70, 0.80)
    assert found["detail"] == (
        "trace robust accuracy 0.300 at epoch 5, down from its best 0.450 at epoch 2, "
        "while trace clean accuracy rose from 0.700 to 0.800"
    )


@pytest.mark.parametrize(
    ("robust", "clean"),
    [
        # A big drop, but clean accuracy falls too: the model got worse, not overfit.
        ([0.45, 0.30], [0.80, 0.70]),
        # Clean rises but robust drops only 9 points.
        ([0.45, 0.36], [0.70, 0.90]),
        # Exactly 10 points is not "more than 10".
        ([0.50, 0.40], [0.70, 0.90]),
        # Robust rising with clean.
        ([0.20, 0.30, 0.40], [0.50, 0.60, 0.70]),
    ],
)
def test_overfitting_stays_quiet(robust: list[float], clean: list[float]) -> None:
    assert catastrophic_overfitting(_history(robust, clean)) is None


def test_overfitting_skips_epochs_without_a_trace() -> None:
    history = [EpochRecord(1, 0.1, 1.0, {"loss": 1.0}), *_history([0.5, 0.3], [0.6, 0.7])]
    found = catastrophic_overfitting(history)
    assert found is not None
    assert found["values"]["best_epoch"] == 1  # numbered as given by the records


def test_warning_is_recorded_once_and_reaches_the_result(
    tiny_data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scripted_trace(monkeypatch, [0.5, 0.6, 0.1, 0.05], [0.6, 0.7, 0.8, 0.9])
    result = pretrain(tiny_data, "small-cnn", _fdm(epochs=4), device="cpu")
    assert [len(r.warnings) for r in result.history] == [0, 0, 1, 0]
    (warning,) = result.warnings
    assert warning["name"] == CATASTROPHIC_OVERFITTING
    assert (warning["values"]["best_epoch"], warning["values"]["epoch"]) == (2, 3)
    # The epoch record carries it through JSON (worker history, resume state).
    record = result.history[2]
    assert EpochRecord.from_dict(record.to_dict()) == record
    assert "warnings" not in result.history[0].to_dict()
    assert isinstance(result, TrainResult)


def test_resume_keeps_the_warning_and_refuses_other_trace_settings(
    tmp_path: Path, tiny_data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "run.state"
    _scripted_trace(monkeypatch, [0.5, 0.3], [0.6, 0.9])
    pretrain(tiny_data, "small-cnn", _fdm(epochs=2), device="cpu", state_path=state)
    with pytest.raises(ConfigError, match="other settings"):
        pretrain(
            tiny_data,
            "small-cnn",
            _fdm(epochs=2, trace=TraceConfig(samples=100)),
            device="cpu",
            state_path=state,
        )
    _scripted_trace(monkeypatch, [], [])  # a finished run resumes without attacking again
    resumed = pretrain(tiny_data, "small-cnn", _fdm(epochs=2), device="cpu", state_path=state)
    assert [w["values"]["epoch"] for w in resumed.warnings] == [2]


def test_warning_line_for_the_cli() -> None:
    found = catastrophic_overfitting(_history([0.5, 0.3], [0.6, 0.9]))
    assert found is not None
    line = warning_line({**found, "source": "training"})
    assert line.startswith("WARNING catastrophic-overfitting (training): Robust accuracy")
    assert line.endswith(
        "[trace robust accuracy 0.300 at epoch 2, down from its best 0.500 at epoch 1, "
        "while trace clean accuracy rose from 0.600 to 0.900]"
    )
    assert "\n" not in line
    # Any source's warning prints the same way; numbers in a dict detail are shortened.
    assert warning_line({"name": "x", "meaning": "m", "detail": "d"}) == "WARNING x: m [d]"
    assert warning_line({"name": "x", "meaning": "m", "detail": {"a": 0.30000001, "n": 2}}) == (
        "WARNING x: m [a 0.3, n 2]"
    )


def test_cli_prints_the_warning_and_the_job_lists_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cartl_core.jobs

    outcomes: list[Any] = []
    real_run_job = cartl_core.jobs.run_job

    def run_job(*args: Any, **kwargs: Any) -> Any:
        outcomes.append(real_run_job(*args, **kwargs))
        return outcomes[-1]

    monkeypatch.setattr(cartl_core.jobs, "run_job", run_job)
    _scripted_trace(monkeypatch, [0.5, 0.3], [0.6, 0.9])
    code = main(
        [
            "pretrain",
            "--data",
            str(_npz(tmp_path / "d.npz")),
            "--arch",
            "small-cnn",
            "--k",
            "2",
            "--out",
            str(tmp_path / "m.safetensors"),
            "--no-audit",
            "--quiet",
            "--device",
            "cpu",
            *["--epochs", "2", "--batch-size", "32", "--augment", "none", "--steps", "2"],
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "trace_robust_accuracy" in err
    assert "WARNING catastrophic-overfitting (training):" in err
    (outcome,) = outcomes
    (warning,) = outcome.metrics["warnings"]
    assert (warning["name"], warning["source"]) == (CATASTROPHIC_OVERFITTING, "training")
    assert outcome.history[1]["warnings"][0]["name"] == CATASTROPHIC_OVERFITTING


def test_overfitting_ignores_a_dip_within_the_noise_of_a_small_trace() -> None:
    # The dip a default digits pre-training showed at epoch 10 of 100 (65 trace samples) before
    # recovering: 14 points, inside two standard errors of a 65-sample difference (~0.16).
    history = _history([0.274, 0.137, 0.30], [0.589, 0.726, 0.80])
    assert catastrophic_overfitting(history, samples=65) is None
    # The same dip on 512 samples, and a collapse on 65, are real.
    assert catastrophic_overfitting(history, samples=512) is not None
    collapse = _history([0.274, 0.02], [0.589, 0.9])
    assert catastrophic_overfitting(collapse, samples=65) is not None
