"""Step 1 of CARTL: FDM pre-training on the source data.

Per batch: PGD-Linf adversarial examples (model in eval mode, no parameter gradients), then in
train mode ``CE(f(x_adv), y) + lambda * SUM_i ||phi(x_adv_i) - phi(x_i)||_2 / sqrt(d)`` where phi is
the input of block T-k+1, the tensor the first fine-tuned block will later receive. Gradients flow
through both feature maps; clean logits are not in the loss. ``fdm_lambda=0`` is plain PGD
adversarial training (the baseline source) and skips the clean forward entirely.

As in the release, the clean batch goes through the whole model in train mode, so the BatchNorm
statistics of the blocks to be fine-tuned see clean data as well as adversarial (fine-tuning starts
from them); the part past the cut runs without autograd, since its output is not in the loss.

At k = 1 the first fine-tuned block is the head. Where the head only pools (ResNets), phi is the
pooled penultimate feature, as the release measures it (512 values for a ResNet-18, not the
512x4x4 map): pooling is a fixed function of the frozen part's output, and the release's choice
keeps lambda comparable with its runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cartl_core import parallel
from cartl_core._runtime import autocast, prepare_model, resolve_device
from cartl_core.attacks import pgd
from cartl_core.config import FDMConfig
from cartl_core.data import Augmentation, Dataset, DeviceLoader, dataset_mean_std
from cartl_core.models import BlockModel, create_model
from cartl_core.training.loop import (
    EpochFn,
    EpochRecord,
    ProgressFn,
    StopFn,
    TrainLoop,
    make_optimizer,
    make_scheduler,
    per_sample_feature_distance,
)
from cartl_core.training.trace import build_trace, epoch_evaluation


@dataclass
class TrainResult:
    """A trained model, its per-epoch history, and how it was made (for the checkpoint header)."""

    model: BlockModel
    history: list[EpochRecord]
    training: dict[str, Any]

    @property
    def warnings(self) -> list[dict[str, Any]]:
        """What went wrong during training (e.g. catastrophic overfitting), in epoch order."""
        return [w for record in self.history for w in record.warnings]


_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten)


def pools_at_head(model: BlockModel, k: int) -> bool:
    """Whether FDM's phi at this k is the pooled penultimate feature (k = 1, a head that only
    pools before its linear layer) rather than the raw input of the first fine-tuned block."""
    leaves = [m for m in model.head.pre.modules() if not list(m.children())]
    return k == 1 and all(isinstance(m, (*_POOLING, nn.Identity)) for m in leaves)


def fdm_step(model: BlockModel, optimizer: torch.optim.Optimizer, config: FDMConfig) -> Any:
    a, k, lam = config.attack, config.k, config.fdm_lambda
    pooled = pools_at_head(model, k)
    # Past the cut, the clean pass only matters for BatchNorm's running statistics.
    stats_past_cut = not pooled and any(
        isinstance(m, _BatchNorm) for block in model.tuned_modules(k) for m in block.modules()
    )

    def phi(x: torch.Tensor) -> torch.Tensor:
        h = model.frozen_part(x, k)
        return model.head.penultimate(h) if pooled else h

    def rest(h: torch.Tensor) -> torch.Tensor:
        return model.head.fc(h) if pooled else model.tuned_part(h, k)

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x_adv = pgd(
            model, x, y, a.eps, a.step_size, a.steps, a.norm, a.random_start, a.restarts, a.loss,
            precision="bf16",
        )  # fmt: skip
        with autocast(x.device):
            phi_adv = phi(x_adv)
            logits = rest(phi_adv)
            ce = F.cross_entropy(logits.float(), y)
            loss = ce
            # In a data-parallel run this rank's part of the global batch's loss: a mean over
            # its rows weighs their share, a sum does not (the ranks' gradients are summed).
            share = parallel.share()
            part = ce if share == 1.0 else ce * share
            out: dict[str, torch.Tensor] = {}
            if lam > 0:
                phi_clean = phi(x)
                if stats_past_cut:
                    with torch.no_grad():
                        model.tuned_part(phi_clean, k)
                dist = per_sample_feature_distance(phi_adv, phi_clean)
                if config.reduction == "sum":
                    term = dist.sum()
                    loss = ce + lam * (term if share == 1.0 else term / share)
                    part = loss if share == 1.0 else part + lam * term
                else:
                    term = dist.mean()
                    loss = ce + lam * term
                    part = loss if share == 1.0 else loss * share
                out["feature_distance"] = dist.detach().sum()
        optimizer.zero_grad(set_to_none=True)
        part.backward()
        optimizer.step()
        n = y.shape[0]
        out["loss"] = loss.detach() * n
        out["adv_ce"] = ce.detach() * n
        out["adv_accuracy"] = (logits.detach().argmax(1) == y).sum()
        return out

    return step


def pretrain(
    data: Dataset,
    arch: str,
    config: FDMConfig | None = None,
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
    init: BlockModel | None = None,
    state_path: str | Path | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_epoch: EpochFn | None = None,
    processes: int = 1,
) -> TrainResult:
    """FDM (or, with ``fdm_lambda=0``, plain adversarial) training of a source model.

    ``processes``: data-parallel over that many processes (GPUs ``cuda:0..``, or CPU processes),
    with the numbers of one process up to the order of float sums (:mod:`cartl_core.parallel`).

    The model normalises its inputs with the source training set's per-channel mean and std.
    Each epoch ends with the test accuracy and the robust trace (``config.trace``, in the
    training attack's threat model unless it names its own; monitoring only).
    """
    if processes > 1:
        return parallel.run_parallel(
            pretrain, processes,
            {"on_progress": on_progress, "should_stop": should_stop, "on_epoch": on_epoch},
            data=data, arch=arch, config=config, device=device, seed=seed, init=init,
            state_path=state_path,
        )  # fmt: skip
    config = config or FDMConfig()
    dev = resolve_device(device)
    torch.manual_seed(seed)
    if init is None:
        mean, std = dataset_mean_std(data.train)
        c, h, _ = data.input_shape
        init = create_model(arch, data.num_classes, in_channels=c, input_size=h, mean=mean, std=std)
    model = init
    model.check_k(config.k)
    prepare_model(model, dev)
    s = config.schedule
    loader = DeviceLoader(
        data.train,
        s.batch_size,
        device=dev,
        shuffle=True,
        seed=seed,
        augmentation=Augmentation.from_name(config.augmentation, data.input_shape),
        channels_last=True,
    )
    optimizer = make_optimizer(model.parameters(), s)
    a = config.attack
    trace = build_trace(
        model,
        data.test,
        config.trace.resolved(a.eps, a.norm),
        train_samples=len(data.train),
        # The attack's steps, the adversarial forward-backward, FDM's clean features.
        passes_per_sample=a.steps * a.restarts + 1 + int(config.fdm_lambda > 0),
        device=dev,
    )
    training = {
        "kind": "pretrain",
        "method": "fdm" if config.fdm_lambda > 0 else "adversarial-training",
        "seed": seed,
        "data": {"format": data.format, "classes": data.num_classes, "train": len(data.train)},
        **config.to_dict(),
        # What "auto" (or a preset) came to on this data, so the run says what it trained with.
        "augmentation_used": loader.augmentation.describe(),
    }
    if config.fdm_lambda > 0 and pools_at_head(model, config.k):
        training["fdm_feature"] = "pooled penultimate"
    if trace is not None:
        training["trace"] = trace.describe()
    loop = TrainLoop(
        model=model,
        loader=loader,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, s, len(loader)),
        epochs=s.epochs,
        step=fdm_step(model, optimizer, config),
        stage="pretrain",
        seed=seed,
        fingerprint={"arch": model.spec.arch, **training},
        state_path=Path(state_path) if state_path is not None else None,
        on_progress=on_progress,
        should_stop=should_stop,
        on_epoch=on_epoch,
        before_epoch=lambda _epoch: _set_train(model),
        after_epoch=epoch_evaluation(model, data.test, trace),
        warn=trace.warnings if trace is not None else None,
    )
    history = loop.run()
    model.eval()
    return TrainResult(model, history, training)


def _set_train(model: BlockModel) -> None:
    # Evaluation and the attack leave the model in eval mode; every epoch trains in train mode.
    model.train()
