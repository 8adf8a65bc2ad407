"""The audit's headline (ensemble, per-sample worst case) and its masking checks: each check
passes on a normally trained model and fails on a model masked in the way it looks for."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from cartl_core import AuditConfig, ConfigError, audit
from cartl_core.data import Split

from .conftest import make_dataset
from .masked_models import (
    ConstantClass,
    FarInputLookup,
    LogitScaled,
    NoisyInput,
    Quantized,
    WrongOnCleanGrid,
    tiny_cnn,
    train,
)

EPS = 0.1
#: Small budgets keep the suite fast; the checks' logic does not depend on them.
QUICK = AuditConfig(
    eps=(EPS,), apgd_steps=25, apgd_targets=3, square_queries=400, check_samples=48, batch_size=128
)


@pytest.fixture(scope="module")
def base() -> tuple[nn.Module, Split]:
    """A normally trained (not robust) small CNN, about 30% robust at EPS, and a test split on
    the 1/8 grid."""
    torch.manual_seed(0)
    data = make_dataset(n_train=256, n_test=96)
    model = train(tiny_cnn(), data.train.images, data.train.labels, epochs=40)
    test = Split((data.test.images * 8).round() / 8, data.test.labels)
    return model, test


@pytest.fixture(scope="module")
def robust_base() -> tuple[nn.Module, Split]:
    """An adversarially trained (PGD-3 at EPS) small CNN: the kind of model users audit."""
    torch.manual_seed(0)
    data = make_dataset(n_train=256, n_test=192, noise=0.2)
    model = train(tiny_cnn(), data.train.images, data.train.labels, epochs=40, eps=EPS)
    return model, data.test


def _checks(report) -> dict[str, bool | None]:  # type: ignore[no-untyped-def]
    return {c.name: c.passed for c in report.checks}


def test_normal_model_passes_every_check(robust_base) -> None:  # type: ignore[no-untyped-def]
    model, test = robust_base
    report = audit(model, test, QUICK)
    checks = _checks(report)
    assert set(checks) >= {
        "ce-pgd-gap",
        "black-box-not-stronger",
        "larger-eps-not-more-robust",
        "large-eps-breaks-all",
        "robust-not-above-clean",
        "fgsm-not-stronger-than-pgd",
        "nonzero-input-gradients",
        "outputs-are-logits",
        "deterministic-outputs",
        "predictions-not-constant",
        "clean-above-chance",
        "train-test-gap",
    }
    assert all(passed is not False for passed in checks.values()), report.checks
    assert report.warnings == []
    assert report.ensemble == "standard"
    assert report.ensemble_attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert report.precision == "fp32"
    assert report.headline_notes == []
    assert report.notes == []


def test_headline_is_the_per_sample_worst_case(base) -> None:  # type: ignore[no-untyped-def]
    model, test = base
    report = audit(model, test, QUICK.with_(eps=(0.03,)))
    at_eps = [a for a in report.attacks if a.eps == 0.03 and a.role in ("ensemble", "named")]
    assert {a.name for a in at_eps} >= {"apgd-ce", "apgd-t", "fab-t", "square", "pgd-20", "fgsm"}
    assert all(report.robust_accuracy <= a.accuracy + 1e-9 for a in at_eps)
    assert report.robust_accuracy <= report.clean_accuracy
    assert report.worst_case_accuracy == report.robust_accuracy
    ensemble = [a for a in report.attacks if a.role == "ensemble"]
    # Each ensemble member runs on what the one before left.
    for before, after in itertools.pairwise(ensemble):
        assert after.samples == round(before.accuracy * report.samples)
    assert report.by_eps[0]["eps"] == 0.03
    assert all(a.seconds >= 0 and a.steps >= 1 and a.restarts >= 1 for a in report.attacks)


def test_ce_pgd_gap_fails_when_cross_entropy_saturates(base) -> None:  # type: ignore[no-untyped-def]
    model, test = base
    report = audit(LogitScaled(model).eval(), test, QUICK)
    checks = _checks(report)
    assert checks["ce-pgd-gap"] is False
    pgd = next(a for a in report.attacks if a.name == "pgd-20")
    assert pgd.accuracy - report.robust_accuracy > 0.03
    assert any(w["name"] == "ce-pgd-gap" and "CE" in w["meaning"] for w in report.warnings)


@pytest.mark.parametrize("attacks", ["standard", "fast"])
def test_black_box_check_fails_on_shattered_gradients(base, attacks: str) -> None:  # type: ignore[no-untyped-def]
    model, test = base
    report = audit(Quantized(model).eval(), test, QUICK.with_(attacks=attacks))
    checks = _checks(report)
    assert checks["black-box-not-stronger"] is False
    assert checks["large-eps-breaks-all"] is False
    assert checks["nonzero-input-gradients"] is False
    # What the black-box attack broke counts against the headline, in the fast ensemble too.
    white = [a for a in report.attacks if a.role == "ensemble" and a.name != "square"]
    assert report.robust_accuracy < white[-1].accuracy


def test_larger_eps_check_fails_when_far_inputs_look_robust(base) -> None:  # type: ignore[no-untyped-def]
    model, test = base
    lookup = FarInputLookup(model, test.images, test.labels, radius=1.5 * EPS, num_classes=4)
    report = audit(lookup.eval(), test, QUICK.with_(attacks="fast"))
    checks = _checks(report)
    assert checks["larger-eps-not-more-robust"] is False
    larger = next(p for p in report.by_eps if p["eps"] == 2 * EPS)
    assert larger["subset"]
    assert larger["robust_accuracy"] > report.robust_accuracy


def test_robust_above_clean_fails_when_clean_inputs_are_special(base) -> None:  # type: ignore[no-untyped-def]
    model, test = base
    report = audit(WrongOnCleanGrid(model, 4).eval(), test, QUICK.with_(eps=(0.01,)))
    assert report.clean_accuracy == 0.0
    assert _checks(report)["robust-not-above-clean"] is False


def test_user_radii_give_an_eps_curve(base) -> None:  # type: ignore[no-untyped-def]
    model, test = base
    report = audit(model, test, QUICK.with_(eps=(0.03, 0.01), attacks="fast"))
    full = [p for p in report.by_eps if not p["subset"]]
    assert [p["eps"] for p in full] == [0.01, 0.03]
    assert full[0]["robust_accuracy"] >= full[1]["robust_accuracy"]
    assert report.eps == 0.03


@pytest.mark.parametrize(
    ("attacks", "expected"),
    [
        ("fast", ["apgd-ce", "apgd-t"]),
        ("paper", ["pgd-20"]),
        ("apgd-dlr, square", ["apgd-dlr", "square"]),
        ("pgd-7-cw,apgd-ce", ["pgd-7-cw", "apgd-ce"]),
    ],
)
def test_ensemble_option(base, attacks: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    model, test = base
    report = audit(model, test.subset(torch.arange(24)), QUICK.with_(attacks=attacks))
    assert report.ensemble_attacks == expected
    assert [a.name for a in report.attacks if a.role == "ensemble"] == expected
    if attacks == "paper":
        assert _checks(report)["ce-pgd-gap"] is None  # nothing stronger to compare with


@pytest.mark.parametrize("attacks", ["strong", "apgd-ce,apgd-ce", "pgd-0", "", "apgd-ce,,x"])
def test_bad_ensemble_is_refused(attacks: str) -> None:
    with pytest.raises(ConfigError) as err:
        AuditConfig(attacks=attacks)
    assert err.value.field == "attacks"


def test_report_round_trips_and_old_reports_read(base) -> None:  # type: ignore[no-untyped-def]
    from cartl_core.audit import AuditReport

    model, test = base
    report = audit(model, test.subset(torch.arange(24)), QUICK.with_(attacks="fast"))
    again = AuditReport.from_dict(report.to_dict())
    assert again == report
    old = {
        "samples": 10, "clean_accuracy": 0.9, "robust_accuracy": 0.5, "per_class": [],
        "worst_case_accuracy": 0.4, "seconds": 1.0, "config": {},
        "attacks": [{"name": "pgd-20-linf", "norm": "linf", "eps": 0.1, "alpha": 0.025,
                     "steps": 20, "restarts": 1, "loss": "ce", "accuracy": 0.5, "seconds": 1}],
        "checks": [{"name": "robust-not-above-clean", "passed": True, "detail": "ok"}],
    }  # fmt: skip
    assert AuditReport.from_dict(old).attacks[0].role == "named"


def test_ce_gap_passes_healthy_adversarial_training_and_fails_masking() -> None:
    """The gaps bench/check_calibration.py measured on the models this product trains: the
    earlier 3-point limit failed most of the healthy ones."""
    from cartl_core.audit import ce_gap_verdict

    healthy = [  # (PGD-20, ensemble): AT and FDM sources, NEFT and CARTL transfers
        (0.727, 0.680), (0.709, 0.653), (0.192, 0.150), (0.185, 0.103), (0.228, 0.163),
    ]  # fmt: skip
    assert all(ce_gap_verdict(pgd, ens)[0] for pgd, ens in healthy)
    # CIFAR-10 adversarial training as AutoAttack's paper reports it: 3-4 points.
    assert ce_gap_verdict(0.53, 0.49)[0]
    # The masked test model below (logits x 1e4): 61 points.
    assert not ce_gap_verdict(1.0, 0.385)[0]
    assert not ce_gap_verdict(0.62, 0.35)[0]


def test_black_box_check_has_the_reference_sensitivity() -> None:
    """AutoAttack warns when Square lowers robust accuracy by more than 0.2 points; the earlier
    limit here (2% of the white-box survivors) let 3 of 1,000 samples (0.3 points) pass."""
    from cartl_core.audit import black_box_verdict

    assert not black_box_verdict(3, 1000)
    assert black_box_verdict(2, 1000)
    assert black_box_verdict(1, 100)  # one sample is not yet a pattern
    assert not black_box_verdict(2, 100)


def test_randomised_model_is_named(base) -> None:  # type: ignore[no-untyped-def]
    model, test = base
    report = audit(
        NoisyInput(model).eval(), test.subset(torch.arange(48)), QUICK.with_(attacks="fast")
    )
    check = next(c for c in report.checks if c.name == "deterministic-outputs")
    assert check.passed is False
    assert "random" in check.meaning
    assert any("randomised" in note for note in report.headline_notes)


def test_a_constant_classifier_is_never_reported_as_robust() -> None:
    """The issue's case: one class for every image, clean = robust = 1/3, and every masking
    check passing. The model checks fail and say so beside the number."""
    data = make_dataset(num_classes=3, n_train=3, n_test=96)
    report = audit(ConstantClass(3).eval(), data.test, QUICK.with_(attacks="fast"))
    assert report.robust_accuracy == pytest.approx(1 / 3)
    assert report.robust_accuracy == report.clean_accuracy
    checks = _checks(report)
    assert checks["predictions-not-constant"] is False
    assert checks["clean-above-chance"] is False
    assert report.headline_notes
    assert "means nothing" in report.headline_notes[0]
    assert "MEANINGLESS" in report.table()


def test_memorisation_is_flagged_when_training_accuracy_is_known(base) -> None:  # type: ignore[no-untyped-def]
    model, test = base
    # Half the labels moved to the next class: the model is right on about half the images,
    # as a model that memorised its training set would be on new ones.
    labels = test.labels.clone()
    labels[::2] = (labels[::2] + 1) % 4
    shifted = Split(test.images, labels).subset(torch.arange(48))
    fast = QUICK.with_(attacks="fast")
    memorised = audit(model, shifted, fast, train_accuracy=1.0)
    assert memorised.clean_accuracy < 0.7
    assert _checks(memorised)["train-test-gap"] is False
    assert any("memorised" in note for note in memorised.headline_notes)
    fits = audit(model, shifted, fast, train_accuracy=memorised.clean_accuracy + 0.1)
    assert _checks(fits)["train-test-gap"] is True
    assert _checks(audit(model, shifted, fast))["train-test-gap"] is None  # nothing to compare


def test_labels_the_model_cannot_output_are_a_clear_error(base) -> None:  # type: ignore[no-untyped-def]
    model, _ = base  # four outputs
    five = make_dataset(num_classes=5, n_train=5, n_test=20)
    with pytest.raises(ConfigError, match="labels go up to 4 but the model has 4 outputs"):
        audit(model, five.test, QUICK.with_(attacks="fast"))
