"""Attack and adversarial-training throughput: cartl_core against a minimal loop and two libraries.

One run, one model (same weights), one batch of data, three sections:

``pgd``
    PGD-``--steps`` (Linf eps 8/255, step 2/255, one random start) producing ``x_adv`` for the
    batch. Rows: ``minimal`` (a hand-written loop: eval mode, parameters frozen, input gradient
    only, sign step, projection), ``minimal+param-grads`` (the same loop with the parameters left
    trainable and ``loss.backward()``, as naive code does), ``cartl_core.pgd``, ``torchattacks.PGD``
    and ART's ``ProjectedGradientDescentPyTorch`` behind a ``PyTorchClassifier``.
``adv-train``
    One PGD-7 adversarial-training step: the attack in eval mode, then a train-mode forward,
    backward and SGD step. Rows: ``minimal``, ``cartl_core.pgd + SGD`` (the library's attack, the
    same SGD step) and, when available, ``cartl_core.training.fdm_step`` with lambda 0 (the
    library's own plain adversarial-training step).
``robust-eval``
    The audit's job, robust accuracy of the batch: a clean forward, then PGD on the clean-correct
    samples and a prediction on the result (``torchattacks``, ``minimal``), against
    ``cartl_core.attacks.robust_mask``, which stops attacking a sample as soon as any iterate fools
    the model. The model is first trained for ``--train-steps`` quick SGD steps on synthetic data
    (class patterns of random amplitude plus noise), so that it is accurate on clean inputs, robust
    on some samples (large amplitude) and not on others; each row prints the accuracies it found.

Times are the median of ``--repeats`` timed repetitions after one warm-up, with
``torch.cuda.synchronize()`` around each on CUDA; throughput is ``batch size / median seconds``
(for ``adv-train``: images trained on per second).

Reading the ratio column: ``ratio = throughput / throughput of the section's minimal row``, so
1.00 is the hand-written baseline, above 1 is faster and below 1 slower (0.70 = 30% fewer images
per second). The model is channels_last on every device, as the library prepares it; on CUDA the
``minimal`` and ``cartl_core`` rows run under bf16 autocast (the library's default there) and the
other libraries in fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cartl_core
from cartl_core._runtime import prepare_model, resolve_device

EPS = 8 / 255
ALPHA = 2 / 255
ADV_TRAIN_STEPS = 7
NUM_CLASSES = 10
SECTIONS = ("pgd", "adv-train", "robust-eval")
T = TypeVar("T")
Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Ctx:
    """Everything the sections share: the model, the batch and the timing settings."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device
    steps: int
    repeats: int
    seed: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Row:
    section: str
    method: str
    seconds: float | None
    images_per_s: float | None
    ratio: float | None = None
    note: str = ""
    clean_acc: float | None = None
    robust_acc: float | None = None


@dataclass
class Accuracy:
    """What a robust-evaluation job found on the batch."""

    clean: float
    robust: float


# A row to measure: method name, the job (None: its library is not installed), a note.
Job = tuple[str, Callable[[], object] | None, str]


# ---------------------------------------------------------------- timing and helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _once(ctx: Ctx, fn: Callable[[], T]) -> tuple[float, T]:
    torch.manual_seed(ctx.seed)  # every method draws the same random start
    _sync(ctx.device)
    start = time.perf_counter()
    result = fn()
    _sync(ctx.device)
    return time.perf_counter() - start, result


def timed(ctx: Ctx, fns: Sequence[Callable[[], T]]) -> list[tuple[float, T]]:
    """Per job: median seconds of ``ctx.repeats`` calls after one warm-up, and its last result.

    The jobs take turns (a warm-up round, then timed rounds), so a change in the load of a
    shared machine during the run falls on all of them alike.
    """
    results = [_once(ctx, fn)[1] for fn in fns]
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(ctx.repeats):
        for i, fn in enumerate(fns):
            seconds, results[i] = _once(ctx, fn)
            times[i].append(seconds)
    return [(statistics.median(t), r) for t, r in zip(times, results, strict=True)]


def measure(ctx: Ctx, section: str, jobs: Sequence[Job]) -> list[Row]:
    """Time the available jobs together; ratios against the first (the minimal loop)."""
    timings = iter(timed(ctx, [fn for _, fn, _ in jobs if fn is not None]))
    rows = []
    for method, fn, note in jobs:
        if fn is None:
            rows.append(Row(section, method, None, None, note="not installed"))
            continue
        seconds, result = next(timings)
        row = Row(section, method, seconds, ctx.x.shape[0] / seconds, note=note)
        if isinstance(result, Accuracy):
            row.clean_acc, row.robust_acc = result.clean, result.robust
            acc = f"clean {result.clean:.1%}, robust {result.robust:.1%}"
            row.note = f"{note}; {acc}" if note else acc
        rows.append(row)
    base = rows[0].images_per_s
    for r in rows:
        r.ratio = r.images_per_s / base if r.images_per_s and base else None
    return rows


def _amp(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA, as cartl_core does there; nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def eval_mode(model: nn.Module, *, param_grads: bool) -> Iterator[None]:
    """Eval mode with parameters frozen (or trainable); the caller's mode and flags come back."""
    was_training, params = model.training, list(model.parameters())
    flags = [p.requires_grad for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(param_grads)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# ---------------------------------------------------------------- the minimal loop


def _input_grad(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, param_grads: bool
) -> torch.Tensor:
    x_adv = x_adv.detach().requires_grad_()
    with _amp(x_adv.device):
        logits = model(x_adv)
    loss = F.cross_entropy(logits.float(), y)
    if not param_grads:
        (grad,) = torch.autograd.grad(loss, x_adv)
        return grad
    model.zero_grad(set_to_none=True)
    loss.backward()
    assert x_adv.grad is not None
    return x_adv.grad


def minimal_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, param_grads: bool = False
) -> torch.Tensor:
    """Linf PGD with a random start; the caller sets eval mode and the parameters' flags."""
    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0.0, 1.0)
    for _ in range(steps):
        grad = _input_grad(model, x_adv, y, param_grads)
        x_adv = x_adv.detach() + ALPHA * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0.0, 1.0)
    return x_adv.detach()


def minimal_attack(model: nn.Module, steps: int, param_grads: bool = False) -> Attack:
    def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with eval_mode(model, param_grads=param_grads):
            return minimal_pgd(model, x, y, steps, param_grads)

    return attack


def cartl_attack(model: nn.Module, steps: int) -> Attack:
    def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cartl_core.pgd(model, x, y, EPS, ALPHA, steps)

    return attack


# ---------------------------------------------------------------- other libraries


def torchattacks_attack(model: nn.Module, steps: int) -> Attack | None:
    """torchattacks.PGD on the model as is: it takes [0, 1] inputs, normalisation is inside."""
    ta = _optional("torchattacks")
    if ta is None:
        return None
    atk = ta.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)

    def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model.eval()
        out: torch.Tensor = atk(x, y)
        return out

    return attack


def art_attack(model: nn.Module, x: torch.Tensor, steps: int) -> Attack | None:
    """ART's PGD behind a PyTorchClassifier; numpy in and out, as ART works."""
    if _optional("art") is None:
        return None
    import numpy as np
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=NUM_CLASSES,
        clip_values=(0.0, 1.0),
        device_type="gpu" if x.device.type == "cuda" else "cpu",
    )
    pgd = ProjectedGradientDescentPyTorch(
        clf,
        norm=np.inf,
        eps=EPS,
        eps_step=ALPHA,
        max_iter=steps,
        num_random_init=1,
        batch_size=x.shape[0],
        verbose=False,
    )

    def attack(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        model.eval()
        adv = pgd.generate(x=xb.cpu().numpy(), y=yb.cpu().numpy())
        return torch.from_numpy(adv).to(xb.device)

    return attack


# ---------------------------------------------------------------- section 1: PGD


def _notes(ctx: Ctx) -> tuple[str, str]:
    """How the minimal/cartl_core rows and the other libraries' rows run on this device."""
    if ctx.cuda:
        return "bf16 autocast", "fp32"
    return "", ""


def _call(attack: Attack | None, ctx: Ctx) -> Callable[[], object] | None:
    return None if attack is None else partial(attack, ctx.x, ctx.y)


def section_pgd(ctx: Ctx) -> list[Row]:
    m, s = ctx.model, ctx.steps
    amp, fp32 = _notes(ctx)
    art_note = ", ".join(filter(None, [fp32, "numpy round trip"]))
    return measure(
        ctx,
        f"PGD-{s}",
        [
            ("minimal", _call(minimal_attack(m, s), ctx), amp),
            ("minimal+param-grads", _call(minimal_attack(m, s, param_grads=True), ctx), amp),
            ("cartl_core.pgd", _call(cartl_attack(m, s), ctx), amp),
            ("torchattacks.PGD", _call(torchattacks_attack(m, s), ctx), fp32),
            ("ART PGD (PyTorchClassifier)", _call(art_attack(m, ctx.x, s), ctx), art_note),
        ],
    )


# ---------------------------------------------------------------- section 2: adversarial training


def _sgd_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> None:
    model.train()
    with _amp(x.device):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def _adv_step(ctx: Ctx, make_attack: Callable[[nn.Module, int], Attack]) -> Callable[[], None]:
    """A step on a private copy of the model: attack with PGD-7, then one SGD step."""
    model = copy.deepcopy(ctx.model)
    opt, attack = _sgd(model), make_attack(model, ADV_TRAIN_STEPS)
    return lambda: _sgd_step(model, opt, attack(ctx.x, ctx.y), ctx.y)


def _fdm_step(ctx: Ctx) -> Callable[[], None] | None:
    """cartl_core's own plain adversarial-training step (FDM with lambda 0), if it has one."""
    make = getattr(cartl_core.training, "fdm_step", None)
    model = copy.deepcopy(ctx.model)
    if make is None or not isinstance(model, cartl_core.BlockModel):
        return None
    attack = cartl_core.AttackConfig(eps=EPS, alpha=ALPHA, steps=ADV_TRAIN_STEPS)
    step = make(model, _sgd(model), cartl_core.FDMConfig(k=1, fdm_lambda=0.0, attack=attack))

    def run() -> None:
        model.train()  # as the library's training loop does before each epoch
        step(ctx.x, ctx.y)

    return run


def section_adv_train(ctx: Ctx) -> list[Row]:
    amp, _ = _notes(ctx)
    return measure(
        ctx,
        f"PGD-{ADV_TRAIN_STEPS} AT step",
        [
            ("minimal", _adv_step(ctx, minimal_attack), amp),
            ("cartl_core.pgd + SGD", _adv_step(ctx, cartl_attack), amp),
            ("cartl_core fdm_step (lambda 0)", _fdm_step(ctx), amp),
        ],
    )


# ---------------------------------------------------------------- section 3: robust accuracy


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool) -> torch.Tensor:
    model.eval()
    with torch.no_grad(), _amp(x.device) if amp else contextlib.nullcontext():
        pred: torch.Tensor = model(x).argmax(1)
    return pred == y


def attack_then_predict(ctx: Ctx, attack: Attack, amp: bool) -> Accuracy:
    """Clean accuracy, and robust accuracy from attacking the clean-correct samples."""
    ok = _correct(ctx.model, ctx.x, ctx.y, amp)
    x_adv = attack(ctx.x[ok], ctx.y[ok])
    robust = _correct(ctx.model, x_adv, ctx.y[ok], amp)
    n = ctx.y.shape[0]
    return Accuracy(ok.sum().item() / n, robust.sum().item() / n)


def early_exit(ctx: Ctx) -> Accuracy:
    """The audit's way: a clean forward, then robust_mask on the clean-correct samples."""
    ok = _correct(ctx.model, ctx.x, ctx.y, amp=True)
    mask = cartl_core.robust_mask(
        ctx.model,
        ctx.x[ok],
        ctx.y[ok],
        eps=EPS,
        alpha=ALPHA,
        steps=ctx.steps,
        norm="linf",
        random_start=True,
        restarts=1,
        loss="ce",
    )
    n = ctx.y.shape[0]
    return Accuracy(ok.sum().item() / n, mask.sum().item() / n)


def section_robust_eval(ctx: Ctx) -> list[Row]:
    m, s = ctx.model, ctx.steps
    amp, fp32 = _notes(ctx)
    ta = torchattacks_attack(m, s)
    then_predict = partial(attack_then_predict, ctx)
    return measure(
        ctx,
        f"robust acc, PGD-{s}",
        [
            ("minimal PGD then predict", partial(then_predict, minimal_attack(m, s), True), amp),
            ("torchattacks PGD then predict", ta and partial(then_predict, ta, False), fp32),
            ("cartl_core robust_mask", partial(early_exit, ctx), amp),
        ],
    )


# ---------------------------------------------------------------- synthetic data, quick training


class Synthetic:
    """Ten fixed low-frequency +-1 patterns; a sample is ``0.5 + a * pattern[y] + 0.1 * noise``.

    The amplitude ``a`` is uniform in [0.02, 0.2] per sample, so against eps = 8/255 ~ 0.031 the
    faint samples can be broken and the strong ones cannot: a partially robust model.
    """

    def __init__(self, device: torch.device, channels: int = 3, size: int = 32) -> None:
        gen = torch.Generator().manual_seed(1234)
        patterns = torch.randn(NUM_CLASSES, channels, 4, 4, generator=gen).sign()
        self.patterns = F.interpolate(patterns, size=size, mode="nearest").to(device)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.patterns.device
        y = torch.randint(0, NUM_CLASSES, (n,), device=dev)
        a = torch.empty(n, 1, 1, 1, device=dev).uniform_(0.02, 0.2)
        noise = torch.randn(n, *self.patterns.shape[1:], device=dev)
        return (0.5 + a * self.patterns[y] + 0.1 * noise).clamp(0.0, 1.0), y


def quick_train(model: nn.Module, data: Synthetic, steps: int, batch_size: int) -> None:
    """A few clean SGD steps, then BatchNorm statistics recomputed for the final weights."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        x, y = data.batch(batch_size)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    bns = [b for b in model.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the passes below
    with torch.no_grad():
        for _ in range(4):
            model(data.batch(batch_size)[0])
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


# ---------------------------------------------------------------- output


def header(args: argparse.Namespace, device: torch.device, model: nn.Module, weights: str) -> str:
    n_params = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return "\n".join(
        [
            f"cartl_core attack benchmark, {datetime.date.today().isoformat()}",
            f"device {where}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
            f"model {args.arch} ({n_params / 1e6:.1f}M parameters), batch {args.batch_size}, "
            f"Linf eps 8/255 step 2/255, median of {args.repeats} after 1 warm-up",
            f"weights: {weights}",
        ]
    )


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: Sequence[Row]) -> str:
    lines = [
        f"{'section':<22} {'method':<31} {'s/batch':>8} {'images/s':>9} {'ratio':>6}  notes",
    ]
    for r in rows:
        lines.append(
            f"{r.section:<22} {r.method:<31} {_fmt(r.seconds, '.2f'):>8} "
            f"{_fmt(r.images_per_s, '.1f'):>9} {_fmt(r.ratio, '.2f'):>6}  {r.note}".rstrip()
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="PGD / adversarial-training / robust-evaluation throughput: cartl_core vs a "
        "minimal PyTorch loop, torchattacks and ART. ratio = throughput / minimal's (>1 faster).",
    )
    p.add_argument("--arch", default="resnet18-cifar", help="cartl_core architecture name")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="PGD steps (sections pgd, robust-eval)")
    p.add_argument("--repeats", type=int, default=2, help="timed repetitions after 1 warm-up")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--train-steps", type=int, default=20, help="quick SGD steps (robust-eval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the header and rows here")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1 or args.steps < 1:
        p.error("--repeats, --batch-size and --steps must be >= 1")
    return args


def build(args: argparse.Namespace) -> tuple[Ctx, str]:
    """The model (quick-trained when robust-eval runs), the batch, and how the weights came."""
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    model = prepare_model(cartl_core.create_model(args.arch, NUM_CLASSES), device)
    data = Synthetic(device)
    weights = "random initialisation"
    if "robust-eval" in args.only and args.train_steps > 0:
        quick_train(model, data, args.train_steps, args.batch_size)
        weights = f"{args.train_steps} quick SGD steps on synthetic data (see robust-eval notes)"
    model.eval()
    x, y = data.batch(args.batch_size)
    return Ctx(model, x, y, device, args.steps, args.repeats, args.seed), weights


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    ctx, weights = build(args)
    head = header(args, ctx.device, ctx.model, weights)
    print(head, flush=True)
    run: dict[str, Callable[[Ctx], list[Row]]] = {
        "pgd": section_pgd,
        "adv-train": section_adv_train,
        "robust-eval": section_robust_eval,
    }
    rows: list[Row] = []
    for name in SECTIONS:
        if name in args.only:
            rows += run[name](ctx)
            print(f"... {name} done", file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        out: dict[str, Any] = {"header": head.splitlines(), "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
