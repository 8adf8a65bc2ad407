"""Robustness audit: clean accuracy, PGD at one or several eps, FGSM, CW-margin PGD, per-class
accuracy, and sanity checks that reveal gradient masking.

Every attack runs only on the samples still robust to it (clean-misclassified ones count as
broken from the start), and a sample is broken as soon as any iterate of any restart fools the
model (see :func:`cartl_core.attacks.robust_mask`). This is both stronger than a plain PGD-then-
predict loop and much cheaper on a model that is not perfectly robust. The sanity checks follow
AutoAttack's ``checks.py``: FGSM beating PGD, zero input gradients, and softmax-like outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from cartl_core._runtime import autocast, frozen_for_attack, model_device
from cartl_core.attacks import fgsm, robust_mask
from cartl_core.attacks.losses import ce_loss
from cartl_core.config import AuditConfig
from cartl_core.data import Split

__all__ = ["AttackResult", "AuditReport", "SanityCheck", "audit"]


@dataclass(frozen=True)
class AttackResult:
    name: str
    norm: str
    eps: float
    alpha: float
    steps: int
    restarts: int
    loss: str
    accuracy: float
    seconds: float


@dataclass(frozen=True)
class SanityCheck:
    name: str
    passed: bool
    detail: str


@dataclass
class AuditReport:
    """``robust_accuracy`` is the main attack's: PGD at the first eps."""

    samples: int
    clean_accuracy: float
    robust_accuracy: float
    attacks: list[AttackResult]
    per_class: list[dict[str, Any]]
    checks: list[SanityCheck]
    worst_case_accuracy: float
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditReport:
        """The inverse of :meth:`to_dict` (e.g. for a report read back from JSON)."""
        return cls(
            **{
                **d,
                "attacks": [AttackResult(**a) for a in d["attacks"]],
                "checks": [SanityCheck(**c) for c in d["checks"]],
            }
        )

    def table(self) -> str:
        lines = [
            f"{'attack':<28}{'eps':>10}{'steps':>7}{'accuracy':>10}{'time s':>9}",
            f"{'clean':<28}{'-':>10}{'-':>7}{self.clean_accuracy:>10.4f}{'':>9}",
        ]
        for a in self.attacks:
            lines.append(
                f"{a.name:<28}{a.eps:>10.5f}{a.steps:>7}{a.accuracy:>10.4f}{a.seconds:>9.1f}"
            )
        lines.append(
            f"{'worst case over attacks':<28}{'':>10}{'':>7}{self.worst_case_accuracy:>10.4f}"
        )
        return "\n".join(lines)


ProgressFn = Callable[[str, int, int], None]


@torch.inference_mode()
def _clean_predictions(model: nn.Module, split: Split, bs: int, dev: torch.device) -> torch.Tensor:
    preds = []
    for start in range(0, len(split), bs):
        x = split.subset(
            torch.arange(start, min(len(split), start + bs), device=dev)
        ).float_images()
        with autocast(dev):
            preds.append(model(x).argmax(1))
    return torch.cat(preds)


def _survivors(
    split: Split,
    alive: torch.Tensor,
    bs: int,
    dev: torch.device,
    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    progress: Callable[[int, int], None] | None,
) -> torch.Tensor:
    """Run ``attack`` (returns per-sample robust flags) over the still-alive samples in batches."""
    robust = alive.clone()
    idx = alive.nonzero().squeeze(1)
    for start in range(0, idx.numel(), bs):
        part = idx[start : start + bs]
        sub = split.subset(part)
        robust[part] = attack(sub.float_images(), sub.labels)
        if progress is not None:
            progress(min(start + bs, idx.numel()), idx.numel())
    return robust


def _fgsm_attack(model: nn.Module, eps: float) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = fgsm(model, x, y, eps)
        with torch.no_grad(), autocast(x.device):
            logits: torch.Tensor = model(x_adv)
        return logits.argmax(1) == y

    return run


def _pgd_attack(model: nn.Module, **kw: Any) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return robust_mask(model, x, y, **kw)

    return run


def _attack_plan(cfg: AuditConfig) -> list[dict[str, Any]]:
    plan: list[dict[str, Any]] = []
    for eps in cfg.eps:
        plan.append(
            {
                "name": f"pgd-{cfg.steps}-{cfg.norm}",
                "norm": cfg.norm,
                "eps": eps,
                "alpha": cfg.alpha_for(eps),
                "steps": cfg.steps,
                "restarts": cfg.restarts,
                "loss": "ce",
            }
        )
    main_eps = cfg.eps[0]
    if cfg.fgsm and cfg.norm == "linf":
        plan.append(
            {
                "name": "fgsm",
                "norm": "linf",
                "eps": main_eps,
                "alpha": main_eps,
                "steps": 1,
                "restarts": 1,
                "loss": "ce",
            }
        )
    if cfg.cw:
        plan.append(
            {
                "name": f"pgd-{cfg.steps}-{cfg.norm}-cw",
                "norm": cfg.norm,
                "eps": main_eps,
                "alpha": cfg.alpha_for(main_eps),
                "steps": cfg.steps,
                "restarts": cfg.restarts,
                "loss": "cw",
            }
        )
    return plan


def audit(
    model: nn.Module,
    data: Split,
    config: AuditConfig | None = None,
    *,
    class_names: tuple[str, ...] | None = None,
    on_progress: ProgressFn | None = None,
) -> AuditReport:
    """Audit ``model`` (on its current device) on ``data``; the model's mode is restored."""
    cfg = config or AuditConfig()
    dev = model_device(model)
    t0 = time.monotonic()
    was_training = model.training
    model.eval()
    # The test set stays resident on the device (uint8 where it was) for every attack.
    data = data.to(dev)
    try:
        labels = data.labels
        clean = _clean_predictions(model, data, cfg.batch_size, dev) == labels
        results, masks = [], []
        for spec in _attack_plan(cfg):
            t = time.monotonic()

            def progress(done: int, total: int, name: str = spec["name"]) -> None:
                if on_progress is not None:
                    on_progress(name, done, total)

            if spec["name"] == "fgsm":
                attack = _fgsm_attack(model, spec["eps"])
            else:
                attack = _pgd_attack(
                    model,
                    eps=spec["eps"],
                    alpha=spec["alpha"],
                    steps=spec["steps"],
                    norm=spec["norm"],
                    restarts=spec["restarts"],
                    loss=spec["loss"],
                )
            mask = _survivors(data, clean, cfg.batch_size, dev, attack, progress)
            masks.append((spec, mask))
            results.append(AttackResult(**spec, accuracy=_mean(mask), seconds=time.monotonic() - t))
        worst = clean.clone()
        for spec, mask in masks:
            if spec["eps"] == cfg.eps[0]:
                worst &= mask
        checks = _sanity_checks(model, data, cfg, clean, results, dev)
    finally:
        model.train(was_training)
    per_class = _per_class(labels, clean, masks[0][1], class_names)
    return AuditReport(
        samples=len(data),
        clean_accuracy=_mean(clean),
        robust_accuracy=results[0].accuracy,
        attacks=results,
        per_class=per_class,
        checks=checks,
        worst_case_accuracy=_mean(worst),
        seconds=time.monotonic() - t0,
        config=cfg.to_dict(),
    )


def _mean(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else 0.0


def _per_class(
    labels: torch.Tensor,
    clean: torch.Tensor,
    robust: torch.Tensor,
    names: tuple[str, ...] | None,
) -> list[dict[str, Any]]:
    out = []
    for c in sorted(int(v) for v in labels.unique()):
        sel = labels == c
        out.append(
            {
                "class": c,
                "name": names[c] if names else str(c),
                "samples": int(sel.sum()),
                "clean_accuracy": _mean(clean[sel]),
                "robust_accuracy": _mean(robust[sel]),
            }
        )
    return out


def _sanity_checks(
    model: nn.Module,
    data: Split,
    cfg: AuditConfig,
    clean: torch.Tensor,
    results: list[AttackResult],
    dev: torch.device,
) -> list[SanityCheck]:
    checks = []
    by_name = {r.name: r for r in results}
    pgd_main = results[0]
    if "fgsm" in by_name:
        f = by_name["fgsm"]
        checks.append(
            SanityCheck(
                "fgsm-not-stronger-than-pgd",
                f.accuracy >= pgd_main.accuracy - 1e-9,
                f"FGSM accuracy {f.accuracy:.4f} vs PGD {pgd_main.accuracy:.4f}; a one-step attack "
                "beating PGD points to gradient masking",
            )
        )
    pgd_runs = sorted((r for r in results if r.name == pgd_main.name), key=lambda r: r.eps)
    monotone = all(a.accuracy >= b.accuracy - 1e-9 for a, b in pairwise(pgd_runs))
    checks.append(
        SanityCheck(
            "accuracy-falls-with-eps",
            monotone,
            "robust accuracy should not rise with a larger eps: "
            + ", ".join(f"{r.eps:.4f}: {r.accuracy:.4f}" for r in pgd_runs),
        )
    )
    checks.append(
        SanityCheck(
            "robust-not-above-clean",
            all(r.accuracy <= _mean(clean) + 1e-9 for r in results),
            "every robust accuracy is at most the clean accuracy",
        )
    )
    checks.extend(_gradient_checks(model, data, cfg, dev))
    return checks


def _gradient_checks(
    model: nn.Module, data: Split, cfg: AuditConfig, dev: torch.device
) -> list[SanityCheck]:
    n = min(len(data), cfg.batch_size)
    sub = data.subset(torch.arange(n)).to(dev)
    x = sub.float_images().requires_grad_(True)
    with frozen_for_attack(model), torch.enable_grad():
        with autocast(dev):
            logits = model(x)
        (grad,) = torch.autograd.grad(ce_loss(logits, sub.labels).sum(), x)
    zero = float((grad.flatten(1).abs().amax(dim=1) == 0).float().mean())
    z = logits.detach().float()
    probs_like = bool(((z >= 0) & (z <= 1)).all()) and bool(
        torch.allclose(z.sum(1), torch.ones_like(z[:, 0]), atol=1e-3)
    )
    return [
        SanityCheck(
            "nonzero-input-gradients",
            zero < 0.05,
            f"{zero:.1%} of samples have an all-zero input gradient (masking if high)",
        ),
        SanityCheck(
            "outputs-are-logits",
            not probs_like,
            "outputs look like probabilities (softmax inside the model weakens CE "
            "attacks); return logits"
            if probs_like
            else "outputs are unnormalised logits",
        ),
    ]
