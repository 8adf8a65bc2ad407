"""Robustness audit: the headline robust accuracy comes from an attack ensemble, per-sample worst
case, with masking checks that can fail.

The default ensemble is AutoAttack's standard one (APGD-CE, APGD-T, Square; see ``ENSEMBLES``)
run in sequence, each attack only on the samples every earlier one left robust, and each sample
leaving an attack the moment it is misclassified. ``robust_accuracy`` is the fraction of samples
that nothing run at the main eps broke: the ensemble, the paper's PGD-20 (kept as a named attack
so the paper's protocol stays comparable), FGSM, and the black-box probe of the checks.

The checks follow AutoAttack's ``checks.py`` and the usual signs of gradient masking (Athalye et
al. 2018; Carlini et al. 2019): each either passes, fails with a warning that says what a failure
means, or is skipped where it cannot be run (``passed`` None).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from cartl_core._runtime import autocast, frozen_for_attack, model_device
from cartl_core.attacks import apgd, apgd_targeted, fgsm, robust_mask, square
from cartl_core.attacks.losses import ce_loss
from cartl_core.config import ENSEMBLES, AuditConfig, resolve_attacks
from cartl_core.data import Split

__all__ = [
    "ENSEMBLES",
    "AttackResult",
    "AuditReport",
    "EnsembleResult",
    "SanityCheck",
    "audit",
    "run_ensemble",
]

#: CE-PGD may stand this far above the ensemble before the audit calls it masking.
CE_GAP_LIMIT = 0.03
#: Accuracy a large-eps attack must drive the model to (near zero).
LARGE_EPS_LIMIT = 0.05
#: Share of the white-box survivors the black-box attack may break before it is a warning.
BLACK_BOX_LIMIT = 0.02
#: Square's budget when it only probes for masking (ensembles without it): masked gradients
#: fall to it within a few hundred queries.
PROBE_QUERIES = 500
#: Slack for attack randomness when comparing accuracies at two radii.
EPS_SLACK = 0.01


@dataclass(frozen=True)
class AttackResult:
    """One attack run. Ensemble members: ``accuracy`` is the robust accuracy after this attack
    in the sequence (cumulative). Named and check attacks: their own accuracy."""

    name: str
    norm: str
    eps: float
    steps: int
    restarts: int
    loss: str
    accuracy: float
    seconds: float
    alpha: float | None = None
    role: str = "named"
    samples: int = 0
    broke: int = 0
    queries: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttackResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class SanityCheck:
    name: str
    passed: bool | None
    detail: str
    meaning: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SanityCheck:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class AuditReport:
    """``robust_accuracy``: per-sample worst case over every attack at the main eps (``eps``)."""

    samples: int
    clean_accuracy: float
    robust_accuracy: float
    attacks: list[AttackResult]
    per_class: list[dict[str, Any]]
    checks: list[SanityCheck]
    worst_case_accuracy: float
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    ensemble: str = ""
    ensemble_attacks: list[str] = field(default_factory=list)
    norm: str = "linf"
    eps: float = 0.0
    by_eps: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    device: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditReport:
        """The inverse of :meth:`to_dict`; reports written by older versions read back too."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["attacks"] = [AttackResult.from_dict(a) for a in d["attacks"]]
        values["checks"] = [SanityCheck.from_dict(c) for c in d["checks"]]
        return cls(**values)

    @property
    def failed_checks(self) -> list[SanityCheck]:
        return [c for c in self.checks if c.passed is False]

    def table(self) -> str:
        head = f"{'attack':<24}{'role':<10}{'eps':>9}{'steps':>7}{'samples':>9}{'accuracy':>10}"
        lines = [head + f"{'time s':>9}"]
        lines.append(f"{'clean':<24}{'':<10}{'-':>9}{'-':>7}{self.samples:>9}")
        lines[-1] += f"{self.clean_accuracy:>10.4f}"
        for a in self.attacks:
            steps = a.queries if a.queries is not None else a.steps
            lines.append(
                f"{a.name:<24}{a.role:<10}{a.eps:>9.4f}{steps:>7}{a.samples:>9}"
                f"{a.accuracy:>10.4f}{a.seconds:>9.1f}"
            )
        ensemble = f"{self.ensemble}: {', '.join(self.ensemble_attacks)}"
        lines.append(
            f"robust accuracy ({ensemble}; per-sample worst case) {self.robust_accuracy:.4f}"
        )
        return "\n".join(lines)


ProgressFn = Callable[[str, int, int], None]
#: Runs one attack on a batch of clean-correct samples and returns which stayed robust.
BatchAttack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Spec:
    """A named attack with its settings, as the report lists it."""

    name: str
    kind: str
    steps: int
    restarts: int
    loss: str
    alpha: float | None = None
    queries: int | None = None


_PGD = re.compile(r"^pgd(?:-(\d+))?(-cw)?$")


def _spec(name: str, cfg: AuditConfig, eps: float) -> _Spec:
    if name == "apgd-ce":
        return _Spec(name, "apgd", cfg.apgd_steps, cfg.apgd_restarts, "ce")
    if name == "apgd-dlr":
        return _Spec(name, "apgd", cfg.apgd_steps, cfg.apgd_restarts, "dlr")
    if name == "apgd-t":
        return _Spec(name, "apgd-t", cfg.apgd_steps, cfg.apgd_restarts, "dlr-targeted")
    if name == "square":
        return _Spec(name, "square", cfg.square_queries, 1, "margin", queries=cfg.square_queries)
    if name == "fgsm":
        return _Spec(name, "fgsm", 1, 1, "ce", alpha=eps)
    match = _PGD.match(name)
    if match is None:  # resolve_attacks has checked the names already
        raise ValueError(name)
    steps = int(match.group(1)) if match.group(1) else cfg.steps
    loss = "cw" if match.group(2) else "ce"
    full = f"pgd-{steps}" + ("-cw" if loss == "cw" else "")
    return _Spec(full, "pgd", steps, cfg.restarts, loss, alpha=cfg.alpha_for(eps))


def _batch_attack(model: nn.Module, spec: _Spec, cfg: AuditConfig, eps: float) -> BatchAttack:
    norm = cfg.norm

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if spec.kind == "apgd":
            return apgd(
                model, x, y, eps=eps, norm=norm, steps=spec.steps, restarts=spec.restarts,
                loss=spec.loss,
            ).robust  # fmt: skip
        if spec.kind == "apgd-t":
            return apgd_targeted(
                model, x, y, eps=eps, norm=norm, steps=spec.steps, restarts=spec.restarts,
                targets=cfg.apgd_targets,
            ).robust  # fmt: skip
        if spec.kind == "square":
            return square(model, x, y, eps=eps, norm=norm, queries=cfg.square_queries).robust
        if spec.kind == "fgsm":
            x_adv = fgsm(model, x, y, eps)
            with torch.no_grad(), autocast(x.device):
                logits: torch.Tensor = model(x_adv)
            return logits.argmax(1) == y
        assert spec.alpha is not None
        return robust_mask(
            model, x, y, eps=eps, alpha=spec.alpha, steps=spec.steps, norm=norm,
            restarts=spec.restarts, loss=spec.loss,
        )  # fmt: skip

    return run


class _Auditor:
    """One audit's state: the data on the device, the clean mask, progress and timing."""

    def __init__(
        self, model: nn.Module, data: Split, cfg: AuditConfig, on_progress: ProgressFn | None
    ) -> None:
        self.model, self.data, self.cfg, self.on_progress = model, data, cfg, on_progress
        self.dev = model_device(model)
        self.labels = data.labels
        self.n = len(data)
        self.clean = self.predict_clean()
        self.results: list[AttackResult] = []

    @torch.inference_mode()
    def predict_clean(self) -> torch.Tensor:
        correct = []
        for start in range(0, self.n, self.cfg.batch_size):
            part = torch.arange(start, min(self.n, start + self.cfg.batch_size), device=self.dev)
            sub = self.data.subset(part)
            with autocast(self.dev):
                correct.append(self.model(sub.float_images()).argmax(1) == sub.labels)
        return torch.cat(correct)

    def run(
        self,
        name: str,
        alive: torch.Tensor,
        eps: float,
        role: str,
        label: str,
        cfg: AuditConfig | None = None,
    ) -> torch.Tensor:
        """Attack the samples flagged ``alive``; returns the flags of those still robust after."""
        cfg = cfg or self.cfg
        spec = _spec(name, cfg, eps)
        attack = _batch_attack(self.model, spec, cfg, eps)
        t0 = time.monotonic()
        robust = alive.clone()
        idx = alive.nonzero().squeeze(1)
        bs = self.cfg.batch_size
        for start in range(0, idx.numel(), bs):
            part = idx[start : start + bs]
            sub = self.data.subset(part)
            robust[part] = attack(sub.float_images(), sub.labels)
            if self.on_progress is not None:
                self.on_progress(label, min(start + bs, idx.numel()), idx.numel())
        self.results.append(
            AttackResult(
                name=spec.name, norm=self.cfg.norm, eps=eps, steps=spec.steps,
                restarts=spec.restarts, loss=spec.loss, accuracy=_mean(robust),
                seconds=time.monotonic() - t0, alpha=spec.alpha, role=role,
                samples=int(idx.numel()), broke=int((alive & ~robust).sum()),
                queries=spec.queries,
            )
        )  # fmt: skip
        return robust

    def ensemble(
        self, names: tuple[str, ...], alive: torch.Tensor, eps: float, role: str
    ) -> torch.Tensor:
        for name in names:
            alive = self.run(name, alive, eps, role, f"{name} @ {eps:.4g}")
        return alive


@dataclass(frozen=True)
class EnsembleResult:
    """The headline alone: clean and ensemble robust accuracy, without the named attacks and
    checks of a full :func:`audit` (for model selection and benchmarks)."""

    clean_accuracy: float
    robust_accuracy: float
    attacks: list[AttackResult]
    robust: torch.Tensor


def run_ensemble(
    model: nn.Module,
    data: Split,
    config: AuditConfig | None = None,
    *,
    on_progress: ProgressFn | None = None,
) -> EnsembleResult:
    """Only the ensemble of ``config.attacks`` at ``config.eps[0]``, per-sample worst case."""
    cfg = config or AuditConfig()
    _, names = resolve_attacks(cfg.attacks, cfg.steps)
    was_training = model.training
    model.eval()
    try:
        a = _Auditor(model, data.to(model_device(model)), cfg, on_progress)
        robust = a.ensemble(names, a.clean, cfg.eps[0], "ensemble")
    finally:
        model.train(was_training)
    return EnsembleResult(_mean(a.clean), _mean(robust), a.results, robust)


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
    ensemble_name, names = resolve_attacks(cfg.attacks, cfg.steps)
    t0 = time.monotonic()
    was_training = model.training
    model.eval()
    dev = model_device(model)
    # The test set stays resident on the device (uint8 where it was) for every attack.
    data = data.to(dev)
    try:
        a = _Auditor(model, data, cfg, on_progress)
        eps0 = cfg.eps[0]
        robust = a.ensemble(names, a.clean, eps0, "ensemble")
        ensemble_mask = robust.clone()
        named = _named_attacks(a, names, ensemble_mask, eps0)
        for mask in named.values():
            robust &= mask
        checks, extra_masks, by_eps = _masking_checks(a, names, robust, named, ensemble_mask)
        for mask in extra_masks:
            robust &= mask
        checks.extend(_gradient_checks(model, data, cfg, dev))
    finally:
        model.train(was_training)
    warnings = [
        {"name": c.name, "detail": c.detail, "meaning": c.meaning, "source": "audit"}
        for c in checks
        if c.passed is False
    ]
    by_eps.insert(0, _point(eps0, robust, None, ensemble_name))
    return AuditReport(
        samples=a.n,
        clean_accuracy=_mean(a.clean),
        robust_accuracy=_mean(robust),
        attacks=a.results,
        per_class=_per_class(a.labels, a.clean, robust, class_names),
        checks=checks,
        worst_case_accuracy=_mean(robust),
        seconds=time.monotonic() - t0,
        config=cfg.to_dict(),
        ensemble=ensemble_name,
        ensemble_attacks=list(names),
        norm=cfg.norm,
        eps=eps0,
        by_eps=sorted(by_eps, key=lambda p: (p["eps"], p["subset"])),
        warnings=warnings,
        device=str(dev),
    )


def _named_attacks(
    a: _Auditor, names: tuple[str, ...], ensemble_mask: torch.Tensor, eps: float
) -> dict[str, torch.Tensor]:
    """The paper's PGD (CE) and FGSM, each on every sample, clean-misclassified ones included:
    their accuracies are independent of the clean pass, so the robust-below-clean check means
    something, and the CE-PGD one is what the ensemble is compared with."""
    everyone = torch.ones(a.n, dtype=torch.bool, device=a.dev)
    pgd_name = _spec("pgd", a.cfg, eps).name
    out: dict[str, torch.Tensor] = {}
    if pgd_name not in names:
        out[pgd_name] = a.run(pgd_name, everyone, eps, "named", pgd_name)
    else:
        out[pgd_name] = ensemble_mask
    if a.cfg.fgsm and a.cfg.norm == "linf":
        out["fgsm"] = a.run("fgsm", everyone, eps, "named", "fgsm")
    return out


def _subset(a: _Auditor) -> torch.Tensor:
    """A fixed random subset for the checks that run at other radii (the same on every audit)."""
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(a.n, generator=g)[: a.cfg.check_samples].to(a.dev)
    sel = torch.zeros(a.n, dtype=torch.bool, device=a.dev)
    sel[pick] = True
    return sel


def _point(eps: float, mask: torch.Tensor, sel: torch.Tensor | None, attacks: str) -> Any:
    n = int(sel.sum()) if sel is not None else int(mask.numel())
    acc = float((mask & sel).sum()) / max(1, n) if sel is not None else _mean(mask)
    return {"eps": eps, "robust_accuracy": acc, "samples": n, "attacks": attacks,
            "subset": sel is not None}  # fmt: skip


def _masking_checks(
    a: _Auditor,
    names: tuple[str, ...],
    robust: torch.Tensor,
    named: dict[str, torch.Tensor],
    ensemble_mask: torch.Tensor,
) -> tuple[list[SanityCheck], list[torch.Tensor], list[dict[str, Any]]]:
    cfg, eps0 = a.cfg, a.cfg.eps[0]
    checks: list[SanityCheck] = []
    masks: list[torch.Tensor] = []
    pgd_name = _spec("pgd", cfg, eps0).name
    pgd_acc = _mean(named[pgd_name])
    ens_acc = _mean(ensemble_mask)
    if pgd_name in names:
        checks.append(_skipped("ce-pgd-gap", "the headline is PGD itself (ensemble 'paper')",
                               _MEANINGS["ce-pgd-gap"]))  # fmt: skip
    else:
        gap = pgd_acc - ens_acc
        checks.append(
            SanityCheck(
                "ce-pgd-gap",
                gap <= CE_GAP_LIMIT,
                f"{pgd_name} (CE) {pgd_acc:.4f} vs ensemble {ens_acc:.4f}: gap {gap:+.4f} "
                f"(limit {CE_GAP_LIMIT})",
                _MEANINGS["ce-pgd-gap"],
            )
        )
    bb, bb_mask = _black_box_check(a, names, robust)
    checks.append(bb)
    if bb_mask is not None:
        masks.append(bb_mask)
        robust = robust & bb_mask
    by_eps: list[dict[str, Any]] = []
    fast = ENSEMBLES["fast"]
    for eps in cfg.eps[1:]:
        mask = a.ensemble(names, a.clean, eps, "eps-curve")
        by_eps.append(_point(eps, mask, None, a.cfg.attacks))
    sel = _subset(a)
    larger = min(2 * eps0, 1.0) if cfg.norm == "linf" else 2 * eps0
    larger_mask = a.ensemble(fast, a.clean & sel, larger, "check")
    by_eps.append(_point(larger, larger_mask, sel, "fast"))
    large = _large_eps(a)
    if large is not None:
        large_mask = a.ensemble(fast, a.clean & sel, large, "check")
        by_eps.append(_point(large, large_mask, sel, "fast"))
        large_acc = float((large_mask & sel).sum()) / max(1, int(sel.sum()))
        checks.append(
            SanityCheck(
                "large-eps-breaks-all",
                large_acc <= LARGE_EPS_LIMIT,
                f"accuracy {large_acc:.4f} at eps {large:.4g} on {int(sel.sum())} samples "
                f"(limit {LARGE_EPS_LIMIT})",
                _MEANINGS["large-eps-breaks-all"],
            )
        )
    else:
        checks.append(_skipped("large-eps-breaks-all", f"eps {eps0} is already large",
                               _MEANINGS["large-eps-breaks-all"]))  # fmt: skip
    checks.append(_monotone_check(eps0, robust, larger, larger_mask, sel, by_eps))
    clean_again = _mean(a.predict_clean())
    independent = {n: _mean(m) for n, m in named.items() if n in (pgd_name, "fgsm")}
    above = {n: v for n, v in independent.items() if v > clean_again + 1e-9}
    checks.append(
        SanityCheck(
            "robust-not-above-clean",
            not above,
            f"clean {clean_again:.4f} (recomputed); "
            + ", ".join(f"{n} on all samples {v:.4f}" for n, v in independent.items()),
            _MEANINGS["robust-not-above-clean"],
        )
    )
    if "fgsm" in named:
        f_acc = _mean(named["fgsm"])
        checks.append(
            SanityCheck(
                "fgsm-not-stronger-than-pgd",
                f_acc >= pgd_acc - EPS_SLACK,
                f"FGSM {f_acc:.4f} vs {pgd_name} {pgd_acc:.4f}",
                _MEANINGS["fgsm-not-stronger-than-pgd"],
            )
        )
    return checks, masks, by_eps


def _large_eps(a: _Auditor) -> float | None:
    """Linf 0.5 (the ball then holds the mid-grey image, which no classifier labels right for
    every class); in L2 the radius of the ball around that Linf ball."""
    eps0 = a.cfg.eps[0]
    if a.cfg.norm == "linf":
        return 0.5 if eps0 < 0.5 else None
    d = a.data.images[0].numel()
    large = 0.5 * float(d) ** 0.5
    return large if eps0 < large else None


def _black_box_check(
    a: _Auditor, names: tuple[str, ...], robust: torch.Tensor
) -> tuple[SanityCheck, torch.Tensor | None]:
    """Square on what the white-box attacks left: in the ensemble it ran already (its count is
    read off); otherwise a shorter probe runs on a subset of the survivors, and what it breaks
    counts against the headline too."""
    cfg = a.cfg
    meaning = _MEANINGS["black-box-not-stronger"]
    if "square" in names:
        white = [r for r in a.results if r.role == "ensemble" and r.name != "square"]
        sq = next(r for r in a.results if r.role == "ensemble" and r.name == "square")
        if not white:
            return _skipped("black-box-not-stronger", "no white-box attack ran", meaning), None
        attacked, broke = sq.samples, sq.broke
        mask = None
    else:
        survivors = robust.nonzero().squeeze(1)
        probe = survivors[torch.randperm(survivors.numel(), device=a.dev)[: cfg.check_samples]]
        sel = torch.zeros_like(robust)
        sel[probe] = True
        shorter = cfg.with_(square_queries=min(cfg.square_queries, PROBE_QUERIES))
        after = a.run("square", sel, cfg.eps[0], "check", "square probe", cfg=shorter)
        mask = ~(sel & ~after)
        attacked, broke = int(sel.sum()), int((sel & ~after).sum())
    share = broke / attacked if attacked else 0.0
    passed = broke < 2 or share <= BLACK_BOX_LIMIT
    return (
        SanityCheck(
            "black-box-not-stronger",
            passed,
            f"Square broke {broke} of {attacked} samples the white-box attacks left "
            f"({share:.1%}; limit {BLACK_BOX_LIMIT:.0%})",
            meaning,
        ),
        mask,
    )


def _monotone_check(
    eps0: float,
    robust: torch.Tensor,
    larger: float,
    larger_mask: torch.Tensor,
    sel: torch.Tensor,
    by_eps: list[dict[str, Any]],
) -> SanityCheck:
    """Accuracy at a larger radius, compared on the same samples, must not be higher: the
    subset attacked at ``larger`` against the headline's verdict on those samples, and the
    user's extra radii (whole set) against each other."""
    n = max(1, int(sel.sum()))
    at_eps = float((robust & sel).sum()) / n
    at_larger = float((larger_mask & sel).sum()) / n
    bad = []
    if at_larger > at_eps + EPS_SLACK:
        bad.append(f"{at_larger:.4f} at {larger:.4g} > {at_eps:.4f} at {eps0:.4g}")
    full = sorted((p for p in by_eps if not p["subset"]), key=lambda p: p["eps"])
    points = [{"eps": eps0, "robust_accuracy": _mean(robust)}, *full]
    points.sort(key=lambda p: p["eps"])
    for lo, hi in itertools.pairwise(points):
        if hi["robust_accuracy"] > lo["robust_accuracy"] + EPS_SLACK:
            bad.append(
                f"{hi['robust_accuracy']:.4f} at {hi['eps']:.4g} > "
                f"{lo['robust_accuracy']:.4f} at {lo['eps']:.4g}"
            )
    detail = "; ".join(bad) if bad else (
        f"{at_larger:.4f} at {larger:.4g} vs {at_eps:.4f} at {eps0:.4g} on {n} samples"
    )  # fmt: skip
    return SanityCheck("larger-eps-not-more-robust", not bad, detail,
                       _MEANINGS["larger-eps-not-more-robust"])  # fmt: skip


def _skipped(name: str, why: str, meaning: str) -> SanityCheck:
    return SanityCheck(name, None, f"skipped: {why}", meaning)


_MEANINGS = {
    "ce-pgd-gap": "Robust only to CE-based PGD: a stronger attack breaks samples PGD with "
    "cross-entropy cannot, the typical sign of masked or flat CE gradients; trust the ensemble's "
    "number, not PGD's.",
    "black-box-not-stronger": "A black-box attack that uses no gradients broke samples the "
    "gradient attacks missed: the gradients are masked, and white-box robustness overstates "
    "the real robustness.",
    "larger-eps-not-more-robust": "The model looked more robust in a larger ball that contains "
    "the smaller one, which is impossible for a sound evaluation: the attacks are failing "
    "(gradient masking), not the model succeeding.",
    "large-eps-breaks-all": "An attack with a radius large enough to turn any image into grey "
    "should break almost everything; if it does not, the attacks cannot find what exists "
    "(gradient masking or a broken attack setup).",
    "robust-not-above-clean": "Attacked inputs were classified right more often than clean "
    "ones: the model behaves differently on clean inputs (randomness, input detection), so "
    "its robust accuracy cannot be trusted.",
    "fgsm-not-stronger-than-pgd": "A one-step attack beat a 20-step one: iterative attacks are "
    "being misled by the loss surface (gradient masking).",
    "nonzero-input-gradients": "Many inputs have an all-zero gradient, so gradient attacks "
    "have nothing to follow (masking by saturation or non-differentiable layers).",
    "outputs-are-logits": "The model seems to output probabilities; softmax inside the model "
    "weakens cross-entropy attacks; return logits.",
}


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
            f"{zero:.1%} of samples have an all-zero input gradient",
            _MEANINGS["nonzero-input-gradients"],
        ),
        SanityCheck(
            "outputs-are-logits",
            not probs_like,
            "outputs look like probabilities" if probs_like else "outputs are unnormalised logits",
            _MEANINGS["outputs-are-logits"],
        ),
    ]
