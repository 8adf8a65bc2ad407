"""Device-level choices made once: channels_last everywhere, bf16 autocast for training on CUDA,
fp32 attacks unless a caller asks for bf16, and the blocks compiled when ``CARTL_COMPILE`` asks."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

from cartl_core.config import Precision
from cartl_core.errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when present; anything else must name a usable device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but no CUDA device is available; use --device cpu")
    return dev


#: Called by an attack after each of its steps (queries, for Square) with (done, total) for the
#: batch it was given. It may raise to stop the attack (a cancelled job).
StepFn = Callable[[int, int], None]


def autocast(
    device: torch.device, precision: Precision = "bf16"
) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA when ``precision`` is ``bf16``; a no-op otherwise.

    Training takes the default. Attacks pass ``fp32`` unless asked: bf16 rounds the input of the
    first convolution to about 0.002 of the pixel range, a few percent of 8/255, so late attack
    steps can vanish and a robust accuracy would not reproduce in fp32.
    """
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def effective_precision(device: torch.device, precision: Precision) -> Precision:
    """What a pass on ``device`` really computes in: bf16 exists only on CUDA here."""
    return "bf16" if device.type == "cuda" and precision == "bf16" else "fp32"


_M = TypeVar("_M", bound=nn.Module)

#: ``torch.compile`` modes for :func:`compile_blocks`; ``off``: eager.
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead")

#: Where :func:`prepare_model` reads the mode. Off by default: whether compiling pays on a card is
#: what ``bench/gpu_arithmetic.py`` measures, and no card has been measured yet (docs/speed.md).
COMPILE_ENV = "CARTL_COMPILE"


def compile_mode() -> str:
    mode = os.environ.get(COMPILE_ENV, "off").strip() or "off"
    if mode not in COMPILE_MODES:
        raise ConfigError(f"{COMPILE_ENV}={mode!r}: use one of {', '.join(COMPILE_MODES)}")
    return mode


def compile_blocks(model: _M, mode: str) -> _M:
    """The stem and every block compiled in place (``nn.Module.compile``), so each way through
    the model (forward, ``frozen_part``, ``tuned_part``, the attacks' forward-backward) runs
    compiled code while the modules, parameter names and state dicts stay the same. A block is
    the unit because the methods cut the model between blocks. ``off`` leaves it eager."""
    if mode == "off":
        return model
    options: dict[str, object] = {} if mode == "default" else {"mode": mode}
    stem, blocks = getattr(model, "stem", None), getattr(model, "blocks", None)
    if not isinstance(stem, nn.Module) or not isinstance(blocks, nn.ModuleList):
        model.compile(**options)
        return model
    for part in (stem, *blocks):
        part.compile(**options)
    return model


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    # channels_last pays on the CPU too (oneDNN): 1.1x on a ResNet-18 and 1.3-1.5x on the small
    # CNN, forward and backward, measured on this project's 2-core CI machine.
    model.to(device)
    model.to(memory_format=torch.channels_last)
    return compile_blocks(model, compile_mode())


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def frozen_for_attack(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients while attacking; the caller's state comes back after.

    Parameters that keep ``requires_grad`` make every backward also compute weight gradients,
    which costs about 1.4x on a ResNet-18 for gradients the attack throws away.
    """
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it means something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    run: Callable[[], None], device: torch.device, repeats: int = 3, warm_up: bool = True
) -> float:
    """Median seconds of ``repeats`` runs, after one untimed run unless the caller has warmed the
    kernels up already (the first run pays for allocation and kernel choice; a single run on a
    busy CPU was seen off by 2x)."""
    if warm_up:
        run()
        synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The layout new tensors like ``t`` should have: channels_last where ``t`` is (and is not
    also plainly contiguous, as a tensor with one channel or one pixel is both)."""
    if (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format
