"""The CUDA paths: bf16 autocast, channels_last and device-resident data, checked against the CPU.

Skipped without a GPU (CI has none); run on a GPU box with ``pytest tests/core/test_cuda.py``.
"""

from __future__ import annotations

import copy
import importlib
import math
from pathlib import Path

import pytest
import torch

from cartl_core import (
    AuditConfig,
    CompareConfig,
    FDMConfig,
    ScheduleConfig,
    TransferConfig,
    audit,
    compare,
    load_model,
    pgd,
    pretrain,
    robust_mask,
    save_checkpoint,
    transfer,
)
from cartl_core.config import AttackConfig
from cartl_core.training.spectral import matrix_spectral_norm

from .conftest import make_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

EPS = 0.1


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    """A partly robust small CNN, trained on the GPU (FDM, 6 epochs)."""
    torch.manual_seed(0)
    data = make_dataset(num_classes=4, n_train=512, n_test=128)
    config = FDMConfig(
        k=2,
        attack=AttackConfig(eps=EPS, steps=5),
        schedule=ScheduleConfig(epochs=6, batch_size=64, lr=0.05),
        augmentation="none",
    )
    result = pretrain(data, "small-cnn", config, device="cuda")
    return result.model


def test_pretraining_runs_on_the_gpu_in_channels_last(source: torch.nn.Module) -> None:
    params = list(source.parameters())
    assert all(p.is_cuda and p.dtype == torch.float32 for p in params)
    convs = [m for m in source.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    data = make_dataset(num_classes=4, n_train=512, n_test=128)
    x = data.test.images.cuda()
    with torch.no_grad():
        clean = (source.eval()(x).argmax(1).cpu() == data.test.labels).float().mean().item()
    assert clean > 0.8


def test_pgd_on_cuda_stays_in_the_ball_in_fp32(source: torch.nn.Module) -> None:
    data = make_dataset(num_classes=4, n_train=8, n_test=128)
    x, y = data.test.images.cuda(), data.test.labels.cuda()
    source.zero_grad(set_to_none=True)
    x_adv = pgd(source, x, y, eps=EPS, alpha=EPS / 4, steps=10, precision="bf16")
    # The attack ran under bf16 autocast, but the examples it hands back are fp32 and exact.
    assert x_adv.dtype == torch.float32
    assert x_adv.is_cuda
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0
    assert x_adv.max().item() <= 1
    assert not any(p.grad is not None for p in source.parameters())


def test_checkpoint_written_on_gpu_loads_on_cpu_and_agrees(
    source: torch.nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(source, path)  # type: ignore[arg-type]
    cpu_model = load_model(path).eval()
    data = make_dataset(num_classes=4, n_train=8, n_test=128)
    with torch.no_grad():
        on_gpu = source.eval()(data.test.images.cuda()).argmax(1).cpu()
        on_cpu = cpu_model(data.test.images).argmax(1)
    # fp32 on both sides (prediction outside autocast): only reduction order differs.
    assert (on_gpu == on_cpu).float().mean().item() >= 0.99


class _AutocastSpy(torch.nn.Module):
    """Records whether each forward pass ran under autocast."""

    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base, self.autocast = base, []  # type: ignore[var-annotated]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.autocast.append(torch.is_autocast_enabled("cuda"))
        out: torch.Tensor = self.base(x)
        return out


def test_audit_on_cuda_runs_in_fp32_and_agrees_with_the_cpu(source: torch.nn.Module) -> None:
    data = make_dataset(num_classes=4, n_train=8, n_test=128)
    config = AuditConfig(eps=(EPS,), attacks="fast")
    spy = _AutocastSpy(source)
    on_gpu = audit(spy, data.test, config)
    on_cpu = audit(copy.deepcopy(source).cpu(), data.test, config)
    assert on_gpu.device.startswith("cuda")
    assert on_cpu.device == "cpu"
    # fp32 by default, on the GPU too: no pass of the audit ran under autocast.
    assert spy.autocast
    assert not any(spy.autocast)
    assert on_gpu.precision == on_cpu.precision == "fp32"
    assert on_gpu.clean_accuracy == pytest.approx(on_cpu.clean_accuracy, abs=2 / 128)
    # Same arithmetic, other kernels and reduction orders: a sample or two either way.
    assert on_gpu.robust_accuracy == pytest.approx(on_cpu.robust_accuracy, abs=3 / 128)
    assert on_gpu.robust_accuracy <= on_gpu.clean_accuracy


def test_bf16_is_asked_for_and_named(source: torch.nn.Module) -> None:
    data = make_dataset(num_classes=4, n_train=8, n_test=64)
    spy = _AutocastSpy(source)
    report = audit(spy, data.test, AuditConfig(eps=(EPS,), attacks="fast", precision="bf16"))
    assert all(spy.autocast)
    assert report.precision == "bf16"
    assert any("bf16" in note for note in report.notes)


def test_cartl_transfer_on_cuda_keeps_the_spectral_bound(source: torch.nn.Module) -> None:
    target = make_dataset(num_classes=3, n_train=192, n_test=64, seed=5)
    config = TransferConfig(
        method="cartl",
        k=2,
        norm_beta=0.4,
        schedule=ScheduleConfig(epochs=3, batch_size=32, lr=0.01),
        augmentation="none",
    )
    result = transfer(source, target, config, device="cuda")  # type: ignore[arg-type]
    model = result.model
    assert next(model.parameters()).is_cuda
    linears = [m for m in model.blocks[-2:].modules() if isinstance(m, torch.nn.Linear)]
    assert linears
    for layer in linears:
        # sigma is estimated in fp32 even under bf16 autocast; one power iteration per step
        # leaves the CPU suite's 2% slack, which a bf16 sigma would exceed.
        assert matrix_spectral_norm(layer.weight) <= 0.4 * 1.02
    assert result.history
    assert all(math.isfinite(h.metrics["loss"]) for h in result.history)


def test_compare_on_cuda(source: torch.nn.Module, tmp_path: Path) -> None:
    target = make_dataset(num_classes=3, n_train=160, n_test=48, seed=7)
    config = CompareConfig(
        eps=EPS, methods=("standard", "cartl"), ks=(2,), epochs=1, batch_size=32,
        augmentation="none", max_candidates=2,
    )  # fmt: skip
    result = compare(source, target, config, device="cuda", out_dir=tmp_path)  # type: ignore[arg-type]
    assert len(result.candidates) == 2
    assert result.chosen in result.candidates
    for c in result.candidates:
        assert 0 <= c.test_robust <= c.test_clean <= 1
        assert c.path is not None
        assert c.path.exists()


def test_robust_mask_on_cuda_reads_its_mask_every_few_steps_and_agrees(
    source: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    pgd_module = importlib.import_module("cartl_core.attacks.pgd")
    assert pgd_module.compact_every(torch.device("cuda")) > 1
    data = make_dataset(num_classes=4, n_train=8, n_test=128)
    x, y = data.test.images.cuda(), data.test.labels.cuda()
    torch.manual_seed(3)
    periodic = robust_mask(source, x, y, eps=EPS, alpha=EPS / 4, steps=10)
    monkeypatch.setattr(pgd_module, "compact_every", lambda _device: 1)
    torch.manual_seed(3)
    every_step = robust_mask(source, x, y, eps=EPS, alpha=EPS / 4, steps=10)
    # Batch shapes differ between the two, so bf16 kernels may round a borderline sample apart.
    assert (periodic != every_step).sum().item() <= 2
