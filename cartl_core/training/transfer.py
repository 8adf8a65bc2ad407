"""Step 2 of CARTL and its baselines: fine-tune the last k blocks of a source model on the target.

- ``standard``: freeze blocks 1..T-k, fine-tune the last k with a fresh head, clean CE.
- ``neft``: the same plus spectral normalisation (target norm ``norm_beta``) on every Conv2d and
  Linear of the fine-tuned blocks, nested ones included, and averaged residuals
  (0.5 * shortcut + 0.5 * residual) in the fine-tuned residual blocks. Folded into plain weights
  at the end, so the exported model is an ordinary model of the same architecture.
- ``cartl``: NEFT with BN affine parameters frozen, meant for an FDM-pretrained source.
- ``lwf``: Shafahi et al.'s robust transfer: CE + lambda * mean_i ||f(x_i) - f_src(x_i)||_1 on the
  penultimate features recorded once from the source, on one fixed augmented pass over the
  training images; the first epochs train only the head, the rest the whole model with BN in train
  mode, as in the release (``LwFConfig.tune="last-k"`` keeps to the last k blocks instead).
- ``adversarial``: PGD adversarial fine-tuning (Madry et al.) of the last k blocks, the strong and
  costly option CARTL is weighed against. Each batch: PGD examples (``config.attack``; PGD-7 with
  step eps/4 by default) made with the model in eval mode and no parameter gradients, in bf16 on
  CUDA, as FDM pre-training makes them; then the BN preset's modes back and one SGD step on the
  CE of the adversarial batch. The frozen part runs without autograd (it has nothing to train),
  so only the tuned blocks keep activations for the backward pass.
- ``trades``: TRADES fine-tuning (Zhang et al. 2019) of the last k blocks: examples that maximise
  KL(f(x') || f(x)) from x + 0.001 * N(0, 1) (same attack settings, model in eval mode), then
  CE(f(x), y) + beta * KL(f(x') || f(x)), batch-mean, with clean and adversarial batches through
  the model separately in train mode as the authors' code runs them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cartl_core import parallel
from cartl_core._runtime import autocast, frozen_for_attack, prepare_model, resolve_device
from cartl_core._stop import check_stop
from cartl_core.attacks import pgd, threat_model
from cartl_core.config import AttackConfig, AuditConfig, BNPolicy, LwFConfig, TransferConfig
from cartl_core.data import Augmentation, Dataset, DeviceLoader, Split, augmented_copy
from cartl_core.data.loader import Features
from cartl_core.errors import ConfigError
from cartl_core.models import BlockModel
from cartl_core.training import bn as bn_policy
from cartl_core.training.fdm import TrainResult
from cartl_core.training.loop import (
    EpochFn,
    ProgressFn,
    StopFn,
    TrainLoop,
    make_optimizer,
    make_scheduler,
)
from cartl_core.training.spectral import apply_spectral_norm, fold_spectral_norm
from cartl_core.training.trace import build_trace, epoch_evaluation


def _check_fit(model: BlockModel, data: Dataset, config: TransferConfig) -> None:
    model.check_k(config.k)
    c = data.input_shape[0]
    if c != model.spec.in_channels:
        raise ConfigError(
            f"the source model takes {model.spec.in_channels}-channel images but the target data "
            f"has {c} channels"
        )
    model.check_input_size(*data.input_shape[1:])
    if config.resolved_residual_scale() != 1.0 and not model.residual_scalable:
        raise ConfigError(
            f"{model.spec.arch} has residual blocks whose sum cannot be rescaled; "
            "set residual_scale to 1",
            field="residual_scale",
        )


@torch.inference_mode()
def _record_penultimate(model: BlockModel, split: Split, batch_size: int) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    feats = []
    for start in range(0, len(split), batch_size):
        check_stop("the penultimate features")
        x = split.subset(torch.arange(start, min(len(split), start + batch_size))).to(device)
        with autocast(device):
            feats.append(model.penultimate(x.float_images()).float())
    return torch.cat(feats)


def _update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step on ``loss``, a mean over the batch (in a data-parallel run, over this rank's rows:
    weighed by their share of the global batch; the ranks' gradients are summed)."""
    optimizer.zero_grad(set_to_none=True)
    share = parallel.share()
    (loss if share == 1.0 else loss * share).backward()
    optimizer.step()


def _tuned_forward(model: BlockModel, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward pass of a model whose last ``k`` blocks train: the frozen part builds no graph
    unless a custom BN policy trains a frozen block's affine parameters (no preset does)."""
    frozen_trains = any(p.requires_grad for m in model.frozen_modules(k) for p in m.parameters())

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(frozen_trains):
            h = model.frozen_part(x, k)
        out: torch.Tensor = model.tuned_part(h, k)
        return out

    return forward


def _clean_step(
    forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer
) -> Any:
    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(x.device):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        _update(optimizer, loss)
        n = y.shape[0]
        return {"loss": loss.detach() * n, "accuracy": (logits.detach().argmax(1) == y).sum()}

    return step


def adversarial_step(
    model: BlockModel,
    optimizer: torch.optim.Optimizer,
    k: int,
    policy: BNPolicy,
    attack: AttackConfig,
) -> Any:
    """One PGD adversarial-training step of the last ``k`` blocks (also timed by compare's cost
    estimate, so the estimate and the run take the same step)."""
    a = attack
    forward = _tuned_forward(model, k)

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x_adv = pgd(
            model, x, y, a.eps, a.step_size, a.steps, a.norm, a.random_start, a.restarts, a.loss,
            precision="bf16",
        )  # fmt: skip
        # The attack hands the model back in train mode everywhere; frozen blocks (and BN that
        # keeps source statistics) must be in eval mode again before the update.
        bn_policy.set_modes(model, k, policy)
        with autocast(x.device):
            logits = forward(x_adv)
        loss = F.cross_entropy(logits.float(), y)
        _update(optimizer, loss)
        n = y.shape[0]
        return {
            "loss": loss.detach() * n,
            "adv_accuracy": (logits.detach().argmax(1) == y).sum(),
        }

    return step


def _trades_examples(
    model: BlockModel, x: torch.Tensor, attack: AttackConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """TRADES' examples: PGD on KL(f(x') || f(x)) from x + 0.001 * N(0, 1) (the authors' start,
    for either norm), model in eval mode and without parameter gradients; and x's clean
    probabilities in that mode, which the attack needs."""
    ball = threat_model(attack.norm, attack.eps)
    with frozen_for_attack(model):
        with torch.no_grad(), autocast(x.device):
            p_clean = F.softmax(model(x).float(), dim=1)
        x_adv = ball.project(x + 0.001 * parallel.batch_noise(torch.randn_like, x), x)
        for _ in range(attack.steps):
            check_stop("TRADES' attack")
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                with autocast(x.device):
                    logits = model(x_adv)
                kl = F.kl_div(F.log_softmax(logits.float(), dim=1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = ball.project(ball.step(x_adv.detach(), grad, attack.step_size), x)
    return x_adv.detach(), p_clean


def trades_step(
    model: BlockModel,
    optimizer: torch.optim.Optimizer,
    k: int,
    policy: BNPolicy,
    attack: AttackConfig,
    beta: float,
) -> Any:
    """One TRADES step of the last ``k`` blocks (also timed by compare's cost estimate)."""
    forward = _tuned_forward(model, k)

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x_adv, _ = _trades_examples(model, x, attack)
        bn_policy.set_modes(model, k, policy)  # the attack left every module in train mode
        with autocast(x.device):
            logits = forward(x)
            logits_adv = forward(x_adv)
        ce = F.cross_entropy(logits.float(), y)
        kl = F.kl_div(
            F.log_softmax(logits_adv.float(), dim=1),
            F.softmax(logits.float(), dim=1),
            reduction="batchmean",
        )
        loss = ce + beta * kl
        _update(optimizer, loss)
        n = y.shape[0]
        return {
            "loss": loss.detach() * n,
            "trades_kl": kl.detach() * n,
            "accuracy": (logits.detach().argmax(1) == y).sum(),
            "adv_accuracy": (logits_adv.detach().argmax(1) == y).sum(),
        }

    return step


def _lwf_step(
    model: BlockModel,
    optimizer: torch.optim.Optimizer,
    recorded: torch.Tensor,
    labels: torch.Tensor,
    lam: float,
) -> Any:
    # The loader runs over sample indices (see transfer()), so each batch can look up the
    # features recorded for exactly those images.
    def step(x: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        y = labels[index]
        with autocast(x.device):
            feats = model.penultimate(x)
            logits = model.head.fc(feats)
        ce = F.cross_entropy(logits.float(), y)
        dist = (feats.float() - recorded[index]).abs().sum(dim=1)
        loss = ce + lam * dist.mean()
        _update(optimizer, loss)
        n = y.shape[0]
        return {
            "loss": loss.detach() * n,
            "feature_l1": dist.detach().sum(),
            "accuracy": (logits.detach().argmax(1) == y).sum(),
        }

    return step


#: The methods whose training batches pass through the frozen part and nothing else: its output
#: can be computed once (:func:`frozen_features`) when the part is fixed.
_CLEAN_METHODS = ("standard", "neft", "cartl")


def shares_frozen_part(config: TransferConfig, augmentation: Augmentation) -> str | None:
    """None if a transfer with ``config`` can train on :func:`frozen_features` computed once (the
    frozen part is fixed and sees each training image as it is stored), else why not."""
    policy = config.resolved_bn()
    if config.method not in _CLEAN_METHODS:
        why = {
            "lwf": "its second phase trains the whole model",
            "adversarial": "its examples are attacked through the whole model",
            "trades": "its examples are attacked through the whole model",
        }
        return why.get(config.method, f"{config.method} is not a clean fine-tuning")
    if policy.frozen_stats != "source" or policy.frozen_affine_trainable:
        return (
            f"BN {config.resolved_bn_name()} re-estimates or trains the frozen blocks' BatchNorm, "
            "so their output changes as training goes"
        )
    if augmentation.enabled:
        return "each batch is augmented before the frozen part (a new image every epoch)"
    return None


@torch.no_grad()
def frozen_features(
    source: BlockModel, split: Split, k: int, *, device: str | torch.device | None = None,
    batch_size: int = 256,
) -> torch.Tensor:  # fmt: skip
    """The frozen part's output (the input of block T-k+1) for every image of ``split``, in its
    order, on ``device``: what :func:`transfer`'s batches compute again every epoch, computed once.
    In eval mode (the frozen BatchNorm keeps the source's statistics), in the precision and
    memory format the training's forward pass uses, so training on them gives the same numbers
    (bit for bit on the CPU, where a sample's output does not depend on its batch)."""
    dev = resolve_device(device)
    model = copy.deepcopy(source)
    prepare_model(model, dev)
    model.eval()
    out = []
    for start in range(0, len(split), batch_size):
        check_stop("the frozen part's features")
        part = split.subset(torch.arange(start, min(len(split), start + batch_size)))
        x = part.to(dev).float_images().contiguous(memory_format=torch.channels_last)
        with autocast(dev):
            out.append(model.frozen_part(x, k))
    return torch.cat(out)


def transfer(
    source: BlockModel,
    data: Dataset,
    config: TransferConfig | None = None,
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
    state_path: str | Path | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_epoch: EpochFn | None = None,
    features: torch.Tensor | None = None,
    processes: int = 1,
) -> TrainResult:
    """Fine-tune a copy of ``source`` on ``data``; ``source`` itself is left untouched.

    Each epoch ends with the test accuracy and the robust trace (``config.trace``; its threat
    model defaults to the audit's first radius, and jobs pass the final audit's; monitoring only).

    ``features``: :func:`frozen_features` of ``data.train`` for this k, where
    :func:`shares_frozen_part` allows it: the batches then run through the tuned part alone, with
    the same numbers (``compare`` computes them once for all the candidates that can share them).

    ``processes``: data-parallel over that many processes (GPUs ``cuda:0..``, or CPU processes),
    with the numbers of one process up to the order of float sums (:mod:`cartl_core.parallel`).
    """
    if processes > 1:
        if features is not None:
            raise ConfigError("precomputed features are for one process; leave processes at 1")
        return parallel.run_parallel(
            transfer, processes,
            {"on_progress": on_progress, "should_stop": should_stop, "on_epoch": on_epoch},
            source=source, data=data, config=config, device=device, seed=seed,
            state_path=state_path,
        )  # fmt: skip
    config = config or TransferConfig()
    _check_fit(source, data, config)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = copy.deepcopy(source)
    prepare_model(model, dev)
    k, s = config.k, config.resolved_schedule()
    augmentation = Augmentation.from_name(config.augmentation, data.input_shape)
    augmentation_used = augmentation.describe()
    train_split: Split | Features = data.train
    recorded = None
    if config.method == "lwf":
        # As in the release: the targets come from one augmented pass over the training images,
        # and training sees exactly those images, so each target belongs to the image it is
        # compared with (with a fresh augmentation per batch, the features of every augmented
        # image would be pulled towards those of the plain one).
        lwf_split = augmented_copy(data.train.to(dev), augmentation, seed=seed)
        train_split = lwf_split
        recorded = _record_penultimate(model, lwf_split, s.batch_size)
        if augmentation.enabled:
            augmentation_used += f" (one fixed pass, seed {seed})"
        augmentation = Augmentation.none()
    model.reset_classifier(data.num_classes)
    tuned = list(range(model.num_blocks - k, model.num_blocks))
    scale = config.resolved_residual_scale()
    if scale != 1.0:
        model.set_residual_scale(scale, tuned)
    beta = config.resolved_norm_beta()
    if beta is not None:
        apply_spectral_norm(
            model.tuned_modules(k),
            beta,
            config.spectral_mode,
            config.power_iterations,
            config.spectral_estimate,
        )
    policy = config.resolved_bn()
    attack = config.resolved_attack()
    bn_policy.set_trainable(model, k, policy)
    if config.method == "lwf" and config.lwf.tune == "all":
        # Everything trains after the head-only epochs, so the optimiser holds every parameter
        # from the start; a frozen one has no gradient and SGD leaves it alone.
        for p in model.parameters():
            p.requires_grad_(True)
    optimizer = make_optimizer(model.parameters(), s)

    if features is not None:
        why = shares_frozen_part(config, augmentation)
        if why is not None:
            raise ConfigError(f"this transfer cannot train on precomputed features: {why}")
        if features.shape[0] != len(data.train):
            raise ConfigError(
                f"features for {features.shape[0]} images given, the training split has "
                f"{len(data.train)}"
            )
        train_split = Features(features.to(dev), data.train.labels)
    if recorded is not None:
        train_split = Split(lwf_split.images, torch.arange(len(lwf_split)))
        step = _lwf_step(
            model, optimizer, recorded, data.train.labels.to(dev), config.lwf.lwf_lambda
        )
    elif attack is not None and config.method == "trades":
        step = trades_step(model, optimizer, k, policy, attack, config.trades_beta)
    elif attack is not None:
        step = adversarial_step(model, optimizer, k, policy, attack)
    elif features is not None:
        step = _clean_step(lambda h: model.tuned_part(h, k), optimizer)
    else:
        step = _clean_step(model, optimizer)
    loader = DeviceLoader(
        train_split,
        s.batch_size,
        device=dev,
        shuffle=True,
        seed=seed,
        augmentation=augmentation,
        # The frozen part's output is channels_last too (a transformer's tokens have no channels).
        channels_last=train_split.images.dim() == 4,
    )

    default_audit = AuditConfig()
    trace = build_trace(
        model,
        data.test,
        config.trace.resolved(default_audit.eps[0], default_audit.norm),
        train_samples=len(data.train),
        # Clean fine-tuning: one forward-backward per sample; adversarial: the attack's too
        # (TRADES: one more, its clean batch).
        passes_per_sample=1
        if attack is None
        else attack.steps * attack.restarts + 1 + int(config.method == "trades"),
        device=dev,
    )

    def before_epoch(epoch: int) -> None:
        bn_policy.set_modes(model, k, policy)
        if config.method == "lwf":
            _lwf_phase(model, k, policy, config.lwf, epoch < config.lwf.head_only_epochs)

    training: dict[str, Any] = {
        "kind": "transfer",
        "seed": seed,
        "source": source.spec.to_dict(),
        "data": {"format": data.format, "classes": data.num_classes, "train": len(data.train)},
        **config.to_dict(),
        "norm_beta": beta,
        "residual_scale": scale,
        "bn": config.resolved_bn_name(),
        "bn_policy": policy.to_dict(),
        "schedule": s.to_dict(),
        "augmentation_used": augmentation_used,
    }
    if attack is None:
        # Only a header that trained against an attack names one (a later audit defaults to it).
        training.pop("attack", None)
    else:
        training["attack"] = attack.to_dict()
    if config.method != "trades":
        training.pop("trades_beta", None)
    if trace is not None:
        training["trace"] = trace.describe()
    loop = TrainLoop(
        model=model,
        loader=loader,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, s, len(loader)),
        epochs=s.epochs,
        step=step,
        stage="transfer",
        seed=seed,
        fingerprint=training,
        state_path=Path(state_path) if state_path is not None else None,
        on_progress=on_progress,
        should_stop=should_stop,
        on_epoch=on_epoch,
        before_epoch=before_epoch,
        after_epoch=epoch_evaluation(model, data.test, trace),
        warn=trace.warnings if trace is not None else None,
    )
    history = loop.run()
    fold_spectral_norm(model)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return TrainResult(model, history, training)


def _lwf_phase(
    model: BlockModel, k: int, policy: BNPolicy, lwf: LwFConfig, head_only: bool
) -> None:
    if not head_only and lwf.tune == "all":
        # The release's second phase: the whole model, every BatchNorm re-estimating statistics.
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        return
    bn_policy.set_trainable(model, k, policy)
    if head_only:
        for block in model.tuned_modules(k)[:-1]:
            for p in block.parameters():
                p.requires_grad_(False)
        for p in model.head.pre.parameters():
            p.requires_grad_(False)
