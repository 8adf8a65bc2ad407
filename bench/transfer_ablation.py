"""What makes a transfer keep its source's robustness: one change at a time, on the demo task.

The demo task: scikit-learn's digits, small-cnn, source digits 0-4, target digits 5-9 (each split
per class into halves), Linf eps 0.2. Every row fine-tunes a source with one recipe and audits the
result on the target's test split with clean accuracy and the ``fast`` ensemble (APGD-CE then
APGD-T, per-sample worst case), the AutoAttack-grade number the product reports.

A row is ``source -> transfer``:

- sources differ in the small-cnn's feature block (``gap``: global average pooling, the layout
  before ``fc_width`` existed; ``fc``: a 2x2 grid and a 128-unit hidden layer), in FDM's lambda
  (0 = plain adversarial training) and in the k FDM separates at; each is trained once (PGD-7,
  step eps/4) and cached under ``--cache``.
- transfers differ in method, k, beta (``norm_beta``), BN preset, learning rate and its schedule
  (``step``: the release's warm-up and x0.2 decay; ``const``: constant).

``python bench/transfer_ablation.py`` runs every row; ``--rows a,b`` picks some; ``--list`` names
them. Rows print as they finish, then a table; ``--json`` keeps them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cartl_core import AuditConfig, load_model, save_checkpoint
from cartl_core.audit import run_ensemble
from cartl_core.config import (
    AttackConfig,
    FDMConfig,
    ScheduleConfig,
    TraceConfig,
    TransferConfig,
    TransferMethod,
)
from cartl_core.data import Dataset
from cartl_core.data.digits import digits_task
from cartl_core.data.loader import dataset_mean_std
from cartl_core.models import BlockModel, create_model
from cartl_core.training import pretrain, transfer

EPS = 0.2
NO_TRACE = TraceConfig(samples=0)
# small-cnn's options per layout (recorded in every checkpoint, so cached sources rebuild).
LAYOUTS: dict[str, dict[str, object]] = {
    "gap": {"fc_width": 0},
    "fc": {"fc_width": 128},
    # The prototype of the issue: conv32 stem, conv64 + pool twice, flatten 256 -> 128 -> head.
    "proto": {"fc_width": 128, "stages": [[64, True], [64, True]]},
}


@dataclass(frozen=True)
class Source:
    layout: str  # "gap" or "fc"
    fdm_lambda: float
    k: int
    epochs: int = 20
    lr: float = 0.05
    schedule: str = "step"  # or "one-cycle", as the prototype pre-trained

    @property
    def key(self) -> str:
        kind = "AT" if self.fdm_lambda == 0 else f"FDM{self.fdm_lambda:g}-k{self.k}"
        shape = "-1cycle" if self.schedule == "one-cycle" else ""
        return f"{self.layout}-{kind}-e{self.epochs}-lr{self.lr:g}{shape}"


@dataclass(frozen=True)
class Row:
    name: str
    source: Source
    method: TransferMethod
    k: int
    norm_beta: float | None = None
    bn: str | None = None
    lr: float = 0.05
    lr_schedule: str = "step"  # "release": the library's default schedule (lr and epochs too)
    epochs: int = 20
    augmentation: str = "none"


def _rows() -> list[Row]:
    gap_at, gap_fdm = Source("gap", 0.0, 3), Source("gap", 0.05, 3)
    gap_fdm01 = Source("gap", 0.01, 3)
    fc_at, fc_fdm = Source("fc", 0.0, 2), Source("fc", 0.01, 2)
    fc_fdm05 = Source("fc", 0.05, 2)
    fc_fdm_k3 = Source("fc", 0.01, 3)
    pr_at, pr_fdm = Source("proto", 0.0, 2, epochs=30), Source("proto", 0.01, 2, epochs=30)
    pr_fdm05 = Source("proto", 0.05, 2, epochs=30)
    proto: dict[str, Any] = {"norm_beta": 1.0, "bn": "all-source", "lr": 0.01,
                             "lr_schedule": "const"}  # fmt: skip
    proto30: dict[str, Any] = {**proto, "epochs": 30}
    # The same fine-tuning without spectral normalisation (standard has none).
    proto30_plain: dict[str, Any] = {k: v for k, v in proto30.items() if k != "norm_beta"}
    pr1_at = Source("proto", 0.0, 2, epochs=30, schedule="one-cycle")
    pr1_fdm = Source("proto", 0.01, 2, epochs=30, schedule="one-cycle")
    release_crop: dict[str, Any] = {"lr_schedule": "release", "augmentation": "crop"}
    return [
        # The product's demo today: gap layout, k 3, defaults.
        Row("gap AT->standard k3 (demo)", gap_at, "standard", 3),
        Row("gap FDM->cartl k3 (demo)", gap_fdm, "cartl", 3),
        Row("gap FDM->cartl k2", gap_fdm, "cartl", 2),
        Row("gap FDM.01->cartl k3", gap_fdm01, "cartl", 3),
        Row("gap FDM->cartl k3 beta1 all-source lr.01", gap_fdm, "cartl", 3, **proto),
        Row("gap FDM->cartl k3 beta.6", gap_fdm, "cartl", 3, norm_beta=0.6),
        Row("gap FDM->cartl k3 beta1", gap_fdm, "cartl", 3, norm_beta=1.0),
        Row("gap FDM->cartl k3 all-source", gap_fdm, "cartl", 3, bn="all-source"),
        Row("gap FDM->cartl k3 source-stats", gap_fdm, "cartl", 3, bn="source-stats"),
        Row("gap FDM->cartl k3 lr.01 const", gap_fdm, "cartl", 3, lr=0.01, lr_schedule="const"),
        Row("gap FDM.1->cartl k3", Source("gap", 0.1, 3), "cartl", 3),
        Row("gap FDM->standard k3", gap_fdm, "standard", 3),
        Row("gap AT->cartl k3", gap_at, "cartl", 3),
        Row("gap AT->neft k3", gap_at, "neft", 3),
        Row("gap AT->lwf k3", gap_at, "lwf", 3),
        Row("gap FDM->cartl k4", Source("gap", 0.05, 4), "cartl", 4),
        Row("gap AT->standard k4", gap_at, "standard", 4),
        # The default schedule (100 epochs, lr 0.1, batch 128) with and without a 1 px crop.
        Row("gap FDM->cartl k3 release", gap_fdm, "cartl", 3, lr_schedule="release"),
        Row("gap FDM->cartl k3 release crop", gap_fdm, "cartl", 3, **release_crop),
        Row("gap FDM->standard k3 release", gap_fdm, "standard", 3, lr_schedule="release"),
        Row("gap FDM->standard k3 release crop", gap_fdm, "standard", 3, **release_crop),
        Row("gap FDM->cartl k3 crop", gap_fdm, "cartl", 3, augmentation="crop"),
        # The fc layout, k 2 (hidden FC + classifier tuned), as the prototype.
        Row("fc AT->standard k2", fc_at, "standard", 2),
        Row(
            "fc AT->standard k2 all-source lr.01",
            fc_at,
            "standard",
            2,
            bn="all-source",
            lr=0.01,
            lr_schedule="const",
        ),
        Row("fc FDM->cartl k2 (defaults)", fc_fdm, "cartl", 2),
        Row("fc FDM->cartl k2 prototype", fc_fdm, "cartl", 2, **proto),
        Row("fc FDM->cartl k2 beta1", fc_fdm, "cartl", 2, norm_beta=1.0),
        Row("fc FDM->cartl k2 all-source", fc_fdm, "cartl", 2, bn="all-source"),
        Row("fc FDM->cartl k2 lr.01 const", fc_fdm, "cartl", 2, lr=0.01, lr_schedule="const"),
        Row(
            "fc FDM->cartl k2 beta.4 all-source lr.01",
            fc_fdm,
            "cartl",
            2,
            norm_beta=0.4,
            bn="all-source",
            lr=0.01,
            lr_schedule="const",
        ),
        Row("fc FDM->standard k2", fc_fdm, "standard", 2),
        Row("fc AT->neft k2 prototype", fc_at, "neft", 2, **proto),
        Row("fc FDM.05->cartl k2 prototype", fc_fdm05, "cartl", 2, **proto),
        Row("fc FDM-k3->cartl k3 prototype", fc_fdm_k3, "cartl", 3, **proto),
        Row("fc AT->standard k3", fc_at, "standard", 3),
        # The prototype's layout and schedule lengths (30 epochs each side).
        Row(
            "proto AT->standard k2 prototype",
            pr_at,
            "standard",
            2,
            bn="all-source",
            lr=0.01,
            lr_schedule="const",
            epochs=30,
        ),
        Row("proto FDM.01->cartl k2 prototype", pr_fdm, "cartl", 2, **proto30),
        Row("proto AT->standard k2", pr_at, "standard", 2),
        Row("proto FDM.01->cartl k2 (defaults)", pr_fdm, "cartl", 2),
        Row("proto AT->cartl k2 prototype", pr_at, "cartl", 2, **proto30),
        Row("proto FDM.05->cartl k2 prototype", pr_fdm05, "cartl", 2, **proto30),
        # The prototype's own pre-training: one-cycle lr 0.05 over 30 epochs.
        Row("proto1c AT->standard k2", pr1_at, "standard", 2, epochs=30),
        Row("proto1c AT->standard k2 prototype-ft", pr1_at, "standard", 2, **proto30_plain),
        Row("proto1c FDM.01->standard k2 prototype-ft", pr1_fdm, "standard", 2, **proto30_plain),
        Row("proto1c FDM.01->cartl k2 prototype", pr1_fdm, "cartl", 2, **proto30),
        Row("proto1c AT->cartl k2 prototype", pr1_at, "cartl", 2, **proto30),
    ]


def _schedule(lr: float, kind: str, epochs: int) -> ScheduleConfig:
    if kind == "release":
        return ScheduleConfig()
    if kind == "one-cycle":
        return ScheduleConfig(epochs=epochs, batch_size=64, lr=lr, shape="one-cycle")
    if kind == "const":
        return ScheduleConfig(epochs=epochs, batch_size=64, lr=lr, warmup_epochs=0, milestones=())
    return ScheduleConfig(epochs=epochs, batch_size=64, lr=lr)


def _source(src: Source, data: Dataset, cache: Path, device: str = "cpu") -> BlockModel:
    path = cache / f"{src.key}.safetensors"
    if path.exists():
        return load_model(path)
    torch.manual_seed(0)
    mean, std = dataset_mean_std(data.train)
    c, h, _ = data.input_shape
    init = create_model("small-cnn", data.num_classes, in_channels=c, input_size=h, mean=mean,
                        std=std, options=LAYOUTS[src.layout])  # fmt: skip
    cfg = FDMConfig(
        k=src.k,
        fdm_lambda=src.fdm_lambda,
        attack=AttackConfig(eps=EPS, alpha=EPS / 4, steps=7),
        schedule=_schedule(src.lr, src.schedule, src.epochs),
        augmentation="none",
        trace=NO_TRACE,
    )
    model = pretrain(data, "small-cnn", cfg, device=device, seed=0, init=init).model
    cache.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, path, class_names=data.class_names)
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    p.add_argument("--list", action="store_true", help="print the row names and exit")
    p.add_argument("--cache", type=Path, default=Path("bench/results/ablation"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... [default: cpu]")
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the per-class train/test split of both tasks [default: 0, the demo's]",
    )
    args = p.parse_args(argv)
    rows = _rows()
    if args.list:
        print("\n".join(r.name for r in rows))
        return 0
    if args.rows:
        wanted = {w.strip() for w in args.rows.split(",")}
        rows = [r for r in rows if r.name in wanted]
    source_data = digits_task((0, 1, 2, 3, 4), seed=args.split_seed)
    target = digits_task((5, 6, 7, 8, 9), seed=args.split_seed)
    # Sources trained on another split are other sources.
    cache = args.cache if args.split_seed == 0 else args.cache / f"split{args.split_seed}"
    check = AuditConfig(eps=(EPS,), attacks="fast")
    results = []
    for r in rows:
        t0 = time.monotonic()
        src = _source(r.source, source_data, cache, args.device)
        cfg = TransferConfig(
            method=r.method,
            k=r.k,
            norm_beta=r.norm_beta,
            bn=r.bn,
            schedule=_schedule(r.lr, r.lr_schedule, r.epochs),
            augmentation=r.augmentation,
            trace=NO_TRACE,
        )
        torch.manual_seed(0)
        model = transfer(src, target, cfg, device=args.device, seed=0).model
        rep = run_ensemble(model, target.test, check)
        out = {**asdict(r), "source": r.source.key, "clean": rep.clean_accuracy,
               "robust": rep.robust_accuracy, "seconds": time.monotonic() - t0}  # fmt: skip
        results.append(out)
        print(f"  {r.name}: clean {out['clean']:.3f} robust {out['robust']:.3f} "
              f"({out['seconds']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    print(f"{'row':<46}{'clean':>7}{'robust':>8}")
    for o in results:
        print(f"{o['name']:<46}{o['clean']:>7.3f}{o['robust']:>8.3f}")
    print(f"demo task (digits 0-4 -> 5-9, small-cnn), Linf eps {EPS}; robust: fast ensemble")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
