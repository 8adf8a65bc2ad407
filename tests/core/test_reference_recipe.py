"""The 100-line reference recipe of issue 7, run through the library, on a digits split the demo
does not use (even digits -> odd digits, 70/30), two seeds, audited with AutoAttack's standard
ensemble.

The reference kept 13-16 AutoAttack points more with CARTL than with standard fine-tuning (CARTL
0.276 / 0.290 against 0.143 / 0.129 at seeds 0 / 1), and 7-10 more with NEFT. Through the
library it shows the effect too (CARTL +8 / +18 points, NEFT +7 / +13), with the reference's
batch of 64 in fine-tuning; at the library's
default 128, half the SGD steps at the constant lr 0.01 over 30 epochs, the spectrally
normalised tuned part stays under-trained (seed 0, same sources, `fast` ensemble: NEFT 0.088
and CARTL 0.088 robust at 128, 0.172 and 0.154 at 64; standard 0.062 and 0.073).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from cartl_core import AuditConfig
from cartl_core.audit import run_ensemble
from cartl_core.config import (
    AttackConfig,
    FDMConfig,
    ScheduleConfig,
    TraceConfig,
    TransferConfig,
)
from cartl_core.data.digits import digits_task
from cartl_core.models import BlockModel, create_model
from cartl_core.training import pretrain, transfer

pytest.importorskip("sklearn")

EPS = 0.2
NO_TRACE = TraceConfig(samples=0)
#: [conv32-BN-ReLU], [conv64-BN-ReLU-maxpool] x 2, [flatten, Linear 256->128, ReLU], the head.
LAYOUT = {"fc_width": 128, "stages": [[64, True], [64, True]]}
#: SGD lr 0.01 constant, momentum 0.9, weight decay 5e-4, batch 64, 30 epochs.
FINE_TUNING = ScheduleConfig(
    epochs=30, batch_size=64, lr=0.01, warmup_epochs=0, milestones=(1.0,), gamma=1.0
)


@dataclass(frozen=True)
class Audited:
    clean: float
    robust: float


def _source(seed: int, fdm_lambda: float) -> BlockModel:
    data = digits_task((0, 2, 4, 6, 8), test_fraction=0.3, seed=seed)
    torch.manual_seed(seed)
    init = create_model("small-cnn", 5, in_channels=1, input_size=8, options=LAYOUT)
    cfg = FDMConfig(
        k=2,
        fdm_lambda=fdm_lambda,  # summed over the batch, as the reference and the release
        attack=AttackConfig(eps=EPS, alpha=EPS / 4, steps=7),
        schedule=ScheduleConfig(epochs=30, batch_size=64, lr=0.05, shape="one-cycle"),
        augmentation="none",
        trace=NO_TRACE,
    )
    return pretrain(data, "small-cnn", cfg, seed=seed, init=init).model


def _recipe(seed: int) -> dict[str, Audited]:
    target = digits_task((1, 3, 5, 7, 9), test_fraction=0.3, seed=seed)
    at, fdm = _source(seed, 0.0), _source(seed, 0.01)
    check = AuditConfig(eps=(EPS,), attacks="standard")
    out = {}
    # Every BN in eval with the source's statistics and frozen affine; spectral norm sigma 1 on
    # the tuned Linear layers (beta 1: the tuned part at k 2 is the FC block and the head).
    for name, source, method, beta in (
        ("standard", at, "standard", None),
        ("neft", at, "neft", 1.0),
        ("cartl", fdm, "cartl", 1.0),
    ):
        cfg = TransferConfig(
            method=method,  # type: ignore[arg-type]
            k=2,
            norm_beta=beta,
            bn="all-source",
            schedule=FINE_TUNING,
            augmentation="none",
            trace=NO_TRACE,
        )
        model = transfer(source, target, cfg, seed=seed).model
        rep = run_ensemble(model, target.test, check)
        out[name] = Audited(rep.clean_accuracy, rep.robust_accuracy)
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_reference_recipe_keeps_what_the_reference_kept() -> None:
    # Float sums differ with the thread count and 30 epochs amplify that into a few points, so
    # the bounds below hold for the numbers measured at 1 thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {seed: _recipe(seed) for seed in (0, 1)}
    finally:
        torch.set_num_threads(threads)
    for seed, r in runs.items():
        print(seed, {k: (round(v.clean, 3), round(v.robust, 3)) for k, v in r.items()})
    # The target's test split is 273 images, so a seed's robust accuracy carries about +-5
    # points (95%); the bounds are the reference's effect less that noise, on each seed.
    for r in runs.values():
        assert r["standard"].clean > 0.97
        assert r["cartl"].robust >= r["standard"].robust + 0.05
        assert r["neft"].robust >= r["standard"].robust + 0.05
        # CARTL pays a few points of clean accuracy, as in the reference (0.952 / 0.941).
        assert r["cartl"].clean >= r["standard"].clean - 0.08
    gain = sum(r["cartl"].robust - r["standard"].robust for r in runs.values()) / len(runs)
    assert gain >= 0.08
