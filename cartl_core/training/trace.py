"""The robust trace: clean and robust accuracy on a fixed test subset after every epoch, and the
catastrophic-overfitting warning read from it.

The trace is monitoring only. It never picks a checkpoint or stops a run (that would be model
selection on the test set); a run's result is always its last epoch. The subset is drawn once
with a seeded generator and kept on the device, so every epoch attacks the same samples from the
same random start and epoch-to-epoch changes are the model's. See :class:`TraceConfig` for the
defaults and the cost rule that sizes the subset.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cartl_core._runtime import autocast, frozen_for_attack
from cartl_core._stop import check_stop
from cartl_core.attacks import robust_mask
from cartl_core.config import TraceConfig
from cartl_core.data import Split
from cartl_core.errors import ConfigError
from cartl_core.training.loop import EpochRecord, evaluate_accuracy

__all__ = [
    "CATASTROPHIC_OVERFITTING",
    "RobustTrace",
    "build_trace",
    "catastrophic_overfitting",
    "epoch_evaluation",
    "trace_size",
]

CATASTROPHIC_OVERFITTING = "catastrophic-overfitting"
_MEANING = (
    "Robust accuracy on the trace subset fell well below its best while clean accuracy rose: "
    "training is trading robustness for clean accuracy (catastrophic overfitting), so the final "
    "model is likely less robust than it was earlier in the run."
)


def trace_size(
    config: TraceConfig, *, available: int, train_samples: int, passes_per_sample: float
) -> int:
    """How many test samples the trace attacks: ``config.samples`` cut to the cost budget.

    The trace costs at most ``size * (steps + 1)`` forward-backward passes (fewer with the early
    exit); an epoch costs about ``train_samples * passes_per_sample``. The size keeps the first
    within ``config.budget`` of the second, but not below ``config.min_samples``, and never above
    the ``available`` test samples. 0 when the trace is off.
    """
    if not config.enabled or available <= 0:
        return 0
    affordable = int(config.budget * train_samples * passes_per_sample // (config.steps + 1))
    size = min(config.samples, max(affordable, config.min_samples))
    return min(size, available)


class RobustTrace:
    """Clean and early-exit-PGD robust accuracy of ``model`` on a fixed subset of ``split``.

    ``config`` must have its threat model resolved (:meth:`TraceConfig.resolved`). Calling the
    trace returns ``trace_clean_accuracy``, ``trace_robust_accuracy`` (clean-correct and never
    misclassified at any PGD iterate) and ``trace_seconds``; the model's mode and
    ``requires_grad`` flags are as they were, and the global random state is untouched.
    """

    def __init__(
        self,
        model: nn.Module,
        split: Split,
        config: TraceConfig,
        *,
        size: int,
        device: torch.device,
    ) -> None:
        if config.eps is None or config.norm is None:
            raise ConfigError("resolve the trace's threat model first (TraceConfig.resolved)")
        self.eps: float = config.eps
        self.norm: str = config.norm
        self.model = model
        self.config = config
        self.batch_size = config.batch_size
        self.device = device
        generator = torch.Generator().manual_seed(config.seed)
        self.indices = torch.randperm(len(split), generator=generator)[:size].sort().values
        # Stored as the split stores them (uint8 stays 4x smaller on the device).
        subset = split.subset(self.indices)
        self.images = subset.images.to(device)
        self.labels = subset.labels.to(device)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def describe(self) -> dict[str, Any]:
        """The settings as run, for the training record (and so the resume fingerprint)."""
        return {**self.config.to_dict(), "alpha": self.config.step_size(), "size": len(self)}

    def __call__(self) -> dict[str, float]:
        t0 = time.monotonic()
        clean = torch.zeros((), dtype=torch.long, device=self.device)
        robust = torch.zeros((), dtype=torch.long, device=self.device)
        cuda = [self.device] if self.device.type == "cuda" else []
        # Per-module modes: a BN policy may keep some layers in eval mode inside a training model.
        modes = [(m, m.training) for m in self.model.modules()]
        # A fixed attack start every epoch; the training's own random stream is left as it was.
        try:
            with torch.random.fork_rng(devices=cuda), frozen_for_attack(self.model):
                torch.manual_seed(self.config.seed)
                for start in range(0, len(self), self.batch_size):
                    check_stop("the robust trace")
                    c, r = self._chunk(start)
                    clean += c
                    robust += r
        finally:
            for module, training in modes:
                module.training = training
        n = max(1, len(self))
        out = {"trace_clean_accuracy": float(clean) / n, "trace_robust_accuracy": float(robust) / n}
        out["trace_seconds"] = time.monotonic() - t0
        return out

    def _chunk(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[start : start + self.batch_size]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        x = x.contiguous(memory_format=torch.channels_last)
        y = self.labels[start : start + self.batch_size]
        with torch.no_grad(), autocast(self.device):
            correct = self.model(x).argmax(1) == y
        keep = correct.nonzero().squeeze(1)
        if keep.numel() == 0:
            return correct.sum(), keep.new_zeros(())
        survived = robust_mask(
            self.model,
            x[keep],
            y[keep],
            eps=self.eps,
            alpha=self.config.step_size(),
            steps=self.config.steps,
            norm=self.norm,
            random_start=True,
            # Monitoring between epochs, at training's speed; the audit measures in fp32.
            precision="bf16",
        )
        return correct.sum(), survived.sum()

    def warnings(self, history: Sequence[EpochRecord]) -> list[dict[str, Any]]:
        """The warnings the history so far raises (for :class:`TrainLoop`'s ``warn``)."""
        found = catastrophic_overfitting(history, self.config.overfit_drop, samples=len(self))
        return [] if found is None else [found]


def catastrophic_overfitting(
    history: Sequence[EpochRecord], drop: float = 0.10, *, samples: int | None = None
) -> dict[str, Any] | None:
    """The first epoch whose trace robust accuracy is more than ``drop`` below its best so far
    while its trace clean accuracy is above the clean accuracy at that best epoch; None if none.

    With ``samples`` (the trace subset's size) the drop must also exceed two standard errors of
    a difference of two accuracies near the best one on that many samples: on a 65-sample trace
    a 10-point dip is 7 samples, which the high-lr epochs of a healthy run produce by chance
    (seen: 0.274 -> 0.137 -> recovered to 0.51 on digits), while a real collapse is far larger.

    Returns a warning ``{"name", "meaning", "detail", "values"}``: ``detail`` says it in one line
    with the numbers, as the audit's warnings do; ``values`` holds the two epochs and their
    accuracies. Epochs without a trace are skipped.
    """
    best: EpochRecord | None = None
    for record in history:
        robust = record.metrics.get("trace_robust_accuracy")
        clean = record.metrics.get("trace_clean_accuracy")
        if robust is None or clean is None:
            continue
        if best is not None:
            best_robust = best.metrics["trace_robust_accuracy"]
            best_clean = best.metrics["trace_clean_accuracy"]
            # The small tolerance keeps an exact 10-point drop (0.5 -> 0.4 in floats) quiet.
            if best_robust - robust > _threshold(drop, best_robust, samples) + 1e-9 and (
                clean > best_clean
            ):
                return {
                    "name": CATASTROPHIC_OVERFITTING,
                    "meaning": _MEANING,
                    "detail": (
                        f"trace robust accuracy {robust:.3f} at epoch {record.epoch}, down from "
                        f"its best {best_robust:.3f} at epoch {best.epoch}, while trace clean "
                        f"accuracy rose from {best_clean:.3f} to {clean:.3f}"
                    ),
                    "values": {
                        "best_epoch": best.epoch,
                        "best_robust_accuracy": best_robust,
                        "best_clean_accuracy": best_clean,
                        "epoch": record.epoch,
                        "robust_accuracy": robust,
                        "clean_accuracy": clean,
                        "drop": drop,
                    },
                }
        if best is None or robust > best.metrics["trace_robust_accuracy"]:
            best = record
    return None


def _threshold(drop: float, best: float, samples: int | None) -> float:
    if not samples:
        return drop
    return max(drop, 2 * math.sqrt(2 * best * (1 - best) / samples))


def epoch_evaluation(
    model: nn.Module, test: Split, trace: RobustTrace | None
) -> Callable[[int], dict[str, float]]:
    """The metrics every epoch ends with: test accuracy, then the trace when there is one."""

    def evaluate(_epoch: int) -> dict[str, float]:
        metrics = {"test_accuracy": evaluate_accuracy(model, test)}
        if trace is not None:
            metrics.update(trace())
        return metrics

    return evaluate


def build_trace(
    model: nn.Module,
    test: Split,
    config: TraceConfig,
    *,
    train_samples: int,
    passes_per_sample: float,
    device: torch.device,
) -> RobustTrace | None:
    """The trace for a run, sized by :func:`trace_size`; None when it is off."""
    size = trace_size(
        config,
        available=len(test),
        train_samples=train_samples,
        passes_per_sample=passes_per_sample,
    )
    if size == 0:
        return None
    return RobustTrace(model, test, config, size=size, device=device)
