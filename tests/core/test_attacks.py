"""Attack properties: the eps ball, the [0, 1] box, strength ordering, and caller state."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cartl_core import ConfigError, create_model, fgsm, pgd, robust_mask
from cartl_core.attacks import cw_margin_loss
from cartl_core.models import BlockModel

from .conftest import make_dataset

# The package exports the function ``pgd``, which hides the module of that name.
pgd_module = importlib.import_module("cartl_core.attacks.pgd")


@pytest.fixture(scope="module")
def trained() -> tuple[BlockModel, torch.Tensor, torch.Tensor]:
    """A small CNN fitted (not robustly) to learnable data: attacks have something to break."""
    torch.manual_seed(0)
    data = make_dataset(n_train=256, n_test=128)
    model = create_model("small-cnn", 4, in_channels=1, input_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = data.train.images, data.train.labels
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), data.test.images, data.test.labels


def _acc(model: BlockModel, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@settings(max_examples=12, deadline=None)
@given(
    eps=st.floats(0.005, 0.5),
    steps=st.integers(0, 4),
    norm=st.sampled_from(["linf", "l2"]),
    random_start=st.booleans(),
    restarts=st.integers(1, 2),
    loss=st.sampled_from(["ce", "cw"]),
)
def test_perturbation_stays_in_ball_and_box(
    eps: float, steps: int, norm: str, random_start: bool, restarts: int, loss: str
) -> None:
    model = create_model("small-cnn", 3, in_channels=1, input_size=8).eval()
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 3, (8,))
    x_adv = pgd(model, x, y, eps, eps / 4, steps, norm, random_start, restarts, loss)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-5) + 1e-6).all())
    assert float(x_adv.min()) >= 0.0
    assert float(x_adv.max()) <= 1.0


def test_pgd_at_least_as_strong_as_fgsm_and_robust_below_clean(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    eps = 0.1
    clean = _acc(model, x, y)
    fgsm_acc = _acc(model, fgsm(model, x, y, eps), y)
    pgd_acc = _acc(model, pgd(model, x, y, eps, eps / 4, 20), y)
    assert clean > 0.9
    assert pgd_acc <= fgsm_acc
    assert fgsm_acc <= clean
    assert pgd_acc < clean


def test_robust_mask_is_stronger_than_final_iterate(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    torch.manual_seed(1)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    mask = robust_mask(model, x[correct], y[correct], eps=0.1, alpha=0.025, steps=20)
    torch.manual_seed(1)
    final = _acc(model, pgd(model, x, y, 0.1, 0.025, 20), y)
    assert float(mask.float().sum()) / len(y) <= final + 1e-9


@pytest.mark.parametrize("every", [2, 4, 25])
def test_robust_mask_reading_its_mask_less_often_changes_nothing(
    trained: tuple[BlockModel, torch.Tensor, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
    every: int,
) -> None:
    """CUDA reads the broken-sample mask every few steps, the CPU every step: same answer."""
    model, x, y = trained
    masks = []
    for period in (1, every):
        monkeypatch.setattr(pgd_module, "compact_every", lambda _device, p=period: p)
        torch.manual_seed(2)
        masks.append(robust_mask(model, x, y, eps=0.1, alpha=0.025, steps=10, restarts=2))
    assert 0 < int(masks[0].sum()) < len(y)  # some broken, some not: the test means something
    assert torch.equal(masks[0], masks[1])


def test_attack_restores_mode_and_requires_grad(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    model.train()
    model.zero_grad(set_to_none=True)
    model.blocks[0].requires_grad_(False)
    pgd(model, x[:4], y[:4], 0.1, 0.02, 2)
    assert model.training
    assert not any(p.requires_grad for p in model.blocks[0].parameters())
    assert all(p.requires_grad for p in model.blocks[1].parameters())
    assert all(p.grad is None for p in model.parameters())
    model.requires_grad_(True)
    model.eval()


def test_attack_uses_eval_mode_so_bn_statistics_do_not_move(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    pgd(model, x, y, 0.1, 0.02, 3)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    model.eval()


def test_cw_margin_positive_exactly_when_misclassified() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    margin = cw_margin_loss(logits, torch.tensor([0, 2]))
    assert margin.tolist() == [-2.0, 1.0]


def test_restarts_keep_worst_case(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    torch.manual_seed(3)
    one = _acc(model, pgd(model, x, y, 0.08, 0.02, 5, restarts=1), y)
    torch.manual_seed(3)
    three = _acc(model, pgd(model, x, y, 0.08, 0.02, 5, restarts=3), y)
    assert three <= one + 1e-9


@pytest.mark.parametrize(
    "kw", [{"steps": -1}, {"alpha": 0.0}, {"restarts": 0}, {"norm": "l1"}, {"eps": 0.0}]
)
def test_bad_attack_settings(kw: dict[str, object]) -> None:
    model = create_model("small-cnn", 3, in_channels=1, input_size=8)
    args: dict[str, object] = {"eps": 0.1, "alpha": 0.01, "steps": 2, "norm": "linf", **kw}
    with pytest.raises(ConfigError):
        pgd(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), **args)  # type: ignore[arg-type]
