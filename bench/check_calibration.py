"""The audit's checks on the models this product trains: what each check measures on healthy
models, so that its limit sits above them (and below the masked models of the tests).

For each seed it trains the demo's models on scikit-learn's digits (small-cnn, Linf eps 0.2,
PGD-7 adversarial training): the plain adversarially trained source (AT) and the FDM source on
digits 0-4, then every transfer method to digits 5-9 (standard and LwF from AT, NEFT from AT,
CARTL from FDM), and audits each with the default audit (the standard ensemble, PGD-20, FGSM and
every check) at the training radius. It prints one row per model: clean and robust accuracy,
the CE-PGD gap and its limit, what Square broke after the gradient attacks, and every check that
did not pass.

    python bench/check_calibration.py                    # seeds 0 and 1: 25 min here, CPU shared
    python bench/check_calibration.py --seeds 0 --samples 200 --json bench/results/calib.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cartl_core import AuditConfig, audit
from cartl_core.audit import AuditReport, ce_gap_verdict
from cartl_core.compare import Candidate
from cartl_core.config import DEFAULT_NORM_BETA, CompareConfig
from cartl_core.data.digits import digits_task
from cartl_core.models import BlockModel
from cartl_core.reproduction import DigitsSettings, _source
from cartl_core.training import transfer

#: (row, source, transfer method): the methods a user runs, each from the source it is meant for.
ROWS = (
    ("AT source", "AT", None),
    ("FDM source", "FDM", None),
    ("AT -> standard", "AT", "standard"),
    ("AT -> lwf", "AT", "lwf"),
    ("AT -> neft", "AT", "neft"),
    ("FDM -> cartl", "FDM", "cartl"),
)


def _transfer(source: BlockModel, method: str, s: DigitsSettings, target: Any) -> BlockModel:
    """The transfer compare would train for ``method`` at the demo's k and schedule, with each
    method's own beta and BN preset."""
    config = CompareConfig(
        eps=s.eps, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, augmentation="none"
    )
    candidate = Candidate(
        method, s.k, DEFAULT_NORM_BETA.get(method), config.bn_presets_for(method)[0]
    )
    cfg = candidate.transfer_config(config)
    return transfer(source, target, cfg, device="cpu", seed=s.seed).model


def _row(name: str, seed: int, report: AuditReport, seconds: float) -> dict[str, Any]:
    pgd = next(a.accuracy for a in report.attacks if a.name == "pgd-20" and a.role == "named")
    ensemble = [a for a in report.attacks if a.role == "ensemble"]
    square = next((a for a in ensemble if a.name == "square"), None)
    _, limit = ce_gap_verdict(pgd, ensemble[-1].accuracy)
    return {
        "model": name,
        "seed": seed,
        "samples": report.samples,
        "clean": report.clean_accuracy,
        "robust": report.robust_accuracy,
        "pgd20": pgd,
        "ce_gap": pgd - ensemble[-1].accuracy,
        "ce_gap_limit": limit,
        "square_broke": None if square is None else square.broke,
        "failed": [c.name for c in report.checks if c.passed is False],
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    p.add_argument("--samples", type=int, default=None, help="audit the first N test samples")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for seed in (int(v) for v in args.seeds.split(",")):
        s = DigitsSettings(seed=seed)
        source_data = digits_task(s.source_classes, seed=seed)
        target_data = digits_task(s.target_classes, seed=seed)
        sources = {
            "AT": _source(s, source_data, 0.0, "cpu"),
            "FDM": _source(s, source_data, s.fdm_lambda, "cpu"),
        }
        for name, source, method in ROWS:
            torch.manual_seed(seed)
            model = sources[source] if method is None else _transfer(
                sources[source], method, s, target_data)  # fmt: skip
            test = (source_data if method is None else target_data).test
            if args.samples is not None:
                test = test.subset(torch.arange(min(args.samples, len(test))))
            t0 = time.monotonic()
            torch.manual_seed(0)
            report = audit(model, test, AuditConfig(eps=(s.eps,)))
            row = _row(name, seed, report, time.monotonic() - t0)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"{'model':<16}{'seed':>5}{'n':>5}{'clean':>7}{'robust':>8}{'PGD-20':>8}{'gap':>7}"
          f"{'limit':>7}{'Square':>7}  failed checks")  # fmt: skip
    for r in rows:
        square = "-" if r["square_broke"] is None else str(r["square_broke"])
        print(
            f"{r['model']:<16}{r['seed']:>5}{r['samples']:>5}{r['clean']:>7.3f}{r['robust']:>8.3f}"
            f"{r['pgd20']:>8.3f}{r['ce_gap']:>7.3f}{r['ce_gap_limit']:>7.3f}{square:>7}  "
            f"{', '.join(r['failed']) or '-'}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
