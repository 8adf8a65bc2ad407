"""The audit's cost and strength: cartl_core's attack ensembles against a maintained AutoAttack
(torchattacks) and against the old PGD-20 headline, on the same model, data and device.

Rows (each on every test sample; robust accuracy counts clean-misclassified samples as broken):

``PGD-20 (old headline)``
    ``cartl_core.attacks.robust_mask``: PGD-20 with cross-entropy, step eps/4, early exit.
``cartl_core standard``
    The audit's default headline: AutoAttack's standard list (APGD-CE, APGD-T, FAB-T, Square)
    in sequence, per-sample worst case, early exit inside every attack, fp32
    (:func:`cartl_core.audit.run_ensemble`).
``cartl_core standard, AutoAttack's Square schedule``
    The same with Square's window schedule counted in queries (``square_rescale=False``), as
    AutoAttack builds it, instead of rescaled to the budget.
``cartl_core standard, bf16`` (CUDA only)
    The same under bf16 autocast (``precision="bf16"``), the opt-in speed option.
``cartl_core fast``
    APGD-CE then APGD-T.
``cartl_core audit()``
    A whole default audit: the standard ensemble plus PGD-20, FGSM and the checks.
``torchattacks AutoAttack``
    ``torchattacks.AutoAttack(version="standard")``: APGD-CE, APGD-T, FAB-T, Square, each on
    the samples the earlier ones left, in fp32 (the reference; ratio 1.00).
``torchattacks AutoAttack, channels_last``
    The reference on the model as cartl_core prepares it (channels_last, which oneDNN runs
    1.3-1.5x faster on this model). The reference rows above get the model as a user would hand
    it to torchattacks; this row shows how much of the ratio is the memory format and how much
    the attacks.

``ratio`` = the reference's seconds / the row's seconds (above 1 is faster). ``s/1k`` is the
seconds per 1,000 samples. The default model is the one from the issue that asked for this
audit: an adversarially trained small CNN (digits 0-4, Linf 0.2), transferred with CARTL to
digits 5-9; it is trained once and cached in ``--cache``. ``--checkpoint`` and ``--data`` audit
any other model instead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cartl_core
from cartl_core import AuditConfig, Split, audit, load_dataset, load_model
from cartl_core._runtime import prepare_model, resolve_device
from cartl_core.attacks import robust_mask
from cartl_core.audit import run_ensemble

Row = dict[str, Any]


def _fraction(text: str) -> float:
    from fractions import Fraction

    return float(Fraction(text))


def build_issue_model(cache: Path, device: torch.device) -> tuple[Path, Path]:
    """The issue's model: AT small-cnn on digits 0-4 (eps 0.2), CARTL transfer to 5-9."""
    from cartl_core import save_checkpoint
    from cartl_core.config import AttackConfig, FDMConfig, ScheduleConfig, TransferConfig
    from cartl_core.data.digits import digits_task, save_npz
    from cartl_core.training import pretrain, transfer

    ckpt, data = cache / "cartl_digits.safetensors", cache / "digits_5-9.npz"
    if ckpt.exists() and data.exists():
        return ckpt, data
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    source, target = digits_task((0, 1, 2, 3, 4), seed=0), digits_task((5, 6, 7, 8, 9), seed=0)
    schedule = ScheduleConfig(epochs=20, batch_size=64, lr=0.05)
    fdm = FDMConfig(k=3, fdm_lambda=0.0, attack=AttackConfig(eps=0.2, alpha=0.05, steps=7),
                    schedule=schedule, augmentation="none")  # fmt: skip
    src = pretrain(source, "small-cnn", fdm, device=device, seed=0).model
    cfg = TransferConfig(method="cartl", k=3, schedule=schedule, augmentation="none")
    tgt = transfer(src, target, cfg, device=device, seed=0).model
    save_checkpoint(tgt.cpu(), ckpt, class_names=target.class_names)
    save_npz(target, data)
    return ckpt, data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], float]) -> tuple[float, float]:
    torch.manual_seed(0)
    _sync(device)
    t0 = time.perf_counter()
    acc = fn()
    _sync(device)
    return acc, time.perf_counter() - t0


def old_headline(model: nn.Module, split: Split, eps: float) -> float:
    x, y = split.float_images(), split.labels
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    robust = clean.clone()
    for start in range(0, len(y), 256):
        sel = clean[start : start + 256].nonzero().squeeze(1) + start
        if sel.numel():
            robust[sel] = robust_mask(model, x[sel], y[sel], eps=eps, alpha=eps / 4, steps=20)
    return float(robust.float().mean())


def torchattacks_row(model: nn.Module, split: Split, eps: float, norm: str, classes: int) -> float:
    import torchattacks

    ta_norm = "Linf" if norm == "linf" else "L2"
    attack = torchattacks.AutoAttack(
        model, norm=ta_norm, eps=eps, version="standard", n_classes=classes, seed=0
    )
    correct = 0
    x_all, y_all = split.float_images(), split.labels
    for start in range(0, len(y_all), 256):
        x, y = x_all[start : start + 256], y_all[start : start + 256]
        x_adv = attack(x, y)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == y).sum())
    return correct / len(y_all)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--data", type=Path, default=None, help="dataset; its test split is used")
    p.add_argument("--eps", type=_fraction, default=0.2, help="radius; fractions like 8/255 work")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--samples", type=int, default=None, help="first N test samples")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache", type=Path, default=Path("bench/results/audit_model"))
    p.add_argument(
        "--skip", default="", help="comma-separated rows to skip: audit,ref,ref-cl,schedule,bf16"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if (args.checkpoint is None) != (args.data is None):
        p.error("give both --checkpoint and --data, or neither")
    ckpt, data_path = args.checkpoint, args.data
    if ckpt is None or data_path is None:
        ckpt, data_path = build_issue_model(args.cache, device)
    data = load_dataset(data_path)
    split = data.test
    if args.samples is not None:
        split = split.subset(torch.arange(min(args.samples, len(split))))
    model = load_model(ckpt).eval()
    prepare_model(model, device)
    split = split.to(device)
    # The third-party reference runs in fp32 on a plain (not channels_last) copy, as a user's
    # model would reach it.
    reference = load_model(ckpt).eval().to(device)
    n, eps = len(split), args.eps
    cfg = AuditConfig(eps=(eps,), norm=args.norm)

    rows: list[Row] = []

    def add(name: str, fn: Callable[[], float]) -> None:
        acc, seconds = timed(device, fn)
        rows.append({"row": name, "seconds": seconds, "robust_accuracy": acc})
        print(f"  {name}: {acc:.4f} in {seconds:.1f} s", file=sys.stderr, flush=True)

    print(f"auditing {ckpt.name}: {n} samples, {args.norm} eps {eps}", file=sys.stderr)
    if "ref" not in skip:
        add("torchattacks AutoAttack", lambda: torchattacks_row(
            reference, split, eps, args.norm, data.num_classes))  # fmt: skip
    if "ref-cl" not in skip:
        add("torchattacks AutoAttack, channels_last", lambda: torchattacks_row(
            model, split, eps, args.norm, data.num_classes))  # fmt: skip
    add("cartl_core standard", lambda: run_ensemble(model, split, cfg).robust_accuracy)
    if "schedule" not in skip:
        add("cartl_core standard, AutoAttack's Square schedule", lambda: run_ensemble(
            model, split, cfg.with_(square_rescale=False)).robust_accuracy)  # fmt: skip
    if "bf16" not in skip and device.type == "cuda":
        add("cartl_core standard, bf16", lambda: run_ensemble(
            model, split, cfg.with_(precision="bf16")).robust_accuracy)  # fmt: skip
    add("cartl_core fast", lambda: run_ensemble(model, split, cfg.with_(attacks="fast"))
        .robust_accuracy)  # fmt: skip
    if "audit" not in skip:
        add("cartl_core audit()", lambda: audit(model, split, cfg).robust_accuracy)
    add("PGD-20 (old headline)", lambda: old_headline(model, split, eps))

    ref = rows[0]["seconds"]
    print(f"cartl_core audit benchmark, {datetime.date.today()}")
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"device {device} ({name}), torch {torch.__version__}, {threads} CPU threads, "
          f"cartl {cartl_core.__version__}")  # fmt: skip
    print(f"model {ckpt.name}, {n} samples, {args.norm} eps {eps}; reference: {rows[0]['row']}")
    print(f"{'row':<52}{'robust acc':>11}{'seconds':>10}{'s/1k':>9}{'ratio':>8}")
    for r in rows:
        r["seconds_per_1k"] = r["seconds"] * 1000 / n
        r["ratio"] = ref / r["seconds"] if r["seconds"] else float("inf")
        print(
            f"{r['row']:<52}{r['robust_accuracy']:>11.4f}{r['seconds']:>10.1f}"
            f"{r['seconds_per_1k']:>9.1f}{r['ratio']:>8.2f}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": str(device), "samples": n, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
