"""The audit's ensemble against an independent, maintained AutoAttack (torchattacks): on the same
model and samples it must find robust accuracy equal or lower (at most one point above)."""

from __future__ import annotations

import pytest
import torch

from cartl_core import AuditConfig
from cartl_core.audit import run_ensemble
from cartl_core.data import Split

from .conftest import make_dataset
from .masked_models import tiny_cnn, train

torchattacks = pytest.importorskip("torchattacks", reason="install with pip install --no-deps")

EPS = 0.05
CLASSES = 4


@pytest.fixture(scope="module")
def partly_robust() -> tuple[torch.nn.Module, Split]:
    """A small CNN adversarially trained (PGD-3) at EPS: robust on some test samples and not on
    others, so both implementations have real work to do."""
    torch.manual_seed(0)
    data = make_dataset(num_classes=CLASSES, n_train=256, n_test=96, noise=0.2)
    model = train(tiny_cnn(CLASSES), data.train.images, data.train.labels, epochs=40, eps=EPS)
    return model, data.test


def test_ensemble_at_least_as_strong_as_torchattacks_autoattack(partly_robust) -> None:  # type: ignore[no-untyped-def]
    model, test = partly_robust
    x, y = test.float_images(), test.labels
    torch.manual_seed(0)
    ours = run_ensemble(model, test, AuditConfig(eps=(EPS,)))
    reference = torchattacks.AutoAttack(
        model, norm="Linf", eps=EPS, version="standard", n_classes=CLASSES, seed=0
    )
    with torch.no_grad():
        ref_robust = int((model(reference(x, y)).argmax(1) == y).sum())
    ours_robust = int(ours.robust.sum())
    # Both attack something: not trivially robust, not trivially broken.
    assert 0.1 * len(y) < ref_robust < ours.clean_accuracy * len(y)
    assert ours_robust <= ref_robust + max(1, round(0.01 * len(y)))
