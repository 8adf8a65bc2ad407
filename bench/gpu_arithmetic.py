"""How much of the card's arithmetic the attack and the adversarial-training step use.

One run, one model (WRN-34-10 by default, CIFAR-sized inputs, the library's channels_last), for
each batch size and each way of running the model:

``matmul``
    The reference: a dense bf16 matmul (``--matmul-size`` cubed, fp32 accumulate), the rate the
    card reaches on the most favourable work there is. TFLOP/s = 2 n^3 / seconds.
``pgd-10``
    ``cartl_core.pgd``, Linf 8/255, step 2/255, one random start, ``precision="bf16"`` (bf16
    autocast, as adversarial training attacks; audits run fp32 unless asked).
``pgd-7 AT step``
    ``cartl_core.training.fdm_step`` with lambda 0: PGD-7 in bf16, then a train-mode forward,
    backward and SGD step, the pre-training's own step.

The FLOPs of each workload are counted once, eagerly, by ``torch.utils.flop_counter`` (the matmul
and convolution FLOPs of every forward and backward it runs: the attack's backward computes input
gradients only). ``achieved`` = FLOPs / median seconds; ``of matmul`` = achieved / the matmul
rate. Ways: ``eager``; the blocks compiled by ``torch.compile`` (``default``,
``max-autotune-no-cudagraphs``) and with CUDA graphs (``reduce-overhead``), as ``CARTL_COMPILE``
would run them (:func:`cartl_core._runtime.compile_blocks`). ``--profile DIR`` writes a
``torch.profiler`` trace of each workload's eager run there and prints its 15 costliest kernels
(what bounds a rate that stays low).

``--device cpu --arch small-cnn --batch 64 --matmul-size 1024`` runs the same script without a GPU
(fp32 throughout: it checks the script, its numbers mean nothing for a card).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cartl_core import AttackConfig, FDMConfig
from cartl_core._runtime import compile_blocks, prepare_model, synchronize
from cartl_core.attacks import pgd
from cartl_core.models import BlockModel, ModelSpec, build_model
from cartl_core.training import fdm_step

EPS, ALPHA = 8 / 255, 2 / 255
WAYS = ("eager", "default", "max-autotune-no-cudagraphs", "reduce-overhead")


def seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median of ``repeats`` timed runs after two untimed ones (the first compiles, the second
    settles CUDA graphs and the allocator)."""
    for _ in range(2):
        run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_rate(device: torch.device, n: int, repeats: int) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / seconds(lambda: a @ b, device, repeats)


def counted_flops(run: Callable[[], object]) -> int:
    """The FLOPs of the matmuls and convolutions ``run`` dispatches, by torch's own formulas
    (``torch.utils.flop_counter``'s registry). Not ``FlopCounterMode`` itself: its module
    tracking hooks refuse ``autograd.grad`` with respect to an input, which is what PGD calls."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Count.total += int(formula(*args, **kwargs, out_val=out))
            return out

    with Count():  # type: ignore[no-untyped-call]
        run()
    return Count.total


def workloads(
    model: BlockModel, x: torch.Tensor, y: torch.Tensor
) -> dict[str, Callable[[], object]]:
    attack = AttackConfig(eps=EPS, alpha=ALPHA, steps=7)
    step = fdm_step(model, torch.optim.SGD(model.parameters(), lr=0.0), FDMConfig(
        k=1, fdm_lambda=0.0, attack=attack))  # fmt: skip

    def at_step() -> object:
        model.train()  # as the training loop sets it before each epoch
        return step(x, y)

    return {
        "pgd-10": lambda: pgd(model, x, y, EPS, ALPHA, 10, precision="bf16"),
        "pgd-7 AT step": at_step,
    }


def profile(run: Callable[[], object], device: torch.device, out: Path, name: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    run()
    synchronize(device)
    with torch_profile(activities=activities, record_shapes=True) as prof:
        run()
        synchronize(device)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name.replace(' ', '-')}.json"
    prof.export_chrome_trace(str(path))
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n{name}: costliest operations (trace: {path})")
    print(prof.key_averages().table(sort_by=key, row_limit=15))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", default="wrn-34-10")
    p.add_argument("--size", type=int, default=32, help="input side [32]")
    p.add_argument("--batch", type=int, nargs="+", default=[256, 512])
    p.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--matmul-size", type=int, default=8192)
    p.add_argument("--profile", type=Path, default=None, metavar="DIR")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_arithmetic: no CUDA device (use --device cpu to try the script)")

    torch.manual_seed(0)
    base = build_model(ModelSpec(args.arch, 10, 3, args.size))
    prepare_model(base, device)
    rate = matmul_rate(device, args.matmul_size, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    dtype = "bf16" if device.type == "cuda" else "fp32"
    print(f"gpu arithmetic benchmark: {name}, torch {torch.__version__}, {args.arch} at "
          f"{args.size} px, channels_last")  # fmt: skip
    print(f"{dtype} matmul {args.matmul_size}^3: {rate / 1e12:.1f} TFLOP/s (the reference)\n")
    print(f"{'workload':<15}{'batch':>6}  {'way':<28}{'ms':>9}{'TFLOP':>8}"
          f"{'TFLOP/s':>9}{'of matmul':>11}{'vs eager':>10}")  # fmt: skip
    for batch in args.batch:
        x = torch.rand(batch, 3, args.size, args.size, device=device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=device)
        flops = {
            name: counted_flops(run) for name, run in workloads(copy.deepcopy(base), x, y).items()
        }
        eager_s: dict[str, float] = {}
        for way in args.ways:
            model = copy.deepcopy(base)
            if way != "eager":
                compile_blocks(model, way)
            for name, run in workloads(model, x, y).items():
                try:
                    s = seconds(run, device, args.repeats)
                except Exception as exc:  # a mode that does not compile this model: say so
                    print(f"{name:<15}{batch:>6}  {way:<28}failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:80]}")  # fmt: skip
                    continue
                if way == "eager":
                    eager_s[name] = s
                achieved = flops[name] / s
                ratio = eager_s[name] / s if name in eager_s else float("nan")
                print(f"{name:<15}{batch:>6}  {way:<28}{s * 1e3:>9.1f}{flops[name] / 1e12:>8.2f}"
                      f"{achieved / 1e12:>9.1f}{achieved / rate:>11.2f}{ratio:>10.2f}")  # fmt: skip
                if args.profile is not None and way == "eager":
                    profile(run, device, args.profile, f"{name}-b{batch}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
