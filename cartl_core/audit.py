"""Robustness audit: the headline robust accuracy comes from an attack ensemble, per-sample worst
case, with checks that can fail.

The default ensemble is exactly AutoAttack's standard one (APGD-CE, APGD-T, FAB-T, Square; see
``ENSEMBLES``) run in sequence, each attack only on the samples every earlier one left robust,
and each sample leaving an attack the moment it is misclassified. ``robust_accuracy`` is the
fraction of samples that nothing run at the main eps broke: the ensemble, the paper's PGD-20
(kept as a named attack so the paper's protocol stays comparable), FGSM, and the black-box probe
of the checks. Attacks run in fp32 unless ``precision="bf16"`` is asked for.

The checks follow AutoAttack's ``checks.py`` and the usual signs of gradient masking (Athalye et
al. 2018; Carlini et al. 2019), plus checks of the model itself (a constant or chance-level
classifier, a randomised forward pass) under which a robust accuracy means nothing: each either
passes, fails with a warning that says what a failure means, or is skipped where it cannot be
run (``passed`` None). Failed model checks also put a plain note beside the headline
(``headline_notes``).
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cartl_core import parallel
from cartl_core._runtime import (
    autocast,
    effective_precision,
    frozen_for_attack,
    model_device,
    timed,
)
from cartl_core._stop import StopFn, check_stop, stop_when
from cartl_core.attacks import apgd, apgd_targeted, fab_targeted, fgsm, robust_mask, square
from cartl_core.attacks.apgd import targeted_loss_for
from cartl_core.attacks.draws import Draws
from cartl_core.attacks.losses import ce_loss
from cartl_core.config import ENSEMBLES, AuditConfig, resolve_attacks
from cartl_core.data import Split
from cartl_core.errors import ConfigError
from cartl_core.options import format_duration
from cartl_core.stats import accuracy_interval, format_interval, interval_text, wilson_interval

__all__ = [
    "ENSEMBLES",
    "SCHEMA_VERSION",
    "AttackResult",
    "AuditEstimate",
    "AuditEvent",
    "AuditReport",
    "EnsembleResult",
    "SanityCheck",
    "audit",
    "black_box_verdict",
    "ce_gap_verdict",
    "run_ensemble",
]

#: The version of :meth:`AuditReport.to_dict`'s shape (its ``schema_version``), bumped when a key
#: goes or changes meaning; readers skip the keys an older report lacks, so an added key is not a
#: new version.
SCHEMA_VERSION = 1

#: Bumped whenever a change to the attacks can change a robust accuracy: stored results made by
#: an older revision (compare's reusable candidates) are then recomputed, not reused.
ATTACKS_REVISION = 3

#: CE-PGD may stand this far above the ensemble before the audit calls it masking: the models
#: this product trains sit up to 8.3 points apart (see :func:`ce_gap_verdict`).
CE_GAP_LIMIT = 0.10
#: ... or this share of PGD's own accuracy, where that is larger.
CE_GAP_RELATIVE = 0.15
#: AutoAttack's ``check_square_sr``: Square may lower robust accuracy by at most this much.
BLACK_BOX_LIMIT = 0.002
#: Accuracy a large-eps attack must drive the model to (near zero).
LARGE_EPS_LIMIT = 0.05
#: Square's budget when it only probes for masking (ensembles without it): masked gradients
#: fall to it within a few hundred queries.
PROBE_QUERIES = 500
#: Slack for attack randomness when comparing accuracies at two radii.
EPS_SLACK = 0.01
#: AutoAttack's ``check_randomized``: two passes over the same inputs may differ by this much
#: (outputs scaled to a maximum of 1) before the model counts as randomised.
RANDOMNESS_TOLERANCE = 1e-4
#: A model that gives one class to this share of the test images (and to more than the labels
#: do) predicts a near-constant.
CONSTANT_SHARE = 0.95
#: Training accuracy above test accuracy by more than this is memorisation, not a fit.
TRAIN_TEST_GAP = 0.25
#: z of the one-sided 97.5% bound the chance-level check puts on clean accuracy.
_Z = 1.96


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
    """``robust_accuracy``: per-sample worst case over every attack at the main eps (``eps``).

    ``clean_interval``, ``robust_interval``: their 95% Wilson intervals over the ``samples``
    (``interval`` says so; reports written before intervals get them on reading).
    ``notes``: how the audit had to adapt to the model (e.g. a loss chosen for a 2-class task);
    ``headline_notes``: why the robust accuracy means nothing for this model, where a model check
    failed (shown beside the number wherever it is shown); ``precision``: the arithmetic the
    attacks ran in on ``device``.
    """

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
    precision: str = "fp32"
    notes: list[str] = field(default_factory=list)
    headline_notes: list[str] = field(default_factory=list)
    clean_interval: list[float] = field(default_factory=list)
    robust_interval: list[float] = field(default_factory=list)
    interval: str = ""

    def __post_init__(self) -> None:
        # Computed here, so a report built by hand or read from an older version has them too.
        if not self.clean_interval:
            self.clean_interval = accuracy_interval(self.clean_accuracy, self.samples)
        if not self.robust_interval:
            self.robust_interval = accuracy_interval(self.robust_accuracy, self.samples)
        self.interval = self.interval or interval_text(self.samples)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable data, with its ``schema_version`` (:data:`SCHEMA_VERSION`)."""
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}

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
        clean_ci = format_interval(self.clean_interval)
        lines[-1] += f"{self.clean_accuracy:>10.4f}{'':>9}  ({clean_ci})"
        for a in self.attacks:
            steps = a.queries if a.queries is not None else a.steps
            lines.append(
                f"{a.name:<24}{a.role:<10}{a.eps:>9.4f}{steps:>7}{a.samples:>9}"
                f"{a.accuracy:>10.4f}{a.seconds:>9.1f}"
            )
        ensemble = f"{self.ensemble}: {', '.join(self.ensemble_attacks)}"
        lines.append(
            f"robust accuracy ({ensemble}; per-sample worst case; {self.precision}) "
            f"{self.robust_accuracy:.4f} ({format_interval(self.robust_interval)})"
        )
        lines.append(f"  intervals: {self.interval}")
        lines.extend(f"  MEANINGLESS: {note}" for note in self.headline_notes)
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass(frozen=True)
class AuditEstimate:
    """What an audit costs at most, before it starts: a gradient pass and a forward pass timed on
    this device (a part per call and a part per sample, ``*_pass_s``), times every planned
    attack's passes on every sample it may attack, plus the attacks' own arithmetic. Samples
    leave each attack once broken, so a real audit costs less, the more so the less robust the
    model."""

    seconds_max: float
    grad_pass_s: float
    forward_pass_s: float
    per_attack: list[dict[str, Any]]
    device: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        parts = ", ".join(
            f"{a['attack']} {format_duration(a['seconds_max'])}"
            for a in self.per_attack
            if a["seconds_max"] >= 0.05 * self.seconds_max
        )
        most = format_duration(self.seconds_max)
        return f"at most {most} on {self.device} ({parts}); less as samples break"


@dataclass(frozen=True)
class AuditEvent:
    """Progress of an audit. ``attack``: the attack running, with its radius (``apgd-t @
    0.0314``; empty on the first event, which carries ``estimate``); ``done`` of ``total``: the
    samples it has finished, ``fraction`` counting the steps of the batch in hand too; ``eta_s``:
    the rest of the audit, from this attack's measured rate and the bound on the later ones at
    the samples still robust."""

    attack: str
    role: str
    done: int
    total: int
    fraction: float
    elapsed_s: float
    eta_s: float | None
    index: int
    attacks: int
    estimate: AuditEstimate | None = None


ProgressFn = Callable[[AuditEvent], None]
#: Runs one attack on a batch of clean-correct samples and returns which stayed robust; the
#: third argument hears (steps done, planned) within the batch, the fourth is the batch's
#: random numbers, keyed by sample.
BatchAttack = Callable[
    [torch.Tensor, torch.Tensor, Callable[[int, int], None], Draws], torch.Tensor
]


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
    targets: int = 1

    def passes(self) -> tuple[int, int]:
        """(gradient passes, forward passes) per sample at most, the clean check included."""
        if self.kind == "square":
            return 0, (self.queries or 0) * self.restarts + 1
        if self.kind == "fab-t":
            # A crossing outside eps costs a second gradient pass at the pulled-back point.
            return 2 * self.steps * self.restarts * self.targets + 1, 1
        if self.kind == "fgsm":
            return 1, 1
        return self.steps * self.restarts * self.targets + 1, 1


_PGD = re.compile(r"^pgd(?:-(\d+))?(-cw)?$")


def _spec(name: str, cfg: AuditConfig, eps: float, classes: int) -> _Spec:
    targets = max(1, classes - 1)
    if name == "apgd-ce":
        return _Spec(name, "apgd", cfg.apgd_steps, cfg.apgd_restarts, "ce")
    if name == "apgd-dlr":
        loss = "dlr" if classes >= 3 else "cw"
        return _Spec(name, "apgd", cfg.apgd_steps, cfg.apgd_restarts, loss)
    if name == "apgd-t":
        loss = f"{targeted_loss_for(classes)}-targeted"
        t = min(cfg.apgd_targets, targets)
        return _Spec(name, "apgd-t", cfg.apgd_steps, cfg.apgd_restarts, loss, targets=t)
    if name == "fab-t":
        t = min(cfg.fab_targets, targets)
        return _Spec(name, "fab-t", cfg.fab_steps, 1, "margin-targeted", targets=t)
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
    norm, precision = cfg.norm, cfg.precision

    def run(
        x: torch.Tensor, y: torch.Tensor, on_step: Callable[[int, int], None], draws: Draws
    ) -> torch.Tensor:
        if spec.kind == "apgd":
            return apgd(
                model, x, y, eps=eps, norm=norm, steps=spec.steps, restarts=spec.restarts,
                loss=spec.loss, precision=precision, on_step=on_step, draws=draws,
            ).robust  # fmt: skip
        if spec.kind == "apgd-t":
            return apgd_targeted(
                model, x, y, eps=eps, norm=norm, steps=spec.steps, restarts=spec.restarts,
                targets=cfg.apgd_targets, loss=spec.loss.removesuffix("-targeted"),
                precision=precision, on_step=on_step, draws=draws,
            ).robust  # fmt: skip
        if spec.kind == "fab-t":
            return fab_targeted(
                model, x, y, eps=eps, norm=norm, steps=spec.steps, targets=cfg.fab_targets,
                precision=precision, on_step=on_step, draws=draws,
            ).robust  # fmt: skip
        if spec.kind == "square":
            return square(
                model, x, y, eps=eps, norm=norm, queries=spec.queries or cfg.square_queries,
                rescale=cfg.square_rescale, precision=precision, on_step=on_step, draws=draws,
            ).robust  # fmt: skip
        if spec.kind == "fgsm":
            x_adv = fgsm(model, x, y, eps, precision=precision)
            with torch.no_grad(), autocast(x.device, precision):
                logits: torch.Tensor = model(x_adv)
            on_step(1, 1)
            return logits.argmax(1) == y
        assert spec.alpha is not None
        return robust_mask(
            model, x, y, eps=eps, alpha=spec.alpha, steps=spec.steps, norm=norm,
            restarts=spec.restarts, loss=spec.loss, precision=precision, on_step=on_step,
            draws=draws,
        )  # fmt: skip

    return run


@dataclass(frozen=True)
class _Planned:
    """An attack the audit will run on at most ``samples`` samples (``None``: what the attack
    before it leaves), with ``cfg`` where it differs from the audit's (the Square probe)."""

    name: str
    role: str
    eps: float
    samples: int | None
    cfg: AuditConfig | None = None


@dataclass
class _Clock:
    """Where the audit stands in its plan, for progress events and their ETA."""

    started: float
    plan: list[_Planned] = field(default_factory=list)
    bounds: list[float] = field(default_factory=list)
    index: int = 0
    #: Measured seconds of the finished attacks over their bounds: how much the early exit saves
    #: on this model, applied to the bounds of the attacks still to come.
    spent: float = 0.0
    bounded: float = 0.0
    last_emit: float = 0.0


#: Progress events are at most this often (a cancel is noticed at each).
_EMIT_EVERY_S = 0.25


class _Auditor:
    """One audit's state: the data on the device, the clean pass, the measured cost of a pass,
    progress and timing.

    On several processes every rank runs the same audit: each attack's samples are dealt out
    over the ranks, and the flags of the samples each rank broke are combined before the next
    attack, so every rank goes on from the same survivors. A sample's random numbers are keyed
    by its index and the attack's place in the audit (:class:`Draws`), so it gets the numbers it
    would get on one process, in any batch."""

    def __init__(
        self,
        model: nn.Module,
        data: Split,
        cfg: AuditConfig,
        on_progress: ProgressFn | None,
        seed: int,
    ) -> None:
        self.model, self.data, self.cfg, self.on_progress = model, data, cfg, on_progress
        self.seed = seed
        group = parallel.current()
        self.rank, self.world = (group.rank, group.world) if group else (0, 1)
        self.dev = model_device(model)
        self.labels = data.labels
        self.n = len(data)
        self.clock = _Clock(time.monotonic())
        self.predicted, first_logits = self.predict_clean()
        self.clean = self.predicted == self.labels
        self.classes = int(first_logits.shape[1])
        if self.n and int(self.labels.max()) >= self.classes:
            raise ConfigError(
                f"the test labels go up to {int(self.labels.max())} but the model has "
                f"{self.classes} outputs; audit it on data of the classes it was trained for"
            )
        self.probe = _GradientProbe.run(model, data, cfg, first_logits)
        # Timed after the passes above, which warmed up the kernels it times.
        self.cost = _PassCost.measure(model, data, cfg, first_logits.shape[0])
        self.results: list[AttackResult] = []

    def predict_clean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's class for every sample, and the first batch's logits (fp32)."""
        predicted = []
        first: torch.Tensor | None = None
        bs = self.cfg.batch_size
        with torch.inference_mode():
            for start in range(0, self.n, bs):
                check_stop("the clean pass")
                part = torch.arange(start, min(self.n, start + bs), device=self.dev)
                with autocast(self.dev, self.cfg.precision):
                    logits = self.model(self.data.subset(part).float_images()).float()
                first = logits if first is None else first
                predicted.append(logits.argmax(1))
        assert first is not None
        return torch.cat(predicted), first.clone()

    # ------------------------------------------------------------------ the plan and its cost

    def start(self, plan: list[_Planned]) -> AuditEstimate:
        """Fix the plan, bound each attack's cost and tell the caller before anything runs."""
        clean_n = int(self.clean.sum())
        rows: list[dict[str, Any]] = []
        for p in plan:
            spec = _spec(p.name, p.cfg or self.cfg, p.eps, self.classes)
            samples = clean_n if p.samples is None else min(p.samples, self.n)
            rows.append(
                {
                    "attack": _label(p.name, p.eps, p.role),
                    "role": p.role,
                    "samples": samples,
                    "seconds_max": self.bound(spec, samples),
                }
            )
        self.clock.plan = plan
        self.clock.bounds = [float(r["seconds_max"]) for r in rows]
        estimate = AuditEstimate(
            seconds_max=sum(self.clock.bounds),
            grad_pass_s=self.cost.grad_per_sample,
            forward_pass_s=self.cost.forward_per_sample,
            per_attack=rows,
            device=str(self.dev),
        )
        if self.on_progress is not None:
            self.on_progress(
                AuditEvent(
                    "", "", 0, 0, 0.0, self.elapsed(), estimate.seconds_max, 0, len(plan),
                    estimate,
                )
            )  # fmt: skip
        return estimate

    def bound(self, spec: _Spec, samples: int) -> float:
        grads, forwards = spec.passes()
        bs = self.cfg.batch_size
        samples = -(-samples // self.world)  # each rank attacks its share at once
        sizes = [bs] * (samples // bs) + ([samples % bs] if samples % bs else [])
        return sum(self.cost.seconds(grads, forwards, size) for size in sizes)

    def elapsed(self) -> float:
        return time.monotonic() - self.clock.started

    def emit(self, label: str, role: str, done: int, total: int, frac: float, attack_s: float,
             final: bool) -> None:  # fmt: skip
        if self.on_progress is None:
            return
        now = time.monotonic()
        if not final and now - self.clock.last_emit < _EMIT_EVERY_S:
            return
        self.clock.last_emit = now
        c = self.clock
        eta_now = attack_s * (1 - frac) / frac if frac > 0 else c.bounds[c.index - 1]
        saving = c.spent / c.bounded if c.bounded > 0 else 1.0
        later = 0.0
        for p, b in zip(c.plan[c.index :], c.bounds[c.index :], strict=True):
            if p.samples is None:  # after this attack: at most what it is attacking now
                b = self.bound(_spec(p.name, p.cfg or self.cfg, p.eps, self.classes), total)
            later += b * saving
        self.on_progress(
            AuditEvent(label, role, done, total, frac, self.elapsed(), eta_now + later, c.index,
                       len(c.plan))
        )  # fmt: skip

    # ------------------------------------------------------------------ attacks

    def run(
        self,
        name: str,
        alive: torch.Tensor,
        eps: float,
        role: str,
        cfg: AuditConfig | None = None,
    ) -> torch.Tensor:
        """Attack the samples flagged ``alive``; returns the flags of those still robust after."""
        cfg = cfg or self.cfg
        spec = _spec(name, cfg, eps, self.classes)
        label = _label(name, eps, role)
        attack = _batch_attack(self.model, spec, cfg, eps)
        self.clock.index += 1
        t0 = time.monotonic()
        robust = alive.clone()
        every = alive.nonzero().squeeze(1)
        total = int(every.numel())
        # Dealt out in turn, so that each rank gets samples from all over the set.
        idx = every[self.rank :: self.world]
        own = int(idx.numel())
        bs = self.cfg.batch_size

        def report(finished: int, part: int, steps_done: int, steps: int, final: bool) -> None:
            frac = (finished + part * steps_done / max(1, steps)) / own if own else 1.0
            done = finished + (part if steps_done >= steps else 0)
            # Rank 0's share stands for the whole: the ranks' shares differ by one sample.
            done = total if final else min(total, done * total // max(1, own))
            self.emit(label, role, done, total, frac, time.monotonic() - t0, final)

        def within(start: int, part: int) -> Callable[[int, int], None]:
            return lambda steps_done, steps: report(start, part, steps_done, steps, False)

        report(0, 0, 0, 1, own == 0)
        for start in range(0, own, bs):
            part = idx[start : start + bs]
            sub = self.data.subset(part)
            n_part = int(part.numel())
            draws = Draws(part, self.seed, (self.clock.index,))
            robust[part] = attack(sub.float_images(), sub.labels, within(start, n_part), draws)
            report(start, n_part, 1, 1, start + bs >= own)
        if self.world > 1:
            # Each rank cleared only the flags of samples it broke: the minimum holds them all.
            flags = robust.to(torch.int32)
            parallel.all_reduce_(flags, dist.ReduceOp.MIN)
            robust = flags.bool()
        seconds = time.monotonic() - t0
        self.clock.spent += seconds
        self.clock.bounded += self.bound(spec, total)
        self.results.append(
            AttackResult(
                name=spec.name, norm=self.cfg.norm, eps=eps, steps=spec.steps,
                restarts=spec.restarts, loss=spec.loss, accuracy=_mean(robust),
                seconds=seconds, alpha=spec.alpha, role=role, samples=total,
                broke=int((alive & ~robust).sum()), queries=spec.queries,
            )
        )  # fmt: skip
        return robust

    def ensemble(
        self, names: Sequence[str], alive: torch.Tensor, eps: float, role: str
    ) -> torch.Tensor:
        for name in names:
            alive = self.run(name, alive, eps, role)
        return alive


def _label(name: str, eps: float, role: str) -> str:
    if role == "named":
        return name
    if role == "check" and name == "square":
        return "square probe"
    return f"{name} @ {eps:.4g}"


@dataclass(frozen=True)
class _PassCost:
    """What a pass costs on this device: a fixed part per call (kernel launches, Python) and a
    part per sample, each for a gradient pass and a forward pass, from two timed calls of each
    (one sample, a whole batch)."""

    grad_fixed: float
    grad_per_sample: float
    forward_fixed: float
    forward_per_sample: float

    #: The attacks' own arithmetic (projections, proposals) on top of the model's passes ...
    ATTACK_OVERHEAD = 1.5
    #: ... and their Python per step, which dominates on tiny models: 0.1-0.25 ms per step
    #: measured on a 2-core CPU for FAB-T and Square on a 1x8x8 two-layer CNN.
    STEP_OVERHEAD_S = 3e-4

    def seconds(self, grads: int, forwards: int, batch: int) -> float:
        grad = self.grad_fixed + self.grad_per_sample * batch
        forward = self.forward_fixed + self.forward_per_sample * batch
        passes = self.ATTACK_OVERHEAD * (grads * grad + forwards * forward)
        return passes + (grads + forwards) * self.STEP_OVERHEAD_S

    @classmethod
    def measure(cls, model: nn.Module, data: Split, cfg: AuditConfig, n: int) -> _PassCost:
        dev = model_device(model)
        x = data.subset(torch.arange(n, device=dev)).float_images()

        def grad_pass(xs: torch.Tensor) -> None:
            xs = xs.detach().requires_grad_(True)
            with torch.enable_grad(), autocast(dev, cfg.precision):
                out = model(xs)
            torch.autograd.grad(out.float().sum(), xs)

        def forward_pass(xs: torch.Tensor) -> None:
            with torch.inference_mode(), autocast(dev, cfg.precision):
                model(xs)

        def once(run: Callable[[torch.Tensor], None], xs: torch.Tensor) -> float:
            # The clean pass and the gradient probe have warmed these kernels up already.
            return timed(lambda: run(xs), dev, repeats=1, warm_up=False)

        with frozen_for_attack(model):
            g1, gn = once(grad_pass, x[:1]), once(grad_pass, x)
            f1, fn = once(forward_pass, x[:1]), once(forward_pass, x)
        g_per, f_per = (max(0.0, (big - one) / max(1, n - 1)) for big, one in ((gn, g1), (fn, f1)))
        return cls(max(0.0, g1 - g_per), g_per, max(0.0, f1 - f_per), f_per)


@dataclass(frozen=True)
class _GradientProbe:
    """One gradient pass over the first batch, which the checks of the model read: zero input
    gradients, probabilities for outputs, and a forward pass that differs from the clean pass's
    on the same inputs (a randomised model)."""

    zero_share: float
    probabilities: bool
    max_difference: float
    predictions_differ: int
    samples: int

    @classmethod
    def run(
        cls, model: nn.Module, data: Split, cfg: AuditConfig, clean_logits: torch.Tensor
    ) -> _GradientProbe:
        dev = model_device(model)
        n = clean_logits.shape[0]
        sub = data.subset(torch.arange(n, device=dev))
        x = sub.float_images().requires_grad_(True)
        with frozen_for_attack(model), torch.enable_grad():
            with autocast(dev, cfg.precision):
                logits = model(x)
            (grad,) = torch.autograd.grad(ce_loss(logits, sub.labels).sum(), x)
        z = logits.detach().float()
        zero = float((grad.flatten(1).abs().amax(dim=1) == 0).float().mean())
        probs = bool(((z >= 0) & (z <= 1)).all()) and bool(
            torch.allclose(z.sum(1), torch.ones_like(z[:, 0]), atol=1e-3)
        )
        # AutoAttack's check_randomized: outputs scaled to a maximum of 1, then compared.
        a, b = (t / t.abs().amax(dim=1, keepdim=True).clamp_min(1e-10) for t in (clean_logits, z))
        return cls(
            zero_share=zero,
            probabilities=probs,
            max_difference=float((a - b).abs().max()) if n else 0.0,
            predictions_differ=int((clean_logits.argmax(1) != z.argmax(1)).sum()),
            samples=n,
        )


@dataclass(frozen=True)
class EnsembleResult:
    """The headline alone: clean and ensemble robust accuracy, without the named attacks and
    checks of a full :func:`audit` (for model selection and benchmarks). ``robust`` and
    ``clean``: the per-sample flags behind them, in the data's order (what a paired comparison
    of two models on the same samples reads)."""

    clean_accuracy: float
    robust_accuracy: float
    attacks: list[AttackResult]
    robust: torch.Tensor
    estimate: AuditEstimate | None = None
    clean: torch.Tensor | None = None

    @property
    def samples(self) -> int:
        return int(self.robust.numel())

    @property
    def clean_interval(self) -> tuple[float, float]:
        """95% Wilson interval of the clean accuracy."""
        k = (
            int(self.clean.sum())
            if self.clean is not None
            else round(self.clean_accuracy * self.samples)
        )
        return wilson_interval(k, self.samples)

    @property
    def robust_interval(self) -> tuple[float, float]:
        """95% Wilson interval of the robust accuracy."""
        return wilson_interval(int(self.robust.sum()), self.samples)


def run_ensemble(
    model: nn.Module,
    data: Split,
    config: AuditConfig | None = None,
    *,
    on_progress: ProgressFn | None = None,
    seed: int | None = None,
    processes: int = 1,
) -> EnsembleResult:
    """Only the ensemble of ``config.attacks`` at ``config.eps[0]``, per-sample worst case.
    ``seed`` and ``processes``: as :func:`audit`'s."""
    seed = _audit_seed(seed)
    if processes > 1:
        return parallel.run_parallel(
            _ensemble, processes, {"on_progress": on_progress},
            model=model, data=data, config=config, seed=seed, device=model_device(model),
        )  # fmt: skip
    return _ensemble(model, data, config, seed, model_device(model), on_progress)


def _ensemble(
    model: nn.Module,
    data: Split,
    config: AuditConfig | None,
    seed: int,
    device: torch.device,
    on_progress: ProgressFn | None = None,
) -> EnsembleResult:
    model.to(device)
    cfg = config or AuditConfig()
    _, names = resolve_attacks(cfg.attacks, cfg.steps)
    was_training = model.training
    model.eval()
    try:
        a = _Auditor(model, data.to(device), cfg, on_progress, seed)
        estimate = a.start(_ensemble_plan(names, cfg.eps[0], "ensemble"))
        robust = a.ensemble(names, a.clean, cfg.eps[0], "ensemble")
    finally:
        model.train(was_training)
    return EnsembleResult(_mean(a.clean), _mean(robust), a.results, robust, estimate, a.clean)


def _ensemble_plan(names: Sequence[str], eps: float, role: str) -> list[_Planned]:
    return [_Planned(n, role, eps, None) for n in names]


def _plan(a: _Auditor, names: Sequence[str]) -> list[_Planned]:
    """Every attack :func:`audit` runs, in order, with a bound on the samples it attacks."""
    cfg, eps0 = a.cfg, a.cfg.eps[0]
    plan = _ensemble_plan(names, eps0, "ensemble")
    pgd_name = _spec("pgd", cfg, eps0, a.classes).name
    if pgd_name not in names:
        plan.append(_Planned(pgd_name, "named", eps0, a.n))
    if cfg.fgsm and cfg.norm == "linf":
        plan.append(_Planned("fgsm", "named", eps0, a.n))
    if "square" not in names:
        probe = cfg.with_(square_queries=min(cfg.square_queries, PROBE_QUERIES))
        plan.append(_Planned("square", "check", eps0, cfg.check_samples, probe))
    for eps in cfg.eps[1:]:
        curve = _ensemble_plan(names, eps, "eps-curve")
        plan.extend([_Planned(curve[0].name, "eps-curve", eps, a.n), *curve[1:]])
    fast = ENSEMBLES["fast"]
    for radius in (_larger_eps(a), _large_eps(a)):
        if radius is not None:
            checks = _ensemble_plan(fast, radius, "check")
            plan.extend([_Planned(checks[0].name, "check", radius, cfg.check_samples), *checks[1:]])
    return plan


def audit(
    model: nn.Module,
    data: Split,
    config: AuditConfig | None = None,
    *,
    class_names: tuple[str, ...] | None = None,
    train_accuracy: float | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    seed: int | None = None,
    processes: int = 1,
) -> AuditReport:
    """Audit ``model`` (on its current device) on ``data``; the model's mode is restored.

    ``train_accuracy``: the model's accuracy on its own training data, where known (a training
    job's last epoch); the audit then checks that the model did not only memorise it.
    ``on_progress`` hears an :class:`AuditEvent` with the cost estimate before the first attack,
    then the progress within each attack. ``should_stop`` is asked at every attack step (query,
    for Square): true ends the audit with :class:`~cartl_core.errors.CancelledError`.

    ``seed`` fixes the attacks' random numbers, each a function of the seed, the attack and the
    sample alone (default: drawn from torch's global generator, so ``torch.manual_seed`` before
    the call fixes them too). ``processes``: the attacks' samples dealt out over that many
    processes (GPUs ``cuda:0..``, or CPU processes), with the results of one process: the same
    random numbers for every sample, per-sample arithmetic (tests/core/test_parallel.py).
    """
    seed = _audit_seed(seed)
    if processes > 1:
        return parallel.run_parallel(
            _audit_on_rank, processes,
            {"on_progress": on_progress, "should_stop": should_stop},
            model=model, data=data, config=config, class_names=class_names,
            train_accuracy=train_accuracy, seed=seed, device=model_device(model),
        )  # fmt: skip
    with stop_when(should_stop):
        return _audit(model, data, config, class_names, train_accuracy, on_progress, seed)


def _audit_seed(seed: int | None) -> int:
    return int(torch.randint(0, 2**62, ())) if seed is None else seed


def _audit_on_rank(
    model: nn.Module,
    data: Split,
    config: AuditConfig | None,
    class_names: tuple[str, ...] | None,
    train_accuracy: float | None,
    seed: int,
    device: torch.device,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> AuditReport:
    """One rank's audit: every rank runs it on the same model and data (:class:`_Auditor`)."""
    model.to(device)
    with stop_when(should_stop):
        return _audit(model, data, config, class_names, train_accuracy, on_progress, seed)


def _audit(
    model: nn.Module,
    data: Split,
    config: AuditConfig | None,
    class_names: tuple[str, ...] | None,
    train_accuracy: float | None,
    on_progress: ProgressFn | None,
    seed: int,
) -> AuditReport:
    cfg = config or AuditConfig()
    ensemble_name, names = resolve_attacks(cfg.attacks, cfg.steps)
    t0 = time.monotonic()
    was_training = model.training
    model.eval()
    dev = model_device(model)
    # The test set stays resident on the device (uint8 where it was) for every attack.
    data = data.to(dev)
    try:
        a = _Auditor(model, data, cfg, on_progress, seed)
        a.start(_plan(a, names))
        eps0 = cfg.eps[0]
        robust = a.ensemble(names, a.clean, eps0, "ensemble")
        ensemble_mask = robust.clone()
        named = _named_attacks(a, names, ensemble_mask, eps0)
        for mask in named.values():
            robust &= mask
        checks, extra_masks, by_eps = _masking_checks(a, names, robust, named, ensemble_mask)
        for mask in extra_masks:
            robust &= mask
        checks.extend(_gradient_checks(a.probe))
        model_checks = _model_checks(a, class_names, train_accuracy)
        checks.extend(model_checks)
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
        precision=effective_precision(dev, cfg.precision),
        notes=_notes(a, names),
        headline_notes=[_HEADLINE[c.name] + c.detail for c in model_checks if c.passed is False],
    )


def _notes(a: _Auditor, names: Sequence[str]) -> list[str]:
    notes = []
    if a.classes < 3 and {"apgd-t", "apgd-dlr"} & set(names):
        notes.append(
            f"the model has {a.classes} classes: the DLR losses are constant below 3 classes "
            "(their gradient is zero), so APGD-T and APGD-DLR ran on the CW margin loss instead "
            "(targeted for APGD-T)"
        )
    precision = effective_precision(a.dev, a.cfg.precision)
    if precision != "fp32":
        notes.append(
            f"the attacks ran in {precision} autocast for speed; the reference evaluates in fp32, "
            "which can find a little more"
        )
    elif a.cfg.precision != "fp32":
        notes.append(f"{a.cfg.precision} was asked for; on {a.dev.type} the attacks ran in fp32")
    return notes


def _named_attacks(
    a: _Auditor, names: Sequence[str], ensemble_mask: torch.Tensor, eps: float
) -> dict[str, torch.Tensor]:
    """The paper's PGD (CE) and FGSM, each on every sample, clean-misclassified ones included:
    their accuracies are independent of the clean pass, so the robust-below-clean check means
    something, and the CE-PGD one is what the ensemble is compared with."""
    everyone = torch.ones(a.n, dtype=torch.bool, device=a.dev)
    pgd_name = _spec("pgd", a.cfg, eps, a.classes).name
    out: dict[str, torch.Tensor] = {}
    if pgd_name not in names:
        out[pgd_name] = a.run(pgd_name, everyone, eps, "named")
    else:
        out[pgd_name] = ensemble_mask
    if a.cfg.fgsm and a.cfg.norm == "linf":
        out["fgsm"] = a.run("fgsm", everyone, eps, "named")
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
    k = int((mask & sel).sum()) if sel is not None else int(mask.sum())
    return {"eps": eps, "robust_accuracy": acc, "samples": n, "attacks": attacks,
            "subset": sel is not None, "interval": list(wilson_interval(k, n))}  # fmt: skip


def ce_gap_verdict(pgd_accuracy: float, ensemble_accuracy: float) -> tuple[bool, float]:
    """Whether CE-PGD's accuracy stands close enough above the ensemble's, and the limit.

    The limit is ``CE_GAP_LIMIT`` or ``CE_GAP_RELATIVE`` of PGD's accuracy, whichever is larger.
    Healthy models: 2-4 points in AutoAttack's paper (CIFAR-10, 40-60% robust); 0.2 to 8.3
    points on the 12 models ``bench/check_calibration.py`` trains the way users do (AT and FDM
    sources, standard, LwF, NEFT and CARTL transfers, two seeds), where PGD-20 with CE is
    relatively weakest at low robust accuracy. A model with a saturated softmax: 61 points.
    """
    limit = max(CE_GAP_LIMIT, CE_GAP_RELATIVE * pgd_accuracy)
    return pgd_accuracy - ensemble_accuracy <= limit + 1e-9, limit


def black_box_verdict(broke: int, samples: int) -> bool:
    """AutoAttack's sensitivity: Square may lower the robust accuracy of ``samples`` samples by
    at most ``BLACK_BOX_LIMIT``; a single sample is not yet a pattern."""
    return broke < 2 or broke <= BLACK_BOX_LIMIT * samples


def _masking_checks(
    a: _Auditor,
    names: Sequence[str],
    robust: torch.Tensor,
    named: dict[str, torch.Tensor],
    ensemble_mask: torch.Tensor,
) -> tuple[list[SanityCheck], list[torch.Tensor], list[dict[str, Any]]]:
    cfg, eps0 = a.cfg, a.cfg.eps[0]
    checks: list[SanityCheck] = []
    masks: list[torch.Tensor] = []
    pgd_name = _spec("pgd", cfg, eps0, a.classes).name
    pgd_acc = _mean(named[pgd_name])
    ens_acc = _mean(ensemble_mask)
    if pgd_name in names:
        checks.append(_skipped("ce-pgd-gap", "the headline is PGD itself (ensemble 'paper')",
                               _MEANINGS["ce-pgd-gap"]))  # fmt: skip
    else:
        passed, limit = ce_gap_verdict(pgd_acc, ens_acc)
        checks.append(
            SanityCheck(
                "ce-pgd-gap",
                passed,
                f"{pgd_name} (CE) {pgd_acc:.4f} vs ensemble {ens_acc:.4f}: gap "
                f"{pgd_acc - ens_acc:+.4f} (limit {limit:.4f})",
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
    larger = _larger_eps(a)
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
    clean_again = _mean(a.predict_clean()[0] == a.labels)
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


def _larger_eps(a: _Auditor) -> float:
    eps0 = a.cfg.eps[0]
    return min(2 * eps0, 1.0) if a.cfg.norm == "linf" else 2 * eps0


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
    a: _Auditor, names: Sequence[str], robust: torch.Tensor
) -> tuple[SanityCheck, torch.Tensor | None]:
    """Square on what the white-box attacks left: in the ensemble it ran already (its count is
    read off); otherwise a shorter probe runs on a subset of the survivors, and what it breaks
    counts against the headline too (and is scaled up to all survivors for the verdict)."""
    cfg = a.cfg
    meaning = _MEANINGS["black-box-not-stronger"]
    if "square" in names:
        white = [r for r in a.results if r.role == "ensemble" and r.name != "square"]
        sq = next(r for r in a.results if r.role == "ensemble" and r.name == "square")
        if not white:
            return _skipped("black-box-not-stronger", "no white-box attack ran", meaning), None
        attacked, broke, scale = sq.samples, sq.broke, 1.0
        mask = None
    else:
        survivors = robust.nonzero().squeeze(1)
        g = torch.Generator().manual_seed(a.seed)
        pick = torch.randperm(survivors.numel(), generator=g)[: cfg.check_samples]
        probe = survivors[pick.to(a.dev)]
        sel = torch.zeros_like(robust)
        sel[probe] = True
        shorter = cfg.with_(square_queries=min(cfg.square_queries, PROBE_QUERIES))
        after = a.run("square", sel, cfg.eps[0], "check", cfg=shorter)
        mask = ~(sel & ~after)
        attacked, broke = int(sel.sum()), int((sel & ~after).sum())
        scale = survivors.numel() / attacked if attacked else 1.0
    drop = broke * scale / max(1, a.n)
    probed = "" if scale == 1.0 else f" (a probe of {attacked} of {survivors.numel()})"
    return (
        SanityCheck(
            "black-box-not-stronger",
            black_box_verdict(round(broke * scale), a.n),
            f"Square broke {broke} of {attacked} samples the white-box attacks left{probed}: "
            f"robust accuracy {drop:.2%} lower (limit {BLACK_BOX_LIMIT:.1%})",
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


def _model_checks(
    a: _Auditor, class_names: tuple[str, ...] | None, train_accuracy: float | None
) -> list[SanityCheck]:
    """Checks of the model itself, not the attacks: where one fails, robust accuracy says
    nothing about robustness (a constant classifier is 'robust' on every sample it gets right)."""
    n = max(1, a.n)
    clean_acc = _mean(a.clean)
    checks = [_randomised_check(a.probe)]
    counts = torch.bincount(a.predicted, minlength=a.classes)
    top = int(counts.argmax())
    share = float(counts[top]) / n
    label_share = float(torch.bincount(a.labels).max()) / n
    name = class_names[top] if class_names and top < len(class_names) else str(top)
    constant = share >= CONSTANT_SHARE and share > label_share + 0.05
    checks.append(
        SanityCheck(
            "predictions-not-constant",
            not constant,
            f"class {name!r} for {share:.0%} of the {a.n} test images (the most common label: "
            f"{label_share:.0%}); {int((counts > 0).sum())} classes predicted",
            _MEANINGS["predictions-not-constant"],
        )
    )
    # A classifier that always answers the most common label scores label_share: the clean
    # accuracy must be clearly above that (a one-sided 97.5% Wilson bound).
    low = _wilson_low(clean_acc, a.n)
    checks.append(
        SanityCheck(
            "clean-above-chance",
            low > label_share,
            f"clean accuracy {clean_acc:.4f} on {a.n} images (97.5% lower bound {low:.4f}) vs "
            f"{label_share:.4f} by always answering the most common label",
            _MEANINGS["clean-above-chance"],
        )
    )
    if train_accuracy is None:
        checks.append(_skipped("train-test-gap", "no training accuracy was given",
                               _MEANINGS["train-test-gap"]))  # fmt: skip
    else:
        gap = train_accuracy - clean_acc
        checks.append(
            SanityCheck(
                "train-test-gap",
                gap <= TRAIN_TEST_GAP,
                f"training accuracy {train_accuracy:.4f} vs test {clean_acc:.4f}: gap "
                f"{gap:+.4f} (limit {TRAIN_TEST_GAP})",
                _MEANINGS["train-test-gap"],
            )
        )
    return checks


def _wilson_low(p: float, n: int) -> float:
    if n == 0:
        return 0.0
    centre = p + _Z**2 / (2 * n)
    spread = _Z * math.sqrt(p * (1 - p) / n + _Z**2 / (4 * n * n))
    return (centre - spread) / (1 + _Z**2 / n)


def _randomised_check(probe: _GradientProbe) -> SanityCheck:
    randomised = probe.max_difference > RANDOMNESS_TOLERANCE or probe.predictions_differ > 0
    return SanityCheck(
        "deterministic-outputs",
        not randomised,
        f"two passes over the same {probe.samples} images: outputs differ by up to "
        f"{probe.max_difference:.2g} (scaled to a maximum of 1; limit {RANDOMNESS_TOLERANCE:g}), "
        f"{probe.predictions_differ} predictions differ",
        _MEANINGS["deterministic-outputs"],
    )


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
    "deterministic-outputs": "The model is randomised: the same input gives different outputs "
    "(noise, random transforms or dropout at evaluation). The robust accuracy is that of one "
    "random draw, not of a fixed model, and attacks that assume a fixed model overstate it; "
    "evaluate it with expectation over transformation (AutoAttack's 'rand' version).",
    "predictions-not-constant": "The model gives (almost) every image the same class. It is "
    "'robust' exactly on the images of that class because it never changes its answer, so the "
    "robust accuracy says nothing about robustness.",
    "clean-above-chance": "The clean accuracy is no better than always answering the most "
    "common label: the model has not learnt the task, and its robust accuracy says nothing about "
    "robustness.",
    "train-test-gap": "The model is far more accurate on its training images than on the test "
    "images: it memorised its training set. Its test numbers, robust accuracy included, are "
    "those of a model that does not generalise; fix the training before trusting them.",
}

#: What a failed model check puts beside the headline: the robust accuracy means nothing.
_HEADLINE = {
    "deterministic-outputs": "the model is randomised, so this is one random draw's robust "
    "accuracy, not a fixed model's: ",
    "predictions-not-constant": "the model predicts (almost) one class for everything, so its "
    "robust accuracy means nothing: ",
    "clean-above-chance": "the model is at chance level, so its robust accuracy means nothing: ",
    "train-test-gap": "the model memorised its training set, so its test numbers mean little: ",
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
        n = int(sel.sum())
        out.append(
            {
                "class": c,
                "name": names[c] if names else str(c),
                "samples": n,
                "clean_accuracy": _mean(clean[sel]),
                "robust_accuracy": _mean(robust[sel]),
                "clean_interval": list(wilson_interval(int(clean[sel].sum()), n)),
                "robust_interval": list(wilson_interval(int(robust[sel].sum()), n)),
            }
        )
    return out


def _gradient_checks(probe: _GradientProbe) -> list[SanityCheck]:
    return [
        SanityCheck(
            "nonzero-input-gradients",
            probe.zero_share < 0.05,
            f"{probe.zero_share:.1%} of samples have an all-zero input gradient",
            _MEANINGS["nonzero-input-gradients"],
        ),
        SanityCheck(
            "outputs-are-logits",
            not probe.probabilities,
            "outputs look like probabilities"
            if probe.probabilities
            else "outputs are unnormalised logits",
            _MEANINGS["outputs-are-logits"],
        ),
    ]
