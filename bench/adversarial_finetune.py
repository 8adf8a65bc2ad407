"""Adversarial fine-tuning: its loop against a minimal hand-written PGD-AT loop, and what every
transfer method costs against standard fine-tuning, in one run.

Three sections, on the demo task (scikit-learn's digits, small-cnn, source digits 0-4, target
digits 5-9, Linf eps 0.2):

- ``loop``: the same model, data, k, epochs and PGD-7 (step eps/4, random start) trained two
  ways: ``cartl_core.transfer(method="adversarial")`` and a minimal loop written by hand the way
  a careful user would (data on the device, channels_last, bf16 autocast on CUDA, the attack in
  eval mode with the parameters' gradients off, frozen blocks in eval mode, plain SGD, the clean
  test evaluation after each epoch that ``transfer`` also runs). They take turns (one warm-up
  round, then ``--repeats`` rounds; medians), so the machine's load falls on both alike.
  ``ratio`` = the library's images/s over the minimal loop's; the target is at least 0.9. Both
  wall seconds and this process's CPU seconds are reported: on a shared, loaded machine the
  wall clock swings by 2x between identical runs, CPU seconds much less (``--threads 1`` makes
  them a count of work).
- ``cost``: each method's training (``--methods``) exactly as compare trains its candidate,
  ``--epochs`` epochs, timed in turns as the loop rows are; wall and CPU seconds relative to
  standard fine-tuning's. Training only: an audit's cost follows the model's robustness (attacks
  stop on a sample once it breaks), not the method.
- ``methods``: one ``cartl_core.compare`` over standard, LwF, NEFT, CARTL, adversarial and TRADES
  fine-tuning (``--methods``) at the demo's k from the demo's source, with the demo's schedule
  (20 epochs, batch 64, lr 0.05). Per candidate: validation and test clean and robust accuracy
  (``fast`` ensemble), the measured training and validation-audit seconds, and both relative to
  the standard candidate's (list standard among ``--methods``).

Sources come from ``bench/transfer_ablation.py``'s cache (trained there if missing), the demo's
layout (``gap``: what ``create_model`` builds for small-cnn) and recipe (PGD-7, 20 epochs, lr
0.05): ``fdm`` (lambda 0.05, k 3, the demo's compare source) or ``at`` (plain adversarial
training, the demo's baseline source).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer_ablation import EPS, Source, _source

from cartl_core._runtime import autocast, prepare_model, resolve_device, synchronize
from cartl_core.compare import CompareEvent, compare, plan_candidates
from cartl_core.config import (
    AttackConfig,
    CompareConfig,
    ScheduleConfig,
    TraceConfig,
    TransferConfig,
)
from cartl_core.data import Dataset
from cartl_core.data.digits import digits_task
from cartl_core.models import BlockModel
from cartl_core.training import transfer

STEPS = 7
METHODS = ("standard", "lwf", "neft", "cartl", "adversarial", "trades")


def minimal_pgd_at(
    source: BlockModel, data: Dataset, k: int, epochs: int, batch: int, lr: float, dev: Any
) -> tuple[float, float]:
    """PGD-7 adversarial fine-tuning of the last k blocks, written out; returns its wall and
    CPU seconds."""
    model = copy.deepcopy(source)
    prepare_model(model, dev)
    model.reset_classifier(data.num_classes)
    t = model.num_blocks
    frozen = [model.normalize, model.stem, *model.blocks[: t - k]]
    for m in frozen:
        m.requires_grad_(False)
    tuned = [p for b in model.blocks[t - k :] for p in b.parameters()]
    opt = torch.optim.SGD(tuned, lr=lr, momentum=0.9, weight_decay=5e-4)
    x_all = data.train.float_images().to(dev)
    y_all = data.train.labels.to(dev)
    x_test = data.test.float_images().to(dev).contiguous(memory_format=torch.channels_last)
    y_test = data.test.labels.to(dev)
    eps, alpha = EPS, EPS / 4
    synchronize(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        perm = torch.randperm(len(y_all), device=dev)
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            x = x_all[idx].contiguous(memory_format=torch.channels_last)
            y = y_all[idx]
            model.eval()
            for p in tuned:
                p.requires_grad_(False)
            x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
            for _ in range(STEPS):
                x_adv.requires_grad_(True)
                with autocast(dev):
                    loss = F.cross_entropy(model(x_adv).float(), y)
                (g,) = torch.autograd.grad(loss, x_adv)
                x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps)
                x_adv = x_adv.clamp(0, 1)
            for p in tuned:
                p.requires_grad_(True)
            model.train()
            for m in frozen:
                m.eval()  # frozen BN keeps the source's statistics
            with autocast(dev):
                logits = model(x_adv)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode(), autocast(dev):
            float((model(x_test).argmax(1) == y_test).float().mean())
    synchronize(dev)
    return time.perf_counter() - t0, time.process_time() - c0


def library_pgd_at(
    source: BlockModel, data: Dataset, k: int, epochs: int, batch: int, lr: float, dev: Any
) -> tuple[float, float]:
    cfg = TransferConfig(
        method="adversarial",
        k=k,
        schedule=ScheduleConfig(epochs=epochs, batch_size=batch, lr=lr),
        augmentation="none",
        trace=TraceConfig(samples=0),
        attack=AttackConfig(eps=EPS, steps=STEPS),
    )
    synchronize(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    transfer(source, data, cfg, device=dev, seed=0)
    synchronize(dev)
    return time.perf_counter() - t0, time.process_time() - c0


def loop_section(
    source: BlockModel, data: Dataset, args: argparse.Namespace, dev: Any
) -> dict[str, Any]:
    ways = {
        "minimal PGD-AT loop": minimal_pgd_at,
        "cartl_core.transfer adversarial": library_pgd_at,
    }
    walls: dict[str, list[float]] = {name: [] for name in ways}
    cpus: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(args.repeats + 1):
        for name, run in ways.items():
            epochs = 1 if round_ == 0 else args.epochs  # round 0 warms up, untimed
            wall, cpu = run(source, data, args.k, epochs, args.batch_size, 0.05, dev)
            if round_ > 0:
                walls[name].append(wall)
                cpus[name].append(cpu)
    n = len(data.train) * args.epochs
    rows = []
    for name in ways:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        rows.append({"way": name, "seconds": wall, "cpu_seconds": cpu, "images_per_s": n / wall,
                     "all_seconds": walls[name], "all_cpu_seconds": cpus[name]})  # fmt: skip
    for r in rows:
        r["ratio"] = rows[0]["seconds"] / r["seconds"]
        r["cpu_ratio"] = rows[0]["cpu_seconds"] / r["cpu_seconds"]
    print(
        f"\nloop: PGD-{STEPS} adversarial fine-tuning, k {args.k}, {args.epochs} epochs of "
        f"{len(data.train)} images, batch {args.batch_size}, median of {args.repeats}"
    )
    print(f"{'way':<36}{'seconds':>9}{'images/s':>10}{'ratio':>7}{'CPU s':>8}{'CPU ratio':>10}")
    for r in rows:
        print(
            f"{r['way']:<36}{r['seconds']:>9.2f}{r['images_per_s']:>10.0f}{r['ratio']:>7.2f}"
            f"{r['cpu_seconds']:>8.2f}{r['cpu_ratio']:>10.2f}"
        )
    return {"rows": rows}


def cost_section(
    source: BlockModel, data: Dataset, args: argparse.Namespace, dev: Any
) -> dict[str, Any]:
    """Each method's training, exactly as compare trains its candidate (same config), timed in
    turns like the loop rows; relative to standard fine-tuning's."""
    methods = tuple(args.methods.split(","))
    config = CompareConfig(
        eps=EPS, methods=methods, ks=(args.k,), epochs=args.epochs, batch_size=64, lr=0.05,
        augmentation="none", bn_presets=None, max_candidates=100,
    )  # fmt: skip
    plan, _ = plan_candidates(source, config, centre_k=args.k)
    first = {c.method: c for c in reversed(plan)}  # each method's own BN preset
    configs = {m: first[m].transfer_config(config) for m in methods}
    walls: dict[str, list[float]] = {m: [] for m in methods}
    cpus: dict[str, list[float]] = {m: [] for m in methods}
    for round_ in range(args.repeats + 1):
        for m, tc in configs.items():
            tc = tc.with_(schedule=tc.schedule.with_(epochs=1)) if round_ == 0 else tc  # type: ignore[union-attr]
            synchronize(dev)
            t0, c0 = time.perf_counter(), time.process_time()
            transfer(source, data, tc, device=dev, seed=0)
            synchronize(dev)
            if round_ > 0:
                walls[m].append(time.perf_counter() - t0)
                cpus[m].append(time.process_time() - c0)
    base_wall = statistics.median(walls["standard"]) if "standard" in walls else None
    base_cpu = statistics.median(cpus["standard"]) if "standard" in cpus else None
    print(
        f"\ncost: each method's training as compare trains it (k {args.k}, {args.epochs} epochs "
        f"of {len(data.train)} images, batch 64), median of {args.repeats}, relative to standard"
    )
    print(f"{'method':<14}{'seconds':>9}{'x standard':>12}{'CPU s':>8}{'x standard':>12}")
    rows = []
    for m in methods:
        wall, cpu = statistics.median(walls[m]), statistics.median(cpus[m])
        row = {"method": m, "candidate": first[m].name, "seconds": wall, "cpu_seconds": cpu,
               "all_seconds": walls[m], "all_cpu_seconds": cpus[m],
               "ratio": wall / base_wall if base_wall else None,
               "cpu_ratio": cpu / base_cpu if base_cpu else None}  # fmt: skip
        rows.append(row)
        ratio = f"{row['ratio']:>12.2f}" if row["ratio"] else f"{'':>12}"
        cpu_ratio = f"{row['cpu_ratio']:>12.2f}" if row["cpu_ratio"] else f"{'':>12}"
        print(f"{m:<14}{wall:>9.2f}{ratio}{cpu:>8.2f}{cpu_ratio}")
    return {"rows": rows}


def methods_section(
    source: BlockModel, data: Dataset, args: argparse.Namespace, dev: Any
) -> dict[str, Any]:
    config = CompareConfig(
        eps=EPS,
        methods=tuple(args.methods.split(",")),
        ks=(args.k,),
        epochs=args.method_epochs,
        batch_size=64,
        lr=0.05,
        augmentation="none",
        max_candidates=len(METHODS) * 2,
    )

    def progress(event: CompareEvent) -> None:
        if event.stage == "estimate" and event.estimate is not None:
            print(f"  estimate: {event.estimate.text()}", file=sys.stderr, flush=True)
        if event.stage == "candidate-done" and event.result is not None:
            r = event.result
            print(f"  {r.name}: test clean {r.test_clean:.3f} robust {r.test_robust:.3f}, "
                  f"cost {r.cost_seconds:.0f} s ({event.elapsed_s:.0f} s in)",
                  file=sys.stderr, flush=True)  # fmt: skip

    result = compare(
        source, data, config, device=dev, seed=0, centre_k=args.k, on_progress=progress
    )
    rows = [c.to_dict() for c in result.candidates]
    base = next(r for r in rows if r["method"] == "standard")
    print(
        f"\nmethods: one compare from the {args.source} source, k {args.k}, "
        f"{args.method_epochs} epochs, batch 64, lr 0.05; robust: fast ensemble at Linf "
        f"{EPS}; validation n {result.selection['val_samples']}, test n {len(data.test)}; "
        f"on {rows[0]['device']}"
    )
    head = (
        f"{'candidate':<32}{'val cl':>7}{'val rob':>8}{'test cl':>8}{'test rob':>9}"
        f"{'train s':>9}{'audit s':>8}{'x train':>8}{'x cost':>7}"
    )
    print(head)
    for r in rows:
        r["train_ratio"] = r["train_seconds"] / base["train_seconds"]
        r["cost_ratio"] = r["cost_seconds"] / base["cost_seconds"]
        print(
            f"{r['name']:<32}{r['val_clean']:>7.3f}{r['val_robust']:>8.3f}"
            f"{r['test_clean']:>8.3f}{r['test_robust']:>9.3f}{r['train_seconds']:>9.1f}"
            f"{r['audit_seconds']:>8.1f}{r['train_ratio']:>8.2f}{r['cost_ratio']:>7.2f}"
        )
    print(f"chosen: {result.chosen.name}")
    return {"rows": rows, "chosen": result.chosen.name, "selection": result.selection}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto [default: cpu]")
    p.add_argument("--k", type=int, default=3, help="tuned blocks [default: 3, the demo's]")
    p.add_argument("--epochs", type=int, default=3, help="the loop section's epochs [3]")
    p.add_argument("--batch-size", type=int, default=64, help="the loop section's batch [64]")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of the loop section [3]")
    p.add_argument("--method-epochs", type=int, default=20, help="the methods section's [20]")
    p.add_argument("--source", choices=("fdm", "at"), default="fdm")
    p.add_argument(
        "--methods", default=",".join(METHODS), help="the methods section's methods [all six]"
    )
    p.add_argument("--skip", default="", help="comma-separated sections to skip: loop,cost,methods")
    p.add_argument("--cache", type=Path, default=Path("bench/results/ablation"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads [default: torch's]")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    torch.manual_seed(0)
    lam = 0.05 if args.source == "fdm" else 0.0
    source_data = digits_task((0, 1, 2, 3, 4), seed=0)
    source = _source(Source("gap", lam, 3), source_data, args.cache, str(dev))
    target = digits_task((5, 6, 7, 8, 9), seed=0)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"adversarial fine-tuning benchmark on {where}, {torch.get_num_threads()} threads; "
        f"digits 0-4 -> 5-9, small-cnn (gap), Linf eps {EPS}"
    )
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out: dict[str, Any] = {"device": where, "threads": torch.get_num_threads()}
    if "loop" not in skip:
        out["loop"] = loop_section(source, target, args, dev)
    if "cost" not in skip:
        out["cost"] = cost_section(source, target, args, dev)
    if "methods" not in skip:
        out["methods"] = methods_section(source, target, args, dev)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
