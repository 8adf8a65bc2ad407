"""APGD-CE, APGD-T and Square: the threat model, early exit, caller state, and strength where
the paper says they are strong (scale-invariant DLR, gradient-free Square)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cartl_core import ConfigError, create_model
from cartl_core.attacks import (
    apgd,
    apgd_checkpoints,
    apgd_targeted,
    dlr_loss,
    dlr_targeted_loss,
    robust_mask,
    square,
)

from .conftest import make_dataset
from .masked_models import LogitScaled, Quantized, tiny_cnn, train


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A normally trained small CNN and its clean-correct test samples."""
    torch.manual_seed(0)
    data = make_dataset(n_train=256, n_test=96)
    model = train(tiny_cnn(), data.train.images, data.train.labels, epochs=40)
    with torch.no_grad():
        correct = model(data.test.images).argmax(1) == data.test.labels
    return model, data.test.images[correct], data.test.labels[correct]


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _wrong(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(x)
    return logits.argmax(1) != y


def test_checkpoints_follow_the_paper() -> None:
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 of the iterations.
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_is_invariant_to_logit_scale_and_shift() -> None:
    z = torch.randn(16, 6)
    y = torch.randint(0, 6, (16,))
    t = (y + 1) % 6
    assert torch.allclose(dlr_loss(z, y), dlr_loss(7 * z + 3, y), atol=1e-5)
    assert torch.allclose(dlr_targeted_loss(z, y, t), dlr_targeted_loss(7 * z + 3, y, t), atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(
    eps=st.floats(0.01, 0.5),
    norm=st.sampled_from(["linf", "l2"]),
    which=st.sampled_from(["apgd-ce", "apgd-dlr", "apgd-t", "square"]),
)
def test_examples_in_ball_and_box_and_flags_match(eps: float, norm: str, which: str) -> None:
    model = create_model("small-cnn", 4, in_channels=1, input_size=8).eval()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # all clean-correct
    if which == "apgd-t":
        out = apgd_targeted(model, x, y, eps=eps, norm=norm, steps=5, targets=9)
    elif which == "square":
        out = square(model, x, y, eps=eps, norm=norm, queries=30)
    else:
        out = apgd(model, x, y, eps=eps, norm=norm, steps=5, loss=which.split("-")[1])
    assert bool((_size(out.x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all())
    assert float(out.x_adv.min()) >= 0.0
    assert float(out.x_adv.max()) <= 1.0
    # A sample is flagged broken exactly when its returned example is misclassified.
    assert torch.equal(_wrong(model, out.x_adv, y), ~out.robust)


def test_apgd_at_least_as_strong_as_pgd(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    eps = 0.08
    torch.manual_seed(0)
    pgd_robust = robust_mask(model, x, y, eps=eps, alpha=eps / 4, steps=20)
    ce = apgd(model, x, y, eps=eps, steps=50)
    t = apgd_targeted(model, x, y, eps=eps, steps=50, targets=3)
    assert float(ce.robust.float().mean()) <= float(pgd_robust.float().mean()) + 0.03
    assert float(t.robust.float().mean()) <= float(pgd_robust.float().mean()) + 0.03
    assert float(ce.robust.float().mean()) < 0.9  # it breaks something on a non-robust model


def test_early_exit_spends_little_on_an_undefended_model(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    out = apgd(model, x, y, eps=0.3, steps=100)
    assert not bool(out.robust.any())
    # The full run costs 101 evaluations per sample; broken samples leave at once.
    assert out.evaluations < 0.25 * 101 * len(y)


def test_targets_bounded_by_class_count(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    calls: list[int] = []
    hook = model.register_forward_hook(lambda _m, _i, out: calls.append(out.shape[0]))
    try:
        apgd_targeted(model, x[:4], y[:4], eps=1e-4, steps=2, targets=9)
    finally:
        hook.remove()
    # One clean pass, then (2 steps + start) per target: 4 classes leave 3 targets.
    assert len(calls) == 1 + 3 * 3


def test_attacks_restore_mode_and_requires_grad(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    model.train()
    model[0].requires_grad_(False)
    try:
        before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        apgd(model, x[:4], y[:4], eps=0.1, steps=3)
        apgd_targeted(model, x[:4], y[:4], eps=0.1, steps=3)
        square(model, x[:4], y[:4], eps=0.1, queries=10)
        assert model.training
        assert not any(p.requires_grad for p in model[0].parameters())
        assert all(p.requires_grad for p in model[2].parameters())
        assert all(p.grad is None for p in model.parameters())
        after = model.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before.items())
    finally:
        model.requires_grad_(True)
        model.eval()


def test_dlr_targeted_beats_saturated_cross_entropy(trained) -> None:  # type: ignore[no-untyped-def]
    base, x, y = trained
    model = LogitScaled(base).eval()
    eps = 0.1
    ce = apgd(model, x, y, eps=eps, steps=30)
    t = apgd_targeted(model, x, y, eps=eps, steps=30, targets=3)
    assert float(ce.robust.float().mean()) > 0.8  # CE's gradient is zero: it is blind
    assert float(t.robust.float().mean()) < float(ce.robust.float().mean()) - 0.3


def test_square_needs_no_gradient(trained) -> None:  # type: ignore[no-untyped-def]
    base, x, y = trained
    model = Quantized(base).eval()
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    eps = 0.15
    white = apgd(model, x, y, eps=eps, steps=20)
    black = square(model, x, y, eps=eps, queries=300)
    assert float(black.robust.float().mean()) < float(white.robust.float().mean()) - 0.2


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda m, x, y: apgd(m, x, y, eps=0.1, steps=0), "steps"),
        (lambda m, x, y: apgd(m, x, y, eps=0.1, loss="xent"), "loss"),
        (lambda m, x, y: apgd_targeted(m, x, y, eps=0.1, targets=0), "targets"),
        (lambda m, x, y: square(m, x, y, eps=0.1, queries=0), "queries"),
        (lambda m, x, y: apgd(m, x, y, eps=0.1, norm="l1"), "norm"),
    ],
)
def test_bad_settings_name_the_field(call, field: str) -> None:  # type: ignore[no-untyped-def]
    model = create_model("small-cnn", 3, in_channels=1, input_size=8)
    with pytest.raises(ConfigError) as err:
        call(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    assert err.value.field == field


@pytest.fixture(scope="module")
def binary() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A two-class task (defect / no defect) behind logits x 1e4: cross-entropy saturates, so
    APGD-CE stalls and the second gradient attack is the one that must work."""
    torch.manual_seed(0)
    data = make_dataset(num_classes=2, n_train=128, n_test=64)
    model = train(tiny_cnn(2), data.train.images, data.train.labels, epochs=40)
    return LogitScaled(model).eval(), data.test.images, data.test.labels


def test_dlr_is_refused_below_three_classes(binary) -> None:  # type: ignore[no-untyped-def]
    model, x, y = binary
    with torch.no_grad():
        logits = model(x)
    with pytest.raises(ConfigError, match="3 classes"):
        dlr_loss(logits, y)
    with pytest.raises(ConfigError, match="3 classes"):
        apgd_targeted(model, x, y, eps=0.1, steps=5, loss="dlr")


def test_the_second_attack_breaks_samples_on_a_binary_task(binary) -> None:  # type: ignore[no-untyped-def]
    """With two classes targeted DLR is constant (zero gradient) and APGD-T never moved; on the
    targeted CW margin it breaks what saturated APGD-CE could not, and the report says so."""
    from cartl_core import AuditConfig, audit
    from cartl_core.data import Split

    model, x, y = binary
    cfg = AuditConfig(eps=(0.15,), attacks="fast", apgd_steps=25, check_samples=32)
    report = audit(model, Split(x, y), cfg)
    ce, t = (a for a in report.attacks if a.role == "ensemble")
    assert (ce.name, t.name) == ("apgd-ce", "apgd-t")
    assert t.loss == "cw-targeted"
    assert t.broke > 0.1 * report.samples, (ce.broke, t.broke)
    assert any("2 classes" in note and "CW margin" in note for note in report.notes)


def test_attacks_default_to_fp32_on_every_device() -> None:
    """bf16 rounds a convolution's inputs to about 0.002 of the pixel range, so the audit's
    attacks compute in fp32 unless asked; on CUDA too (the CUDA test checks the passes)."""
    import contextlib
    import inspect

    from cartl_core import AuditConfig
    from cartl_core._runtime import autocast
    from cartl_core.attacks import fab_targeted, fgsm, pgd

    assert isinstance(autocast(torch.device("cuda"), "fp32"), contextlib.nullcontext)
    for attack in (apgd, apgd_targeted, fab_targeted, square, robust_mask, pgd, fgsm):
        assert inspect.signature(attack).parameters["precision"].default == "fp32", attack
    assert AuditConfig().precision == "fp32"
