"""``compare``: train candidate transfers of one source on one target and choose one on data held
out from the target's training split.

The choice never sees the test split. A stratified, seeded ``val_fraction`` of the target's
training images is held out (at least ``min_val_samples`` where a third of the split allows);
every candidate (method x k x beta x BN preset, see :class:`~cartl_core.config.CompareConfig`) is
trained by :func:`cartl_core.transfer` on the rest and audited on the held-out part with the
``fast`` ensemble (APGD-CE, APGD-T) at the comparison's eps. The choice is paired and holds
beyond the validation sample (:func:`choose_candidate`, :data:`RULE`): the candidate with the
least training work is kept unless another is more robust on the same validation images beyond
noise (exact McNemar, one-sided at ``confidence``, Holm-corrected), and candidates are left out
for clean accuracy only where they lose more than ``max_clean_drop`` beyond noise. Every
candidate is also audited on the test split, for the report only; every accuracy carries its 95%
Wilson interval.

Candidates share one copy of the data on the device (their loaders and audits index it in place).
Each is trained exactly as ``transfer`` with the same options trains it, from the same seed, so two
candidates differ only in their settings. With ``out_dir`` each candidate's weights are written as
``NAME.safetensors`` as soon as it is done, and a rerun with the same settings and data reuses
them (and resumes an interrupted candidate from its last finished epoch).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F

from cartl_core._runtime import (
    autocast,
    frozen_for_attack,
    prepare_model,
    resolve_device,
    synchronize,
    timed,
)
from cartl_core._stop import stop_when
from cartl_core.audit import ATTACKS_REVISION, AuditEvent, run_ensemble
from cartl_core.checkpoints import load_model, read_description, save_checkpoint
from cartl_core.config import (
    ADVERSARIAL_METHODS,
    COMPARE_CENTRE_K_ONLY,
    COMPARE_K_OFFSETS,
    CPU_MAX_COST_SECONDS,
    AttackConfig,
    AuditConfig,
    CompareConfig,
    TraceConfig,
    TransferConfig,
    TransferMethod,
)
from cartl_core.data import Augmentation, Dataset, Split
from cartl_core.data.loader import augment
from cartl_core.errors import CancelledError, ConfigError
from cartl_core.models import BlockModel
from cartl_core.options import format_duration
from cartl_core.provenance import sha256_file
from cartl_core.stats import (
    CONFIDENCE,
    accuracy_cell,
    accuracy_interval,
    discordant,
    holm,
    interval_text,
    max_half_width,
    min_resolvable,
    pack_flags,
    sign_test,
    unpack_flags,
    wilson_interval,
)
from cartl_core.training import bn as bn_policy
from cartl_core.training.loop import ProgressEvent, StopFn
from cartl_core.training.spectral import apply_spectral_norm
from cartl_core.training.transfer import (
    adversarial_step,
    frozen_features,
    shares_frozen_part,
    trades_step,
    transfer,
)

__all__ = [
    "RULE",
    "SCHEMA_VERSION",
    "Candidate",
    "CandidateResult",
    "Choice",
    "CompareEvent",
    "CompareResult",
    "CostEstimate",
    "HeldOut",
    "candidate_table",
    "choose_candidate",
    "compare",
    "estimate_cost",
    "plan_candidates",
    "pretrained_k",
    "validation_split",
]

#: The version of :meth:`CompareResult.to_dict`'s shape (its ``schema_version``), bumped when a
#: key goes or changes meaning.
#: 2: the paired choice (``selection.eligible`` now means "not left out beyond noise"; the
#: selection gained its confidence, comparisons and preference; rows their intervals).
SCHEMA_VERSION = 2
#: The ensemble every candidate is audited with, on validation and on test.
SELECTION_ATTACKS = "fast"
#: Shares of one candidate's progress: training, then the validation and the test audits.
_TRAIN_SHARE, _VAL_SHARE = 0.8, 0.1


@dataclass(frozen=True)
class Candidate:
    """One transfer setting to try. ``norm_beta`` is None for methods without spectral norm."""

    method: str
    k: int
    norm_beta: float | None
    bn: str

    @property
    def name(self) -> str:
        """Stable and readable, e.g. ``cartl-k3-b0.4-frozen``; also the weights' file name."""
        beta = "" if self.norm_beta is None else f"-b{self.norm_beta:g}"
        return f"{self.method}-k{self.k}{beta}-{self.bn}"

    def transfer_config(self, config: CompareConfig) -> TransferConfig:
        return TransferConfig(
            method=cast(TransferMethod, self.method),
            k=self.k,
            norm_beta=self.norm_beta,
            bn=self.bn,
            schedule=config.schedule_for(self.method),
            lwf=config.lwf,
            augmentation=config.augmentation,
            # The validation audit measures every candidate's robustness at the end; a per-epoch
            # trace would cost each candidate up to a tenth more for numbers nobody chooses by.
            trace=TraceConfig(samples=0),
            # Adversarial and TRADES fine-tuning train in the threat model candidates are
            # chosen in.
            attack=AttackConfig(eps=config.eps, norm=config.norm)
            if self.method in ADVERSARIAL_METHODS
            else None,
        )


@dataclass
class CandidateResult:
    """A trained candidate: its accuracies (``fast`` ensemble at the comparison's eps) on the
    validation and the test split, the seconds it took (training and both audits), its weights
    file, per-epoch history (``val_accuracy`` is on the validation split) and the model (on the
    CPU).

    Its measured cost: ``train_seconds`` (wall seconds of its training) and ``audit_seconds``
    (of its validation audit), on ``device``; ``cost_seconds`` is their sum, what the candidate
    cost to consider (the test audit is the report's; ``seconds`` includes it). A reused
    candidate carries the cost its first run measured.

    ``val_samples`` and ``test_samples``: the images behind each split's accuracies (their 95%
    Wilson intervals are in :meth:`to_dict`). ``val_clean_flags``, ``val_robust_flags``: which
    validation images it classifies right, and keeps right under the selection ensemble, as
    packed bits (:func:`cartl_core.stats.pack_flags`): what the paired choice compares."""

    name: str
    method: str
    k: int
    norm_beta: float | None
    bn: str
    val_clean: float
    val_robust: float
    test_clean: float
    test_robust: float
    seconds: float
    path: Path | None = None
    sha256: str | None = None
    reused: bool = False
    train_seconds: float = 0.0
    audit_seconds: float = 0.0
    device: str = ""
    val_samples: int = 0
    test_samples: int = 0
    val_clean_flags: str = field(default="", repr=False)
    val_robust_flags: str = field(default="", repr=False)
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    training: dict[str, Any] = field(default_factory=dict, repr=False)
    model: BlockModel | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The row of the candidate table (no model, history or training description)."""
        return {
            "name": self.name,
            "method": self.method,
            "k": self.k,
            "norm_beta": self.norm_beta,
            "bn": self.bn,
            "val_clean": self.val_clean,
            "val_robust": self.val_robust,
            "test_clean": self.test_clean,
            "test_robust": self.test_robust,
            **self.intervals(),
            "seconds": self.seconds,
            "train_seconds": self.train_seconds,
            "audit_seconds": self.audit_seconds,
            "cost_seconds": self.cost_seconds,
            "device": self.device,
            "path": None if self.path is None else str(self.path),
            "sha256": self.sha256,
            "reused": self.reused,
        }

    @property
    def cost_seconds(self) -> float:
        """Device-seconds of its training and its validation audit."""
        return self.train_seconds + self.audit_seconds

    def intervals(self) -> dict[str, Any]:
        """Each accuracy's 95% Wilson interval (``val_clean_interval``, ...) and the samples
        behind it; none where the count is unknown."""
        out: dict[str, Any] = {"val_samples": self.val_samples, "test_samples": self.test_samples}
        for split, n in (("val", self.val_samples), ("test", self.test_samples)):
            for kind in ("clean", "robust"):
                key = f"{split}_{kind}"
                out[f"{key}_interval"] = accuracy_interval(getattr(self, key), n) if n else None
        return out

    def flags(self) -> tuple[list[bool], list[bool]]:
        """The validation flags (clean-correct, robust), unpacked."""
        return (
            unpack_flags(self.val_clean_flags, self.val_samples),
            unpack_flags(self.val_robust_flags, self.val_samples),
        )


@dataclass(frozen=True)
class CostEstimate:
    """What a comparison will cost, computed before it starts.

    Training: one step is timed per kind of candidate (k, batch size, BN preset, spectral
    normalisation or not, LwF or not; the candidate's own step on the real data with its
    augmentation, the median of three after an untimed one), times the batches of every epoch,
    plus the forward pass over the validation split that ends each epoch.
    Audits: one attack forward-backward is timed at the audit's batch size; ``audit_seconds_max``
    assumes every sample survives every step of both attacks (APGD-CE, then APGD-T on each target
    class), which only a perfectly robust model does: attacks stop on a sample once it breaks, so
    real audits cost a fraction of it, about the robust accuracy's share. Adversarial
    fine-tuning's step is timed with its PGD examples, so its attack's cost is in its training.

    Each row of ``per_candidate`` also holds ``cost_seconds``: its training plus its validation
    audit at the maximum (``val_audit_seconds_max``), what the candidate's measured cost will
    count. ``budget_seconds`` (``max_cost_seconds``) and ``over_budget`` (the candidates dropped
    to fit it, each with its estimated cost and the reason) say what a budget cut,
    ``beyond_max_candidates`` what ``max_candidates`` cut; the totals count the candidates that
    will train. ``device``: where it was timed. ``resample``: where the
    source resamples the target's images to its own input size
    (:meth:`ModelSpec.describe_resample`), which every pass then runs at: its ``cost_factor``
    (source side / target side, squared) is in the timings, and said beside them.
    """

    candidates: int
    train_seconds: float
    audit_seconds_max: float
    per_candidate: list[dict[str, Any]]
    device: str = ""
    budget_seconds: float | None = None
    over_budget: list[dict[str, Any]] = field(default_factory=list)
    resample: dict[str, Any] | None = None
    beyond_max_candidates: list[str] = field(default_factory=list)
    #: The budget is the device's default (``CPU_MAX_COST_SECONDS``), not one the run named.
    budget_default: bool = False
    #: The candidates that cannot train on the frozen part's features computed once, and why.
    not_shared: dict[str, str] = field(default_factory=dict)

    @property
    def seconds_max(self) -> float:
        return self.train_seconds + self.audit_seconds_max

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "train_seconds": self.train_seconds,
            "audit_seconds_max": self.audit_seconds_max,
            "seconds_max": self.seconds_max,
            "per_candidate": self.per_candidate,
            "device": self.device,
            "budget_seconds": self.budget_seconds,
            "over_budget": self.over_budget,
            "resample": self.resample,
            "beyond_max_candidates": self.beyond_max_candidates,
            "budget_default": self.budget_default,
            "not_shared": self.not_shared,
        }

    def text(self) -> str:
        where = f" on {self.device}" if self.device else ""
        out = (
            f"{self.candidates} candidates{where}: training about "
            f"{format_duration(self.train_seconds)}, audits at most "
            f"{format_duration(self.audit_seconds_max)} (less for models that break early)"
        )
        if self.resample is not None:
            r = self.resample
            out += (
                f"; the source runs at {r['stem_size']} px on {r['input_size']}-px images "
                f"(resampled inside it, {r['method']}): about {r['cost_factor']:.3g}x the "
                f"FLOPs of a {r['input_size']}-px pass, included above"
            )
        shared = [r for r in self.per_candidate if r.get("shares_features")]
        if shared:
            out += f"; {len(shared)} train on the frozen part's features, computed once per k"
        unshared = [r["name"] for r in self.per_candidate if not r.get("shares_features", True)]
        if unshared:
            out += "; computing them every batch: " + ", ".join(
                f"{name} ({self.not_shared.get(name, '')})" for name in unshared
            )
        if self.beyond_max_candidates:
            out += (
                f"; {len(self.beyond_max_candidates)} more beyond max_candidates not trained: "
                + ", ".join(self.beyond_max_candidates)
            )
        if self.over_budget:
            assert self.budget_seconds is not None
            names = ", ".join(
                f"{d['name']} ({_duration(d['cost_seconds'])})" for d in self.over_budget
            )
            default = " (the CPU default; max_cost sets another)" if self.budget_default else ""
            out += (
                f"; dropped to fit max_cost {_duration(self.budget_seconds)}{default} of "
                f"training and validation audits: {names}"
            )
        return out

    def within_budget(self, budget: float | None) -> CostEstimate:
        """This estimate less the candidates that do not fit ``budget`` device-seconds: kept in
        order while the running sum of their ``cost_seconds`` fits; one that would exceed it is
        dropped and a cheaper later one may still fit. None: everything is kept."""
        if budget is None:
            return self
        kept: list[dict[str, Any]] = []
        dropped: list[dict[str, Any]] = []
        spent = 0.0
        for row in self.per_candidate:
            cost = float(row["cost_seconds"])
            if spent + cost <= budget:
                kept.append(row)
                spent += cost
                continue
            left = max(0.0, budget - spent)
            dropped.append(
                {
                    "name": row["name"],
                    "cost_seconds": cost,
                    "reason": f"estimated {_duration(cost)} of training and validation "
                    f"audit, {_duration(left)} of max_cost "
                    f"{_duration(budget)} left",
                }
            )
        return replace(
            self,
            candidates=len(kept),
            train_seconds=sum(r["train_seconds"] for r in kept),
            audit_seconds_max=sum(r["audit_seconds_max"] for r in kept),
            per_candidate=kept,
            budget_seconds=budget,
            over_budget=dropped,
        )


@dataclass(frozen=True)
class CompareEvent:
    """Progress of a comparison. ``stage``: ``estimate`` (once, before any training; carries
    ``estimate``), ``train`` (carries the training's ``ProgressEvent``), ``audit-val`` and
    ``audit-test`` (the attack running and its samples done of total), ``candidate-done`` (carries
    ``result``). ``candidate`` counts from 0."""

    stage: str
    candidate: int
    candidates: int
    name: str
    elapsed_s: float
    estimate: CostEstimate | None = None
    training: ProgressEvent | None = None
    attack: str | None = None
    done: int = 0
    total: int = 0
    result: CandidateResult | None = None

    @property
    def fraction(self) -> float:
        """The whole comparison's progress, 0..1 (each candidate an equal share)."""
        within = {
            "estimate": 0.0,
            "audit-val": _TRAIN_SHARE,
            "audit-test": _TRAIN_SHARE + _VAL_SHARE,
            "candidate-done": 1.0,
        }.get(self.stage, 0.0)
        if self.stage == "train" and self.training is not None:
            within = _TRAIN_SHARE * self.training.fraction
        return (self.candidate + within) / max(1, self.candidates)


CompareProgressFn = Callable[[CompareEvent], None]


@dataclass
class CompareResult:
    """Every candidate trained (in the order they ran), the chosen one, and how it was chosen."""

    candidates: list[CandidateResult]
    chosen: CandidateResult
    estimate: CostEstimate
    selection: dict[str, Any]
    dropped: list[str]
    seconds: float

    @property
    def model(self) -> BlockModel:
        assert self.chosen.model is not None
        return self.chosen.model

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable data, with its ``schema_version`` (:data:`SCHEMA_VERSION`)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "chosen": {**self.chosen.to_dict(), "reason": self.selection["reason"]},
            "candidates": [c.to_dict() for c in self.candidates],
            "estimate": self.estimate.to_dict(),
            "selection": self.selection,
            "dropped": self.dropped,
            "seconds": self.seconds,
        }

    def table(self) -> str:
        return candidate_table([c.to_dict() for c in self.candidates], self.chosen.name)


def candidate_table(rows: Sequence[Mapping[str, Any]], chosen: str | None = None) -> str:
    """The candidate rows (:meth:`CandidateResult.to_dict`) as a text table, chosen one marked.
    Each accuracy with its 95% Wilson interval (rows without one: the accuracy alone), the
    samples behind them below the table. ``cost s``: the candidate's measured device-seconds
    (training and validation audit; rows from before costs were measured show their total
    seconds)."""
    width = max([28, *(len(str(r["name"])) for r in rows)])
    head = (
        f"{'candidate':<{width}} {'val clean':>17} {'val robust':>17} {'test clean':>17} "
        f"{'test robust':>17} {'cost s':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        mark = "  <- chosen" if r["name"] == chosen else ""
        cells = " ".join(f"{_accuracy_cell(r, key):>17}" for key in _ACCURACIES)
        lines.append(
            f"{r['name']:<{width}} {cells} {r.get('cost_seconds', r['seconds']):>8.1f}{mark}"
        )
    if rows and rows[0].get("val_samples"):
        val, test = rows[0].get("val_samples"), rows[0].get("test_samples")
        lines.append(f"(in brackets: {CONFIDENCE:.0%} Wilson intervals; validation n = {val}, "
                     f"test n = {test})")  # fmt: skip
    return "\n".join(lines)


_ACCURACIES = ("val_clean", "val_robust", "test_clean", "test_robust")


def _accuracy_cell(row: Mapping[str, Any], key: str) -> str:
    return accuracy_cell(row[key], row.get(f"{key}_interval"))


# --------------------------------------------------------------------------- planning


def pretrained_k(description: Mapping[str, Any] | None) -> int | None:
    """The k a source was pre-trained for, from its checkpoint header (None if not recorded)."""
    training = (description or {}).get("training") or {}
    k = training.get("k")
    if training.get("kind") == "pretrain" and isinstance(k, int) and not isinstance(k, bool):
        return k
    return None


def _has_parameters(module: torch.nn.Module) -> bool:
    return any(p.numel() for p in module.parameters())


def _resolved_ks(model: BlockModel, config: CompareConfig, centre: int | None) -> tuple[int, ...]:
    blocks = model.num_blocks
    if config.ks is not None:
        bad = [k for k in config.ks if not 1 <= k <= blocks]
        if bad:
            raise ConfigError(
                f"k={bad[0]} is out of range: {model.spec.arch} has {blocks} blocks, so every k "
                f"must be between 1 and {blocks}",
                field="ks",
            )
        return config.ks
    centre = min(max(centre if centre is not None else TransferConfig().k, 1), blocks)
    ks: list[int] = []
    for offset in COMPARE_K_OFFSETS:
        k = centre + offset
        # A k whose first tuned block has no weights (a pooling block) tunes exactly what k - 1
        # tunes: the same candidate again.
        if 1 <= k <= blocks and k not in ks and _has_parameters(model.blocks[blocks - k]):
            ks.append(k)
    return tuple(ks) or (1,)


def plan_candidates(
    model: BlockModel, config: CompareConfig, centre_k: int | None = None
) -> tuple[list[Candidate], list[Candidate]]:
    """The candidates to train, in priority order, and those beyond ``max_candidates``.

    Priority: position of k in the k list, then of beta in its list, then of the BN preset in its
    list, then of the method in ``methods``. Default k list: ``centre_k`` (else
    ``TransferConfig().k``) plus ``COMPARE_K_OFFSETS``, within 1..T, without k values whose first
    tuned block has no parameters; the methods of ``COMPARE_CENTRE_K_ONLY`` (adversarial and
    TRADES fine-tuning, several times the others' cost) get its first k only.
    """
    ranked: list[tuple[tuple[int, int, int, int], Candidate]] = []
    for ki, k in enumerate(_resolved_ks(model, config, centre_k)):
        for mi, method in enumerate(config.methods):
            if ki > 0 and config.ks is None and method in COMPARE_CENTRE_K_ONLY:
                continue
            for bi, beta in enumerate(config.betas_for(method)):
                for ni, preset in enumerate(config.bn_presets_for(method)):
                    ranked.append(((ki, bi, ni, mi), Candidate(method, k, beta, preset)))
    ranked.sort(key=lambda r: r[0])
    ordered = [c for _, c in ranked]
    return ordered[: config.max_candidates], ordered[config.max_candidates :]


def _check_candidates(model: BlockModel, data: Dataset, plan: Sequence[Candidate]) -> None:
    """What would stop a candidate, found before the first one trains."""
    model.check_input(data.input_shape[0])
    for cand in plan:
        if cand.method in ("neft", "cartl") and not model.residual_scalable:
            raise ConfigError(
                f"{model.spec.arch} has residual sums that cannot be rescaled, which neft and "
                "cartl need; leave them out of methods",
                field="methods",
            )


# --------------------------------------------------------------------------- the split


#: The most of the training split ``min_samples`` may hold out: the chosen candidate is the
#: model trained on the rest (it is not trained again on everything), so every image held out
#: is one it never learns from. On the demo's digits target (448 training images), one run
#: holding out 45% (200) left cartl-k3-b0.4-frozen at 0.886 test clean accuracy against 0.926
#: with 20% (89) in the README's run (thread counts alone move it a few points).
MAX_VAL_SHARE = 1 / 3


@dataclass(frozen=True)
class HeldOut:
    """Indices into the target's training split: what candidates train on, what chooses."""

    train: torch.Tensor
    val: torch.Tensor

    @property
    def fraction(self) -> float:
        """The share of the training images held out (``val_fraction``, or more to reach
        ``min_val_samples``)."""
        return len(self.val) / max(1, len(self.val) + len(self.train))


def validation_split(
    labels: torch.Tensor, fraction: float, seed: int, min_samples: int = 0
) -> HeldOut:
    """Hold out ``fraction`` of each class (rounded, at least one image, and at least one left
    to train on; a class with a single image only trains), drawn with ``seed``.

    ``min_samples``: where ``fraction`` holds out fewer images than this, a larger share is
    held out, to reach ``min_samples`` in all but never more than :data:`MAX_VAL_SHARE` of the
    images; it is spread over the classes in proportion to their sizes (largest remainders), so
    the split stays stratified. A fraction that already reaches it gives exactly the split it
    gives alone.
    """
    labels = labels.cpu()
    classes = [(labels == c).nonzero().squeeze(1) for c in torch.unique(labels, sorted=True)]
    sizes = [len(idx) for idx in classes]
    counts = [min(n - 1, max(1, round(fraction * n))) for n in sizes]
    target = min(min_samples, math.floor(MAX_VAL_SHARE * len(labels)))
    if sum(counts) < target:
        counts = _spread(target, sizes)
    g = torch.Generator().manual_seed(seed)
    parts = []
    for idx, n_val in zip(classes, counts, strict=True):
        if n_val > 0:
            parts.append(idx[torch.randperm(len(idx), generator=g)[:n_val]])
    if not parts:
        raise ConfigError(
            "no class has two training images, so none can be held out for validation",
            field="val_fraction",
        )
    val = torch.cat(parts).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return HeldOut(keep.nonzero().squeeze(1), val)


def _spread(total: int, sizes: Sequence[int]) -> list[int]:
    """``total`` held-out images over classes of ``sizes``, in proportion (largest remainders),
    each class keeping at least one to train on and giving at least one where it has two."""
    n = sum(sizes)
    quotas = [total * s / n for s in sizes]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(sizes)), key=lambda i: counts[i] - quotas[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return [min(s - 1, max(1, c)) for s, c in zip(sizes, counts, strict=True)]


# --------------------------------------------------------------------------- the choice

#: How candidates whose training costs lie within this factor of each other count as equally
#: cheap (the grid's order decides between them): timings on a shared machine vary.
COST_TIE = 1.25

#: The rule, as every output states it (``{tie}`` and ``{confidence}`` filled in).
RULE = (
    "paired, on the same validation images: candidates in order of preference (the least "
    "training work first: forward-backward passes, 1 + PGD steps per batch; within {tie:g}x "
    "counting as equal, and then the grid's order); a candidate is left out when its validation "
    "clean accuracy is below the best candidate's by more than max_clean_drop beyond noise; the "
    "first candidate left is kept unless others are more robust on validation beyond noise "
    "(exact McNemar test on the images the two disagree on, one-sided at {confidence:.0%}, Holm-"
    "corrected over the comparisons), in which case the most robust of those is chosen (ties: "
    "higher validation clean, then preference)"
)


@dataclass(frozen=True)
class Choice:
    """What :func:`choose_candidate` decided and why; every index is into its inputs.

    ``order``: the candidates by preference (``preference`` says by what: ``cost`` or
    ``grid``). ``left_out``: those whose clean accuracy is below the cleanest candidate's
    (``cleanest``) by more than the allowed drop beyond noise, each ``{index, drop,
    drop_low}`` (the observed drop and its one-sided lower bound). ``preferred``: the first
    candidate in ``order`` not left out. ``comparisons``: each other eligible candidate
    against it, ``{index, wins, losses, p_value, better, resolvable}`` (images only it / only
    the preferred one kept robust; the exact one-sided p-value; better beyond noise after Holm;
    the smallest difference in robust accuracy, as a fraction of the ``samples``, that its
    discordant images could have shown at the strictest Holm level, None where none could).
    """

    index: int
    preferred: int
    order: list[int]
    preference: str
    cleanest: int
    eligible: list[int]
    left_out: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    samples: int
    confidence: float

    @property
    def resolved(self) -> bool:
        """Whether another candidate beat the preferred one beyond noise."""
        return self.index != self.preferred

    @property
    def resolution(self) -> float | None:
        """About the smallest difference in validation robust accuracy these comparisons could
        tell from noise: the median over the comparisons that could tell any (None: none)."""
        sizes = sorted(c["resolvable"] for c in self.comparisons if c["resolvable"] is not None)
        return sizes[len(sizes) // 2] if sizes else None


def choose_candidate(
    clean: Sequence[Sequence[bool]],
    robust: Sequence[Sequence[bool]],
    max_clean_drop: float,
    *,
    confidence: float = 0.95,
    costs: Sequence[float | None] | None = None,
) -> Choice:
    """Choose among candidates from their per-sample validation flags (clean-correct, robust
    under the selection ensemble), every candidate measured on the same images. See
    :data:`RULE`; the steps:

    1. Preference: by ``costs`` (compare passes each candidate's training work) where every
       candidate has one, cheapest first, costs within :data:`COST_TIE` of the cheapest of
       their group counting as equal; otherwise (and within a group) the order given (the
       grid's priority).
    2. Clean accuracy: the cleanest candidate C (highest validation clean accuracy; ties: the
       preferred) is compared with each other on the images only one of the two classifies
       right; conditioning on their number s, the count only C gets right is binomial, and
       the drop's one-sided lower bound at ``confidence`` is s / n * (2 * w - 1), w the Wilson
       lower bound of that count's share. A candidate whose lower bound exceeds
       ``max_clean_drop`` is left out.
    3. Robust accuracy: the first remaining candidate in preference order is kept unless
       another beats it beyond noise: the exact one-sided McNemar test (sign test on the
       images only one of the two keeps robust), Holm-corrected at 1 - ``confidence`` over the
       comparisons. Among those that beat it, the most robust on validation is chosen (ties:
       higher validation clean accuracy, then preference).
    """
    count = len(clean)
    if not count or len(robust) != count:
        raise ConfigError("choosing needs clean and robust flags for every candidate")
    n = len(clean[0])
    if any(len(f) != n for f in (*clean, *robust)):
        raise ConfigError("choosing needs every candidate's flags on the same validation images")
    order, preference = _preference(count, costs)
    rank = {i: r for r, i in enumerate(order)}
    correct = [sum(f) for f in clean]
    cleanest = max(range(count), key=lambda i: (correct[i], -rank[i]))
    left_out = []
    for i in range(count):
        drop, low = _clean_drop(clean[cleanest], clean[i], confidence)
        if low > max_clean_drop + 1e-9:
            left_out.append({"index": i, "drop": drop, "drop_low": low})
    out = {d["index"] for d in left_out}
    eligible = [i for i in order if i not in out]  # the cleanest is never left out
    preferred = eligible[0]
    challengers = eligible[1:]
    alpha = 1 - confidence
    tested: list[dict[str, Any]] = []
    for i in challengers:
        wins, losses = discordant(robust[i], robust[preferred])
        margin = min_resolvable(wins + losses, alpha / max(1, len(challengers)))
        tested.append(
            {"index": i, "wins": wins, "losses": losses, "p_value": sign_test(wins, losses),
             "resolvable": None if margin is None else margin / max(1, n)}
        )  # fmt: skip
    better = holm([t["p_value"] for t in tested], alpha)
    for t, b in zip(tested, better, strict=True):
        t["better"] = b
    winners: list[int] = [t["index"] for t in tested if t["better"]]
    robust_n = [sum(f) for f in robust]
    index = (
        max(winners, key=lambda i: (robust_n[i], correct[i], -rank[i])) if winners else preferred
    )
    return Choice(
        index=index, preferred=preferred, order=order, preference=preference,
        cleanest=cleanest, eligible=sorted(eligible), left_out=left_out, comparisons=tested,
        samples=n, confidence=confidence,
    )  # fmt: skip


def _preference(count: int, costs: Sequence[float | None] | None) -> tuple[list[int], str]:
    """Candidate indices by preference, and what set it (``cost`` or ``grid``)."""
    known = costs is not None and len(costs) == count and all(c and c > 0 for c in costs)
    if not known:
        return list(range(count)), "grid"
    assert costs is not None
    by_cost = sorted(range(count), key=lambda i: (costs[i], i))
    order: list[int] = []
    while len(order) < count:
        rest = [i for i in by_cost if i not in order]
        cheapest = costs[rest[0]]
        assert cheapest is not None
        # One group: everything within COST_TIE of its cheapest, in the grid's order.
        order.extend(sorted(i for i in rest if cast(float, costs[i]) <= COST_TIE * cheapest))
    return order, "cost"


def _clean_drop(
    best: Sequence[bool], other: Sequence[bool], confidence: float
) -> tuple[float, float]:
    """How far ``other``'s clean accuracy lies below ``best``'s: observed, and its one-sided
    lower bound at ``confidence`` given the images only one of them classifies right."""
    n = max(1, len(best))
    only_best, only_other = discordant(best, other)
    s = only_best + only_other
    if s == 0:
        return 0.0, 0.0
    # The two-sided interval at 2c - 1 has the one-sided bound at c as its lower end.
    low_share, _ = wilson_interval(only_best, s, 2 * confidence - 1)
    return (only_best - only_other) / n, s / n * (2 * low_share - 1)


# --------------------------------------------------------------------------- cost


def _duration(seconds: float) -> str:
    """As :func:`format_duration`, with a tenth of a second below 10 s (a small comparison's
    candidates cost a few seconds each)."""
    return f"{seconds:.1f} s" if seconds < 10 else format_duration(seconds)


def _device_name(device: torch.device) -> str:
    """What a cost was measured on: the GPU's name, or the CPU with its thread count (the
    seconds of a CPU run scale with it)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device.type}, {torch.get_num_threads()} threads"


def _batch(split: Split, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    part = split.subset(torch.arange(min(n, len(split)), device=split.images.device))
    x = part.float_images().contiguous(memory_format=torch.channels_last)
    return x, part.labels


def _target_model(source: BlockModel, classes: int, device: torch.device) -> BlockModel:
    """A copy of ``source`` on ``device`` with a classifier for the target's classes."""
    model = copy.deepcopy(source)
    prepare_model(model, device)
    model.reset_classifier(classes)
    return model


def _train_batch_seconds(
    source: BlockModel,
    x: torch.Tensor,
    y: torch.Tensor,
    tc: TransferConfig,
    classes: int,
    augmentation: Augmentation,
    shared: bool = False,
) -> float:
    """One training step as the candidate takes it: its augmentation, spectral normalisation
    (one power iteration per step), BN preset, trainable parameters and, for adversarial
    fine-tuning (and TRADES), the training's own step with its PGD examples; ``shared``: on the
    frozen part's features, through the tuned part alone. lr 0 changes nothing."""
    model = _target_model(source, classes, x.device)
    k = tc.k
    if shared:
        with torch.no_grad(), autocast(x.device):
            model.eval()
            x = model.frozen_part(x, k)
    beta = tc.resolved_norm_beta()
    if beta is not None:
        tuned = range(model.num_blocks - k, model.num_blocks)
        model.set_residual_scale(tc.resolved_residual_scale(), tuned)
        apply_spectral_norm(
            model.tuned_modules(k), beta, tc.spectral_mode, tc.power_iterations,
            tc.spectral_estimate,
        )  # fmt: skip
    policy = tc.resolved_bn()
    bn_policy.set_trainable(model, k, policy)
    bn_policy.set_modes(model, k, policy)
    if tc.method == "lwf" and tc.lwf.tune == "all":
        # Most of LwF's epochs come after the head-only ones and train the whole model.
        model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)
    generator = torch.Generator(device=x.device).manual_seed(0)
    attack = tc.resolved_attack()
    adversarial = None
    if attack is not None and tc.method == "trades":
        adversarial = trades_step(model, optimizer, k, policy, attack, tc.trades_beta)
    elif attack is not None:
        adversarial = adversarial_step(model, optimizer, k, policy, attack)

    def step() -> None:
        if shared:
            with autocast(x.device):
                logits = model.tuned_part(x, k)
        else:
            xb = augment(x, augmentation, generator).contiguous(memory_format=torch.channels_last)
            if adversarial is not None:
                adversarial(xb, y)
                return
            with autocast(x.device):
                logits = model(xb)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed(step, x.device)


def _eval_batch_seconds(model: BlockModel, x: torch.Tensor) -> float:
    def step() -> None:
        with torch.no_grad(), autocast(x.device):
            model(x)

    was_training = model.training
    model.eval()
    try:
        return timed(step, x.device)
    finally:
        model.train(was_training)


def _attack_batch_seconds(model: BlockModel, x: torch.Tensor, y: torch.Tensor) -> float:
    def step() -> None:
        xa = x.clone().requires_grad_(True)
        with autocast(x.device):
            logits = model(xa)
        torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), xa)

    with frozen_for_attack(model):
        return timed(step, x.device)


def estimate_cost(
    source: BlockModel,
    plan: Sequence[Candidate],
    config: CompareConfig,
    *,
    train: Split,
    audited: int,
    num_classes: int,
    audit: AuditConfig,
    evaluated: int = 0,
    share_features: bool = True,
    processes: int = 1,
) -> CostEstimate:
    """Measured per-batch costs times the planned batches (see :class:`CostEstimate`), timed on
    copies of ``source`` on the device ``train`` is on; ``audited`` is the number of samples each
    candidate's audits attack (validation plus test), ``evaluated`` the number the end of every
    training epoch classifies (the validation split)."""
    with torch.random.fork_rng(devices=[]):  # timing must not move the caller's random stream
        augmentation = Augmentation.from_name(config.augmentation, tuple(train.images.shape[1:]))  # type: ignore[arg-type]
        train_s: dict[tuple[Any, ...], float] = {}
        keys = []
        not_shared: dict[str, str] = {}
        room = _feature_room(train.images.device)
        fits: dict[int, bool] = {}
        for cand in plan:
            tc = cand.transfer_config(config)
            bs = tc.resolved_schedule().batch_size
            why = shares_frozen_part(tc, augmentation) if share_features else "not asked to"
            if why is None and processes > 1:
                why = f"its training runs on {processes} processes, each of its own rows"
            if why is None and cand.k not in fits:
                fits[cand.k] = _feature_bytes(source, train, cand.k) <= room
            if why is None and not fits[cand.k]:
                why = f"its features of {len(train)} images would not fit in memory"
            if why is not None:
                not_shared[cand.name] = why
            # What a step costs depends on these, not on beta's value or the lr.
            key = (cand.k, bs, tc.uses_spectral_norm, tc.resolved_bn_name(), cand.method == "lwf",
                   tc.resolved_attack(), cand.method == "trades", why is None)  # fmt: skip
            keys.append(key)
            if key not in train_s:
                x, y = _batch(train, bs)
                # Per sample: a batch larger than the data is timed on all of it.
                seconds = _train_batch_seconds(
                    source, x, y, tc, num_classes, augmentation, shared=why is None
                )
                train_s[key] = seconds / len(y) * bs
        x, y = _batch(train, audit.batch_size)
        attacked = _target_model(source, num_classes, x.device)
        attack_per_sample = _attack_batch_seconds(attacked, x, y) / len(y)
        eval_per_sample = _eval_batch_seconds(attacked, x) / len(y)
    targets = min(audit.apgd_targets, num_classes - 1)
    # APGD-CE, then APGD-T once per target class, every step on every sample.
    passes = audit.apgd_steps * audit.apgd_restarts * (1 + targets)
    rows: list[dict[str, Any]] = []
    featured: set[int] = set()
    for cand, key in zip(plan, keys, strict=True):
        s = config.schedule_for(cand.method)
        batches = s.epochs * math.ceil(len(train) / s.batch_size)
        train_seconds = batches * train_s[key] + s.epochs * evaluated * eval_per_sample
        shares = cand.name not in not_shared
        if shares and cand.k not in featured:
            # The first candidate of a k computes its features (at most a whole forward pass).
            featured.add(cand.k)
            train_seconds += len(train) * eval_per_sample
        # The validation split is the ``evaluated`` samples; the rest of ``audited`` is the test.
        val_audit = evaluated * passes * attack_per_sample
        rows.append(
            {
                "name": cand.name,
                "train_batches": batches,
                "train_seconds": train_seconds,
                "audit_seconds_max": audited * passes * attack_per_sample,
                "val_audit_seconds_max": val_audit,
                "cost_seconds": train_seconds + val_audit,
                "shares_features": shares,
            }
        )
    return CostEstimate(
        candidates=len(plan),
        train_seconds=sum(r["train_seconds"] for r in rows),
        audit_seconds_max=sum(r["audit_seconds_max"] for r in rows),
        per_candidate=rows,
        device=_device_name(train.images.device),
        resample=source.spec.describe_resample(),
        not_shared=not_shared,
    )


def _feature_bytes(source: BlockModel, split: Split, k: int) -> int:
    """What the frozen part's features of every image of ``split`` take (one image's, run)."""
    model = copy.deepcopy(source).eval()
    x = split.subset(torch.arange(1)).float_images().cpu()
    with torch.no_grad():
        one = model.cpu().frozen_part(x, k)
    # The training stores them as its forward pass makes them: bf16 on CUDA (autocast).
    size = 2 if split.images.device.type == "cuda" else one.element_size()
    return len(split) * one[0].numel() * size


def _feature_room(device: torch.device) -> int:
    """The most the shared features may take: a quarter of the GPU's memory; 4 GiB on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory // 4)
    return 4 * 1024**3


# --------------------------------------------------------------------------- the run


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


@dataclass
class _Run:
    """One comparison's shared state: data on the device, audit settings, callbacks."""

    source: BlockModel
    fit_data: Dataset
    test: Split
    config: CompareConfig
    audit: AuditConfig
    device: torch.device
    seed: int
    total: int
    started: float
    out_dir: Path | None
    fingerprint: dict[str, Any]
    on_progress: CompareProgressFn | None
    should_stop: StopFn | None
    #: The candidates that compute the frozen part in every batch (the estimate decided which).
    not_shared: dict[str, str] = field(default_factory=dict)
    #: The frozen part's features of the training images, by k.
    features: dict[int, torch.Tensor] = field(default_factory=dict)
    processes: int = 1

    def shared_features(self, cand: Candidate) -> torch.Tensor | None:
        """The frozen part's features of the training images for ``cand``'s k, computed at the
        first candidate that uses them; None for a candidate that does not share."""
        if cand.name in self.not_shared:
            return None
        if cand.k not in self.features:
            self.features[cand.k] = frozen_features(
                self.source, self.fit_data.train, cand.k, device=self.device
            )
        return self.features[cand.k]

    def emit(self, stage: str, index: int, name: str, **kw: Any) -> None:
        if self.on_progress is not None:
            elapsed = time.monotonic() - self.started
            self.on_progress(CompareEvent(stage, index, self.total, name, elapsed, **kw))

    def stop_requested(self, what: str) -> None:
        if self.should_stop is not None and self.should_stop():
            raise CancelledError(f"compare cancelled before {what}")

    def candidate(self, index: int, cand: Candidate) -> CandidateResult:
        path = None if self.out_dir is None else self.out_dir / f"{cand.name}.safetensors"
        tc = cand.transfer_config(self.config)
        fingerprint = _jsonable({**self.fingerprint, "candidate": cand.name, **tc.to_dict()})
        if path is not None:
            reused = _reuse(path, cand, fingerprint)
            if reused is not None:
                return self._with_flags(reused, index)
        t0 = time.monotonic()
        state = None if path is None else path.with_name(path.name + ".state")
        # Inside this candidate's time: the first that computes the features pays for them.
        features = self.shared_features(cand)
        trained = transfer(
            self.source,
            self.fit_data,
            tc,
            device=self.device,
            seed=self.seed,
            features=features,
            state_path=state,
            on_progress=lambda ev: self.emit("train", index, cand.name, training=ev),
            should_stop=self.should_stop,
            processes=self.processes,
        )
        model = trained.model
        synchronize(self.device)
        # A resumed candidate's earlier epochs were paid for too: their recorded seconds count.
        train_seconds = max(time.monotonic() - t0, sum(r.seconds for r in trained.history))
        t1 = time.monotonic()
        val = self._audit(model, self.fit_data.test, "audit-val", index, cand.name)
        synchronize(self.device)
        audit_seconds = time.monotonic() - t1
        test = self._audit(model, self.test, "audit-test", index, cand.name)
        history = [_val_names(r.to_dict()) for r in trained.history]
        result = CandidateResult(
            name=cand.name, method=cand.method, k=cand.k, norm_beta=cand.norm_beta, bn=cand.bn,
            val_clean=val[0], val_robust=val[1], test_clean=test[0], test_robust=test[1],
            seconds=time.monotonic() - t0, path=path, history=history,
            training={**trained.training, "compare": fingerprint}, model=model,
            train_seconds=train_seconds, audit_seconds=audit_seconds,
            device=_device_name(self.device),
            val_samples=val.samples, test_samples=test.samples, val_clean_flags=val.clean_flags,
            val_robust_flags=val.robust_flags,
        )  # fmt: skip
        if path is not None:
            save_checkpoint(
                model,
                path,
                class_names=self.fit_data.class_names,
                training=result.training,
                metrics=_candidate_metrics(result, self.audit),
            )
            result.sha256 = sha256_file(path)
            if state is not None:
                state.unlink(missing_ok=True)
        model.to("cpu")
        return result

    def _with_flags(self, reused: CandidateResult, index: int) -> CandidateResult:
        """A reused candidate with its sample counts, and its validation flags: a file written
        before they were recorded has its validation audit run again (seeded as the first run
        seeded it, so the same numbers on the same device); its weights are still reused."""
        reused.val_samples, reused.test_samples = len(self.fit_data.test), len(self.test)
        if reused.val_clean_flags and reused.val_robust_flags:
            return reused
        assert reused.model is not None
        prepare_model(reused.model, self.device)
        val = self._audit(reused.model, self.fit_data.test, "audit-val", index, reused.name)
        reused.model.to("cpu")
        reused.val_clean, reused.val_robust = val.clean, val.robust
        reused.val_clean_flags, reused.val_robust_flags = val.clean_flags, val.robust_flags
        return reused

    def _audit(
        self, model: BlockModel, split: Split, stage: str, index: int, name: str
    ) -> _Measured:
        self.stop_requested(f"the {stage} of {name}")

        def progress(event: AuditEvent) -> None:
            if event.attack:  # the first event only carries the audit's estimate
                self.emit(stage, index, name, attack=event.attack, done=event.done,
                          total=event.total)  # fmt: skip

        # The same attack randomness for every candidate: differences are the models'.
        torch.manual_seed(self.seed)
        with stop_when(self.should_stop):
            result = run_ensemble(
                model, split, self.audit, on_progress=progress, processes=self.processes
            )
        assert result.clean is not None
        return _Measured(
            result.clean_accuracy,
            result.robust_accuracy,
            pack_flags(result.clean.tolist()),
            pack_flags(result.robust.tolist()),
            result.samples,
        )


class _Measured(NamedTuple):
    """One split's audit of a candidate: its accuracies, first, as a pair, then the packed
    per-sample flags behind them."""

    clean: float
    robust: float
    clean_flags: str
    robust_flags: str
    samples: int


def _val_names(record: dict[str, Any]) -> dict[str, Any]:
    """Candidates are evaluated each epoch on the validation split, not the test split."""
    if "test_accuracy" in record:
        record["val_accuracy"] = record.pop("test_accuracy")
    return record


def _candidate_metrics(result: CandidateResult, audit: AuditConfig) -> dict[str, Any]:
    return {
        # The header's headline is the test split's, as for any checkpoint, here with the
        # ``fast`` ensemble (named in ``ensemble``).
        "clean_accuracy": result.test_clean,
        "robust_accuracy": result.test_robust,
        "ensemble": audit.attacks,
        "eps": audit.eps[0],
        "norm": audit.norm,
        "val_clean": result.val_clean,
        "val_robust": result.val_robust,
        "test_clean": result.test_clean,
        "test_robust": result.test_robust,
        "seconds": result.seconds,
        "train_seconds": result.train_seconds,
        "audit_seconds": result.audit_seconds,
        "device": result.device,
        "val_samples": result.val_samples,
        "test_samples": result.test_samples,
        # Packed bits (a few hundred characters): what a rerun's paired choice compares.
        "val_clean_flags": result.val_clean_flags,
        "val_robust_flags": result.val_robust_flags,
        "history": result.history,
    }


def _reuse(path: Path, cand: Candidate, fingerprint: dict[str, Any]) -> CandidateResult | None:
    """The candidate an earlier run with the same settings and data wrote, or None."""
    if not path.is_file():
        return None
    description = read_description(path)
    if description is None or description.get("training", {}).get("compare") != fingerprint:
        return None
    m = description.get("metrics", {})
    return CandidateResult(
        name=cand.name, method=cand.method, k=cand.k, norm_beta=cand.norm_beta, bn=cand.bn,
        val_clean=float(m["val_clean"]), val_robust=float(m["val_robust"]),
        test_clean=float(m["test_clean"]), test_robust=float(m["test_robust"]),
        seconds=float(m.get("seconds", 0.0)), path=path, sha256=sha256_file(path), reused=True,
        history=list(m.get("history", [])), training=dict(description["training"]),
        model=load_model(path),
        # What its first run measured (files written before costs were recorded: 0, unknown).
        train_seconds=float(m.get("train_seconds", 0.0)),
        audit_seconds=float(m.get("audit_seconds", 0.0)), device=str(m.get("device", "")),
        # Files written before flags were recorded have none: the run audits validation again.
        val_clean_flags=str(m.get("val_clean_flags", "")),
        val_robust_flags=str(m.get("val_robust_flags", "")),
    )  # fmt: skip


def compare(
    source: BlockModel,
    data: Dataset,
    config: CompareConfig | None = None,
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
    centre_k: int | None = None,
    out_dir: str | Path | None = None,
    on_progress: CompareProgressFn | None = None,
    should_stop: StopFn | None = None,
    share_features: bool = True,
    processes: int = 1,
) -> CompareResult:
    """Train the planned candidates of ``source`` on ``data``, audit them, choose one.

    Candidates whose frozen part is fixed (clean fine-tuning with the source's BatchNorm
    statistics in it, and images not augmented per batch: :func:`shares_frozen_part`) train on
    its features of the training images, computed once per k, with the same numbers;
    ``share_features=False`` computes them again in every batch of every candidate, as separate
    transfers do. The estimate says which candidates share and why the others cannot.

    ``centre_k``: the k the default k list is centred on, normally the k the source was
    pre-trained for (:func:`pretrained_k` of its checkpoint header). ``out_dir``: where each
    candidate's weights go as ``NAME.safetensors`` (an earlier run's matching files there are
    reused). ``on_progress`` gets a :class:`CompareEvent` with the cost estimate before anything
    trains, then one per training and audit step of each candidate. ``source`` is left untouched;
    every candidate's model comes back on the CPU, the chosen one as ``result.model``.

    ``processes``: each candidate's training and audits run data-parallel on that many
    processes (GPUs ``cuda:0..``, or CPU processes), with the numbers of one; the frozen
    features are then not shared (they are computed on one process).
    """
    config = config or CompareConfig()
    started = time.monotonic()
    Augmentation.from_name(config.augmentation, data.input_shape)  # fails now, not at candidate 1
    dev = resolve_device(device)
    plan, dropped = plan_candidates(source, config, centre_k)
    _check_candidates(source, data, plan)
    held = validation_split(data.train.labels, config.val_fraction, seed, config.min_val_samples)
    # One copy of the data on the device: every candidate's loader and audits index it in place.
    fit_data = Dataset(
        data.train.subset(held.train).to(dev),
        data.train.subset(held.val).to(dev),
        data.class_names,
        data.format,
    )
    test = data.test.to(dev)
    audit = AuditConfig(eps=(config.eps,), norm=config.norm, attacks=SELECTION_ATTACKS)
    estimate = estimate_cost(
        source,
        plan,
        config,
        train=fit_data.train,
        audited=len(fit_data.test) + len(test),
        num_classes=data.num_classes,
        audit=audit,
        evaluated=len(fit_data.test),
        share_features=share_features,
        processes=processes,
    )
    default = config.max_cost_seconds is None and dev.type == "cpu"
    budget = CPU_MAX_COST_SECONDS if default else config.max_cost_seconds
    plan, estimate = _fit_budget(plan, estimate, budget, default=default)
    estimate = replace(estimate, beyond_max_candidates=[c.name for c in dropped])
    run = _Run(
        source=source, fit_data=fit_data, test=test, config=config, audit=audit, device=dev,
        seed=seed, total=len(plan), started=started,
        out_dir=None if out_dir is None else Path(out_dir),
        fingerprint={**_fingerprint(data, held, config, seed, audit), **_source_fingerprint(source)}
        if out_dir is not None
        else {},
        on_progress=on_progress, should_stop=should_stop, not_shared=estimate.not_shared,
        processes=processes,
    )  # fmt: skip
    run.emit("estimate", 0, plan[0].name, estimate=estimate)
    results = []
    for i, cand in enumerate(plan):
        run.stop_requested(f"candidate {cand.name}")
        result = run.candidate(i, cand)
        results.append(result)
        run.emit("candidate-done", i, cand.name, result=result)
    flags = [r.flags() for r in results]
    choice = choose_candidate(
        [clean for clean, _ in flags],
        [robust for _, robust in flags],
        config.max_clean_drop,
        confidence=config.confidence,
        costs=_training_work(plan, config, len(fit_data.train)),
    )
    return CompareResult(
        candidates=results,
        chosen=results[choice.index],
        estimate=estimate,
        selection=_selection(results, choice, config, held, audit),
        dropped=[c.name for c in dropped] + [d["name"] for d in estimate.over_budget],
        seconds=time.monotonic() - started,
    )


def _training_work(
    plan: Sequence[Candidate], config: CompareConfig, samples: int
) -> list[float | None]:
    """What each candidate costs to train, the preference's key: its forward-backward passes
    over a batch (epochs x batches, times 1 + the PGD steps of a training attack). Counted, not
    timed: timings on a shared machine moved standard and CARTL candidates past each other from
    one run to its rerun, and a choice must not depend on them. The measured seconds are shown
    beside it (``train_seconds``); compare's own audits are not a cost of the method."""
    work: list[float | None] = []
    for cand in plan:
        tc = cand.transfer_config(config)
        schedule = tc.resolved_schedule()
        attack = tc.resolved_attack()
        passes = 1 + (attack.steps if attack is not None else 0)
        work.append(float(schedule.epochs * math.ceil(samples / schedule.batch_size) * passes))
    return work


def _fit_budget(
    plan: list[Candidate], estimate: CostEstimate, budget: float | None, *, default: bool = False
) -> tuple[list[Candidate], CostEstimate]:
    """The candidates whose estimated cost fits ``budget`` (see
    :meth:`CostEstimate.within_budget`), and the estimate that says what was dropped;
    ``default``: the budget is the device's, not one the run named."""
    if budget is None:
        return plan, estimate
    fitted = replace(estimate.within_budget(budget), budget_default=default)
    if not fitted.per_candidate:
        cheapest = min(estimate.per_candidate, key=lambda r: r["cost_seconds"])
        which = " (the default on a CPU)" if default else ""
        raise ConfigError(
            f"no candidate fits max_cost {_duration(budget)}{which}: the cheapest, "
            f"{cheapest['name']}, is estimated at {_duration(cheapest['cost_seconds'])} of "
            "training and validation audit; raise max_cost or lower epochs",
            field="max_cost_seconds",
        )
    kept = {r["name"] for r in fitted.per_candidate}
    return [c for c in plan if c.name in kept], fitted


def _fingerprint(
    data: Dataset, held: HeldOut, config: CompareConfig, seed: int, audit: AuditConfig
) -> dict[str, Any]:
    """What must match for a candidate file of an earlier run to be reused: the data and split,
    and the attacks that measured it (their settings, and the revision of their code)."""
    return {
        "seed": seed,
        "eps": config.eps,
        "norm": config.norm,
        "val_fraction": config.val_fraction,
        "audit": audit.to_dict(),
        "attacks_revision": ATTACKS_REVISION,
        "data": _digest(data.train.images, data.train.labels, data.test.images, data.test.labels),
        "val": _digest(held.val),
    }


def _source_fingerprint(source: BlockModel) -> dict[str, Any]:
    """How the source resamples the data, where it does: a candidate trained through another
    resampling (method or size) is another model. Empty otherwise, so files written before
    resampling existed still match."""
    resample = source.spec.describe_resample()
    return {} if resample is None else {"resample": resample}


def _selection(
    results: Sequence[CandidateResult],
    choice: Choice,
    config: CompareConfig,
    held: HeldOut,
    audit: AuditConfig,
) -> dict[str, Any]:
    """How the choice was made, in plain data: the rule, its confidence, the validation size,
    the preference order, every paired comparison, and a sentence (``reason``) that says it."""
    n = len(held.val)
    names = [r.name for r in results]
    pick, preferred = results[choice.index], results[choice.preferred]
    comparisons = [
        {**{k: v for k, v in c.items() if k != "index"}, "name": names[c["index"]],
         "val_robust_difference": results[c["index"]].val_robust - preferred.val_robust}
        for c in choice.comparisons
    ]  # fmt: skip
    return {
        "rule": RULE.format(tie=COST_TIE, confidence=config.confidence),
        "confidence": config.confidence,
        "test": "exact McNemar (one-sided sign test on the discordant validation images), "
        "Holm-corrected over the comparisons",
        "interval": interval_text(n),
        "reason": _reason(results, choice, config, n),
        "preference": choice.preference,
        "order": [names[i] for i in choice.order],
        "preferred": preferred.name,
        "resolved": choice.resolved,
        "resolution": choice.resolution,
        "val_half_width": max_half_width(n),
        "comparisons": comparisons,
        "eligible": [names[i] for i in choice.eligible],
        "left_out": [
            {"name": names[d["index"]], "drop": d["drop"], "drop_low": d["drop_low"]}
            for d in choice.left_out
        ],
        "cleanest": names[choice.cleanest],
        "best_val_clean": results[choice.cleanest].val_clean,
        "max_clean_drop": config.max_clean_drop,
        "val_fraction": config.val_fraction,
        "min_val_samples": config.min_val_samples,
        "held_out_fraction": held.fraction,
        "val_samples": n,
        "train_samples": len(held.train),
        "chosen_val_robust_interval": accuracy_interval(pick.val_robust, n),
        "ensemble": audit.attacks,
        "eps": audit.eps[0],
        "norm": audit.norm,
    }


def _why_preferred(choice: Choice) -> str:
    """Why the preferred candidate comes first: its training work, the grid's order, or both."""
    if choice.preference != "cost":
        return "first in the grid's order"
    if choice.preferred != min(choice.eligible):
        return "the least training work"
    return "the least training work, first in the grid's order"


def _points(fraction: float) -> str:
    return f"{100 * fraction:.1f} points"


def _reason(
    results: Sequence[CandidateResult], choice: Choice, config: CompareConfig, n: int
) -> str:
    """The choice in one sentence, with what it rests on: the rule's confidence and the
    validation size are in it, so it can stand alone."""
    pick, preferred = results[choice.index], results[choice.preferred]
    level = f"one-sided {config.confidence:.0%}, Holm over {len(choice.comparisons)}"
    why = _why_preferred(choice)
    left = (
        f"; {len(choice.left_out)} left out for clean accuracy below the best by more than "
        f"{config.max_clean_drop:g} beyond noise"
        if choice.left_out
        else ""
    )
    size = f"{n} validation images"
    if choice.resolved:
        c = next(c for c in choice.comparisons if c["index"] == choice.index)
        low, high = accuracy_interval(pick.val_robust, n)
        return (
            f"{pick.name}: validation robust {pick.val_robust:.3f} ({low:.3f}-{high:.3f}) "
            f"against {preferred.val_robust:.3f} for {preferred.name} ({why}), more robust "
            f"beyond noise on {size} (exact McNemar: {c['wins']} images against "
            f"{c['losses']}, p = {c['p_value']:.2g}; {level}){left}"
        )
    if not choice.comparisons:
        return (
            f"{pick.name} ({why}; validation robust {pick.val_robust:.3f}): no other candidate "
            f"to compare on {size}{left}"
        )
    top = max(choice.comparisons, key=lambda c: results[c["index"]].val_robust)
    diff = results[top["index"]].val_robust - preferred.val_robust
    resolution = choice.resolution
    resolves = (
        f"they resolve differences of about {_points(resolution)} here"
        if resolution is not None
        else "too few of them tell the candidates apart to resolve any difference"
    )
    largest = (
        f"the largest observed difference, {results[top['index']].name} {diff * 100:+.1f} "
        f"points (p = {top['p_value']:.2g}), is not resolved"
        if diff > 0
        else "none is more robust on validation at all"
    )
    return (
        f"{pick.name} ({why}; validation robust {pick.val_robust:.3f}): no candidate is more "
        f"robust beyond noise on {size} ({resolves}; {level}); {largest}{left}"
    )
