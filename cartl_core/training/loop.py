"""The epoch loop shared by FDM pre-training and every transfer method.

Shape follows torchvision's reference training script: one optimiser step per batch, a per-batch
learning-rate schedule, an evaluation under ``inference_mode`` after each epoch, and a state file
(model, optimiser, scheduler, epoch, history) written atomically after every epoch so an
interrupted run resumes at the next epoch with the same data order.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cartl_core import parallel
from cartl_core._runtime import autocast
from cartl_core._stop import StopFn, check_stop, stop_when
from cartl_core.config import ScheduleConfig
from cartl_core.data import DeviceLoader, Split
from cartl_core.errors import CancelledError, ConfigError

__all__ = [
    "EpochFn",
    "EpochRecord",
    "ProgressEvent",
    "ProgressFn",
    "StopFn",
    "TrainLoop",
    "WarnFn",
    "evaluate_accuracy",
    "make_optimizer",
    "make_scheduler",
]


@dataclass(frozen=True)
class ProgressEvent:
    """One report from a long run. ``fraction`` covers the whole run, 0..1."""

    stage: str
    epoch: int
    epochs: int
    batch: int
    batches: int
    metrics: dict[str, float]
    elapsed_s: float

    @property
    def fraction(self) -> float:
        done = self.epoch * self.batches + self.batch
        return done / max(1, self.epochs * self.batches)


ProgressFn = Callable[[ProgressEvent], None]


@dataclass
class EpochRecord:
    """One finished epoch: its numbers, and the warnings first raised at this epoch (each a dict
    with ``name``, ``meaning`` and ``detail``; the key is left out of :meth:`to_dict` when
    there are none)."""

    epoch: int
    lr: float
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epoch": self.epoch, "lr": self.lr, "seconds": self.seconds}
        out.update(self.metrics)
        if self.warnings:
            out["warnings"] = self.warnings
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpochRecord:
        fixed = ("epoch", "lr", "seconds", "warnings")
        metrics = {k: float(v) for k, v in d.items() if k not in fixed}
        warnings = [dict(w) for w in d.get("warnings", [])]
        return cls(int(d["epoch"]), float(d["lr"]), float(d["seconds"]), metrics, warnings)


def make_optimizer(params: Iterable[nn.Parameter], s: ScheduleConfig) -> torch.optim.SGD:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen")
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, s: ScheduleConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up per batch from 0 over ``warmup_epochs``, then x gamma at each milestone;
    or, for ``shape="one-cycle"``, ``OneCycleLR``'s cosine curve (without its momentum cycle)."""
    if s.shape == "one-cycle":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(_one_cycle, total=max(1, s.epochs * steps_per_epoch))
        )
    warmup = s.warmup_epochs * steps_per_epoch
    milestones = s.milestone_epochs()

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        epoch = step // steps_per_epoch
        return float(s.gamma ** sum(epoch >= m for m in milestones))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _one_cycle(step: int, total: int, pct_start: float = 0.3) -> float:
    """The factor on the peak lr at ``step`` of ``total``, as torch's OneCycleLR (cos anneal,
    div_factor 25, final_div_factor 1e4) computes it."""
    start, end = 1 / 25, 1 / 25 / 1e4
    up = max(1.0, pct_start * total - 1)
    if step <= up:
        lo, hi, t = start, 1.0, step / up
    else:
        lo, hi, t = 1.0, end, min(1.0, (step - up) / max(1.0, total - 1 - up))
    return hi + (lo - hi) * (1 + math.cos(math.pi * t)) / 2


@torch.inference_mode()
def evaluate_accuracy(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    """Clean top-1 accuracy in eval mode; the caller's mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), device=device, dtype=torch.long)
    try:
        for start in range(0, len(split), batch_size):
            check_stop("an evaluation")
            x = split.images[start : start + batch_size].to(device, non_blocking=True)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            y = split.labels[start : start + batch_size].to(device, non_blocking=True)
            with autocast(device):
                correct += (model(x).argmax(1) == y).sum()
    finally:
        model.train(was_training)
    return float(correct) / max(1, len(split))


EpochFn = Callable[[EpochRecord, nn.Module], None]
StepFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
WarnFn = Callable[[Sequence[EpochRecord]], list[dict[str, Any]]]


@dataclass
class TrainLoop:
    """Runs epochs of ``step`` over ``loader``; ``step`` returns per-batch SUMS as tensors
    (e.g. ``loss_sum``, ``correct``), so nothing syncs with the device except for progress.

    ``after_epoch`` adds metrics to the epoch (test accuracy, the robust trace); a last progress
    event per epoch carries them. ``warn`` reads the history after each epoch; a warning is
    recorded on the first epoch that raises it and not again (resumed runs included).
    """

    model: nn.Module
    loader: DeviceLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    epochs: int
    step: StepFn
    stage: str
    seed: int = 0
    fingerprint: dict[str, Any] = field(default_factory=dict)
    state_path: Path | None = None
    on_progress: ProgressFn | None = None
    should_stop: StopFn | None = None
    before_epoch: Callable[[int], None] | None = None
    after_epoch: Callable[[int], dict[str, float]] | None = None
    on_epoch: EpochFn | None = None
    warn: WarnFn | None = None
    progress_interval_s: float = 0.5
    history: list[EpochRecord] = field(default_factory=list)

    def run(self) -> list[EpochRecord]:
        start_epoch = self._resume()
        started = time.monotonic()
        group = parallel.current()
        # In a data-parallel run (cartl_core.parallel): gradients summed over the ranks before
        # each step, BatchNorm on the global batch's statistics.
        hook = (
            self.optimizer.register_step_pre_hook(parallel.sum_gradients)
            if group is not None
            else None
        )
        try:
            # Inside the batches too: the adversarial examples' steps and the trace's.
            with stop_when(self.should_stop), parallel.sync_bn(self.model):
                for epoch in range(start_epoch, self.epochs):
                    self._run_epoch(epoch, started)
                    self._save(epoch + 1)
        finally:
            if hook is not None:
                hook.remove()
        return self.history

    def _run_epoch(self, epoch: int, started: float) -> None:
        # Seeding per epoch makes a resumed run draw the same attack starts and data order.
        torch.manual_seed(self.seed * 1_000_003 + epoch)
        self.loader.set_epoch(epoch)
        if self.before_epoch is not None:
            self.before_epoch(epoch)
        t0 = time.monotonic()
        last_report = 0.0
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        batches = len(self.loader)
        lr = float(self.optimizer.param_groups[0]["lr"])
        group = parallel.current()
        main = group is None or group.main
        for batch, (x, y) in enumerate(self.loader):
            asked = self.should_stop is not None and self.should_stop()
            if parallel.any_rank(asked, y.device):
                raise CancelledError(f"{self.stage} cancelled in epoch {epoch + 1}")
            check_stop(f"{self.stage}, epoch {epoch + 1}")
            # The record shows the lr of the epoch's last step (the scheduler steps per batch,
            # so reading it after the epoch would show the next epoch's).
            lr = float(self.optimizer.param_groups[0]["lr"])
            total = int(y.shape[0])
            offset, rows = parallel.shard_rows(total)
            if rows == 0:
                assert group is not None
                raise ConfigError(
                    f"a batch of {total} images cannot be split over {group.world} processes; "
                    "use fewer processes or a batch size that leaves a larger last batch",
                    field="processes",
                )
            with parallel.step_of(offset, rows, total):
                out = self.step(x[offset : offset + rows], y[offset : offset + rows])
            self.scheduler.step()
            seen += rows
            for key, value in out.items():
                sums[key] = sums[key] + value.detach() if key in sums else value.detach()
            now = time.monotonic()
            if self.on_progress is not None and (
                now - last_report >= self.progress_interval_s or batch + 1 == batches
            ):
                last_report = now
                metrics = {k: float(v) / seen for k, v in sums.items()}
                self.on_progress(
                    ProgressEvent(
                        self.stage, epoch, self.epochs, batch + 1, batches, metrics, now - started
                    )
                )
        if group is not None:
            # The epoch's sums over every rank's rows (keys in the same order on every rank).
            names = sorted(sums)
            count = torch.tensor(float(seen), device=self.loader.device)
            packed = torch.stack([*(sums[k].float() for k in names), count])
            parallel.all_reduce_(packed)
            sums = dict(zip(names, packed[:-1], strict=True))
            seen = int(packed[-1].item())
        metrics = {k: float(v) / max(1, seen) for k, v in sums.items()}
        if self.after_epoch is not None and main:
            metrics.update(self.after_epoch(epoch))
        record = EpochRecord(epoch + 1, lr, time.monotonic() - t0, metrics)
        self.history.append(record)
        if self.warn is not None and main:
            raised = {w["name"] for h in self.history[:-1] for w in h.warnings}
            record.warnings = [w for w in self.warn(self.history) if w["name"] not in raised]
        if self.on_progress is not None:
            self.on_progress(
                ProgressEvent(
                    self.stage,
                    epoch,
                    self.epochs,
                    batches,
                    batches,
                    dict(metrics),
                    time.monotonic() - started,
                )
            )
        if self.on_epoch is not None:
            self.on_epoch(record, self.model)

    def _state(self, next_epoch: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "next_epoch": next_epoch,
            "history": json.dumps([h.to_dict() for h in self.history]),
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
        }

    def _save(self, next_epoch: int) -> None:
        group = parallel.current()
        if self.state_path is None or (group is not None and not group.main):
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.save(self._state(next_epoch), tmp)
            os.replace(tmp, self.state_path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk must not also leave half a file behind
            raise

    def _resume(self) -> int:
        if self.state_path is None or not self.state_path.exists():
            return 0
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(
                f"cannot resume from {self.state_path}: {exc}; delete it to start over"
            ) from None
        if state.get("fingerprint") != json.dumps(self.fingerprint, sort_keys=True):
            raise ConfigError(
                f"{self.state_path} was written by a run with other settings; "
                "use the same settings to resume, or delete it to start over"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = [EpochRecord.from_dict(d) for d in json.loads(state["history"])]
        return int(state["next_epoch"])


def per_sample_feature_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_i||_2 / sqrt(d) for each sample, in fp32."""
    diff = (a.float() - b.float()).flatten(1)
    norms: torch.Tensor = torch.linalg.vector_norm(diff, dim=1)
    return norms / math.sqrt(diff.shape[1])
