"""One training run on several processes: data parallelism over GPUs (NCCL) or CPU processes
(gloo), with the numbers of one process.

:func:`run_parallel` starts ``processes - 1`` helper processes and runs the function itself as
rank 0, so its callbacks (progress, cancel, the epoch records) stay in the caller's process. Every
rank runs the same training loop on its rows of each global batch; what keeps it the training of
one process with the same batch size:

- the global batch is drawn and augmented on every rank from the same generator, and each rank
  takes its contiguous rows (:func:`shard_rows`);
- each rank's loss is its share of the global batch's loss (:func:`share`: a mean over its rows
  weighs ``rows / total``), and the gradients are summed over the ranks before each optimiser
  step, so every rank takes the same step;
- BatchNorm in train mode normalises with the statistics of the global batch (:func:`sync_bn`),
  and updates its running statistics with them;
- random draws made for a batch (PGD's random start, TRADES' noise) are drawn for the global
  batch on every rank and sliced (:func:`batch_noise`), so each image gets the numbers it would
  get in one process.

Rank 0 alone reports progress, evaluates each epoch and writes the resumable state; a cancel seen
by rank 0 is passed to the others at the next batch. Floating-point sums in another order are the
only difference (tests/core/test_parallel.py).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cartl_core._runtime import memory_format_of
from cartl_core.errors import ConfigError

__all__ = [
    "Group",
    "batch_noise",
    "current",
    "run_parallel",
    "shard_rows",
    "share",
    "sync_bn",
]

_T = TypeVar("_T")

#: How long a collective waits for a rank that does not answer (a helper that died).
TIMEOUT = datetime.timedelta(minutes=10)


@dataclass
class Group:
    """This process's place in a data-parallel run."""

    rank: int
    world: int
    #: The batch in hand, while a training step runs: this rank's first row and row count, and
    #: the global batch's size.
    offset: int = 0
    rows: int = 0
    total: int = 0
    in_step: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


_GROUP: Group | None = None


def current() -> Group | None:
    """The data-parallel group this process runs in, or None (one process)."""
    return _GROUP


def share() -> float:
    """This rank's share of a mean over the global batch (1 outside a data-parallel step)."""
    g = _GROUP
    if g is None or not g.in_step or g.total == 0:
        return 1.0
    return g.rows / g.total


def shard_rows(n: int) -> tuple[int, int]:
    """This rank's (first row, row count) of a global batch of ``n`` rows: contiguous, sizes
    differing by at most one."""
    g = _GROUP
    if g is None:
        return 0, n
    base, extra = divmod(n, g.world)
    rows = base + (1 if g.rank < extra else 0)
    return g.rank * base + min(g.rank, extra), rows


@contextlib.contextmanager
def step_of(offset: int, rows: int, total: int) -> Iterator[None]:
    """Mark a training step over rows ``offset:offset+rows`` of a global batch of ``total``."""
    g = _GROUP
    if g is None:
        yield
        return
    g.offset, g.rows, g.total, g.in_step = offset, rows, total, True
    try:
        yield
    finally:
        g.in_step = False


def batch_noise(draw: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``draw(x)``, random numbers for ``x``'s rows (``torch.rand_like``...). In a data-parallel
    step they are drawn for the whole global batch, in its memory layout, and sliced to this
    rank's rows: the random stream advances as in one process and each image gets its numbers."""
    g = _GROUP
    if g is None or not g.in_step or x.shape[0] != g.rows or g.total == g.rows:
        return draw(x)
    whole = torch.empty(
        (g.total, *x.shape[1:]), device=x.device, dtype=x.dtype, memory_format=memory_format_of(x)
    )
    return draw(whole)[g.offset : g.offset + g.rows]


def all_reduce_(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> None:
    if _GROUP is not None:
        dist.all_reduce(tensor, op=op)


def sum_gradients(optimizer: torch.optim.Optimizer, *_args: Any, **_kwargs: Any) -> None:
    """Before each optimiser step: every parameter's gradient summed over the ranks (each rank's
    loss is its share of the global batch's, :func:`share`), in one flat buffer."""
    grads = [
        p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
    ]
    if _GROUP is None or not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    start = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[start : start + n].view_as(g))
        start += n


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on some rank (a cancel seen by rank 0 reaches every rank)."""
    if _GROUP is None:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class _SumOverRanks(torch.autograd.Function):
    """A sum over the ranks whose backward is the sum of the ranks' gradients (each rank's
    input feeds every rank's output)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def _sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _SumOverRanks.apply(tensor)
    return out


def _synced_forward(self: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """A BatchNorm's train-mode forward with the global batch's statistics (fp32): each rank's
    sums all-reduced with their gradients, so the backward is that of one BatchNorm over the whole
    batch."""
    if not self.training or _GROUP is None:
        return type(self).forward(self, x)
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    xf = x.float()
    count = torch.tensor([float(xf.numel() // xf.shape[1])], device=x.device)
    sums = _sum_over_ranks(torch.cat([xf.sum(dims), count]))
    n = sums[-1]
    mean = sums[:-1] / n
    centred = xf - mean.view(shape)
    var = _sum_over_ranks(centred.square().sum(dims)) / n
    if self.track_running_stats and self.running_mean is not None:
        with torch.no_grad():
            assert self.num_batches_tracked is not None
            assert self.running_var is not None
            self.num_batches_tracked.add_(1)
            m = (
                self.momentum
                if self.momentum is not None
                else 1.0 / float(self.num_batches_tracked)
            )
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
    out = centred / torch.sqrt(var.view(shape) + self.eps)
    if self.affine:
        out = out * self.weight.view(shape) + self.bias.view(shape)
    result: torch.Tensor = out
    return result


@contextlib.contextmanager
def sync_bn(model: nn.Module) -> Iterator[None]:
    """Every BatchNorm of ``model`` normalises with the global batch's statistics while inside
    (the modules, their class and their state dicts stay as they are)."""
    if _GROUP is None:
        yield
        return
    patched = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in patched:
        m.forward = types.MethodType(_synced_forward, m)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_device(device: str | torch.device | None, rank: int) -> str | torch.device | None:
    """Rank ``r``'s device: ``cuda:r`` of the GPUs this process sees; the CPU stays the CPU."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    return torch.device("cuda", rank) if dev.type == "cuda" else dev


def _join(rank: int, world: int, port: int, device: str | torch.device | None) -> None:
    global _GROUP
    dev = torch.device(str(_rank_device(device, rank)))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        "nccl" if dev.type == "cuda" else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=TIMEOUT,
    )
    _GROUP = Group(rank, world)


def _leave() -> None:
    global _GROUP
    _GROUP = None
    if dist.is_initialized():
        dist.destroy_process_group()


def _die_with_parent() -> None:
    """End this helper when rank 0's process is gone (killed, or ended to enforce a cancel)
    rather than wait out the collective's timeout."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _helper(argv: list[str]) -> int:
    """A helper rank: ``python -m cartl_core._rank PAYLOAD RANK WORLD PORT THREADS``."""
    payload, rank, world, port, threads = argv[0], *map(int, argv[1:5])
    torch.set_num_threads(threads)
    _die_with_parent()
    # The payload is the run's own, written by rank 0 for its helpers a moment ago in a private
    # folder (0700, 0600): the function to run and its arguments, as multiprocessing would send.
    with open(payload, "rb") as f:
        fn, kwargs = pickle.load(f)
    try:
        _join(rank, world, port, kwargs.get("device"))
        fn(**{**kwargs, "device": _rank_device(kwargs.get("device"), rank)})
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        _leave()
    return 0


def run_parallel(
    fn: Callable[..., _T], processes: int, main_kwargs: dict[str, Any], **kwargs: Any
) -> _T:
    """``fn(**kwargs, **main_kwargs)`` as rank 0 of ``processes`` data-parallel processes; the
    helpers run ``fn(**kwargs)`` (``kwargs`` must pickle: models, data, configs, paths). On the
    CPU each process gets its share of this process's threads; on CUDA rank r takes ``cuda:r``.
    A failure on any rank ends them all.

    The helpers are new interpreters (``python -m cartl_core._rank``), not multiprocessing
    children: a Celery pool process, which runs jobs, may not have those."""
    if processes < 2:
        return fn(**kwargs, **main_kwargs)
    if _GROUP is not None:
        raise ConfigError("a data-parallel run cannot start another inside it")
    device = kwargs.get("device")
    cuda = torch.device(str(_rank_device(device, 0))).type == "cuda"
    if cuda and torch.cuda.device_count() < processes:
        raise ConfigError(
            f"{processes} processes need {processes} GPUs; this process sees "
            f"{torch.cuda.device_count()}",
            field="processes",
        )
    threads = torch.get_num_threads()
    each = max(1, threads // processes)
    port = _free_port()
    helpers: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="cartl-parallel-") as tmp:
        payload = Path(tmp) / "run.pickle"
        with payload.open("wb") as f:
            pickle.dump((fn, kwargs), f, protocol=pickle.HIGHEST_PROTOCOL)
        for rank in range(1, processes):
            cmd = [sys.executable, "-m", "cartl_core._rank", str(payload), str(rank),
                   str(processes), str(port), str(each)]  # fmt: skip
            helpers.append(subprocess.Popen(cmd))
        torch.set_num_threads(each)
        try:
            _join(0, processes, port, device)
            return fn(**{**kwargs, "device": _rank_device(device, 0)}, **main_kwargs)
        except BaseException:
            for h in helpers:
                h.kill()
            raise
        finally:
            _leave()
            for h in helpers:
                try:
                    h.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    h.kill()
                    h.wait()
            torch.set_num_threads(threads)
