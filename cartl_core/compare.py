"""``compare``: train candidate transfers of one source on one target and choose one on data held
out from the target's training split.

The choice never sees the test split. A stratified, seeded ``val_fraction`` of the target's
training images is held out; every candidate (method x k x beta x BN preset, see
:class:`~cartl_core.config.CompareConfig`) is trained by :func:`cartl_core.transfer` on the rest
and audited on the held-out part with the ``fast`` ensemble (APGD-CE, APGD-T) at the comparison's
eps. The chosen candidate is the most robust on validation among those whose validation clean
accuracy is within ``max_clean_drop`` of the best candidate's; ties go to the higher validation
clean accuracy, then to the earlier candidate. Every candidate is also audited on the test split,
for the report only.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F

from cartl_core._runtime import autocast, frozen_for_attack, prepare_model, resolve_device, timed
from cartl_core._stop import stop_when
from cartl_core.audit import ATTACKS_REVISION, AuditEvent, run_ensemble
from cartl_core.checkpoints import load_model, read_description, save_checkpoint
from cartl_core.config import (
    COMPARE_K_OFFSETS,
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
from cartl_core.training import bn as bn_policy
from cartl_core.training import transfer
from cartl_core.training.loop import ProgressEvent, StopFn
from cartl_core.training.spectral import apply_spectral_norm

__all__ = [
    "SCHEMA_VERSION",
    "Candidate",
    "CandidateResult",
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
SCHEMA_VERSION = 1
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
        )


@dataclass
class CandidateResult:
    """A trained candidate: its accuracies (``fast`` ensemble at the comparison's eps) on the
    validation and the test split, the seconds it took (training and both audits), its weights
    file, per-epoch history (``val_accuracy`` is on the validation split) and the model (on the
    CPU)."""

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
            "seconds": self.seconds,
            "path": None if self.path is None else str(self.path),
            "sha256": self.sha256,
            "reused": self.reused,
        }


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
    real audits cost a fraction of it, about the robust accuracy's share.
    """

    candidates: int
    train_seconds: float
    audit_seconds_max: float
    per_candidate: list[dict[str, Any]]

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
        }

    def text(self) -> str:
        return (
            f"{self.candidates} candidates: training about {format_duration(self.train_seconds)}, "
            f"audits at most {format_duration(self.audit_seconds_max)} (less for models that break "
            "early)"
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
    """The candidate rows (:meth:`CandidateResult.to_dict`) as a text table, chosen one marked."""
    width = max([28, *(len(str(r["name"])) for r in rows)])
    head = (
        f"{'candidate':<{width}} {'val clean':>9} {'val robust':>10} {'test clean':>10} "
        f"{'test robust':>11} {'seconds':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        mark = "  <- chosen" if r["name"] == chosen else ""
        lines.append(
            f"{r['name']:<{width}} {r['val_clean']:>9.3f} {r['val_robust']:>10.3f} "
            f"{r['test_clean']:>10.3f} {r['test_robust']:>11.3f} {r['seconds']:>8.1f}{mark}"
        )
    return "\n".join(lines)


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
    tuned block has no parameters.
    """
    ranked: list[tuple[tuple[int, int, int, int], Candidate]] = []
    for ki, k in enumerate(_resolved_ks(model, config, centre_k)):
        for mi, method in enumerate(config.methods):
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


@dataclass(frozen=True)
class HeldOut:
    """Indices into the target's training split: what candidates train on, what chooses."""

    train: torch.Tensor
    val: torch.Tensor


def validation_split(labels: torch.Tensor, fraction: float, seed: int) -> HeldOut:
    """Hold out ``fraction`` of each class (rounded, at least one image, and at least one left
    to train on; a class with a single image only trains), drawn with ``seed``."""
    labels = labels.cpu()
    g = torch.Generator().manual_seed(seed)
    parts = []
    for c in torch.unique(labels, sorted=True):
        idx = (labels == c).nonzero().squeeze(1)
        n_val = min(len(idx) - 1, max(1, round(fraction * len(idx))))
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


# --------------------------------------------------------------------------- the choice


def choose_candidate(
    val_clean: Sequence[float], val_robust: Sequence[float], max_clean_drop: float
) -> int:
    """The index of the most robust candidate among those whose clean accuracy is within
    ``max_clean_drop`` of the best; ties: higher clean accuracy, then the earlier candidate."""
    if not val_clean or len(val_clean) != len(val_robust):
        raise ConfigError("choosing needs one clean and one robust accuracy per candidate")
    floor = max(val_clean) - max_clean_drop - 1e-9  # accuracies are fractions of whole samples
    eligible = [i for i, clean in enumerate(val_clean) if clean >= floor]
    return max(eligible, key=lambda i: (val_robust[i], val_clean[i], -i))


# --------------------------------------------------------------------------- cost


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
) -> float:
    """One training step as the candidate takes it: its augmentation, spectral normalisation
    (one power iteration per step), BN preset and trainable parameters; lr 0 changes nothing."""
    model = _target_model(source, classes, x.device)
    k = tc.k
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

    def step() -> None:
        xb = augment(x, augmentation, generator).contiguous(memory_format=torch.channels_last)
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
) -> CostEstimate:
    """Measured per-batch costs times the planned batches (see :class:`CostEstimate`), timed on
    copies of ``source`` on the device ``train`` is on; ``audited`` is the number of samples each
    candidate's audits attack (validation plus test), ``evaluated`` the number the end of every
    training epoch classifies (the validation split)."""
    with torch.random.fork_rng(devices=[]):  # timing must not move the caller's random stream
        augmentation = Augmentation.from_name(config.augmentation, tuple(train.images.shape[1:]))  # type: ignore[arg-type]
        train_s: dict[tuple[Any, ...], float] = {}
        keys = []
        for cand in plan:
            tc = cand.transfer_config(config)
            bs = tc.resolved_schedule().batch_size
            # What a step costs depends on these, not on beta's value or the lr.
            key = (cand.k, bs, tc.uses_spectral_norm, tc.resolved_bn_name(), cand.method == "lwf")
            keys.append(key)
            if key not in train_s:
                x, y = _batch(train, bs)
                # Per sample: a batch larger than the data is timed on all of it.
                seconds = _train_batch_seconds(source, x, y, tc, num_classes, augmentation)
                train_s[key] = seconds / len(y) * bs
        x, y = _batch(train, audit.batch_size)
        attacked = _target_model(source, num_classes, x.device)
        attack_per_sample = _attack_batch_seconds(attacked, x, y) / len(y)
        eval_per_sample = _eval_batch_seconds(attacked, x) / len(y)
    targets = min(audit.apgd_targets, num_classes - 1)
    # APGD-CE, then APGD-T once per target class, every step on every sample.
    passes = audit.apgd_steps * audit.apgd_restarts * (1 + targets)
    rows: list[dict[str, Any]] = []
    for cand, key in zip(plan, keys, strict=True):
        s = config.schedule_for(cand.method)
        batches = s.epochs * math.ceil(len(train) / s.batch_size)
        rows.append(
            {
                "name": cand.name,
                "train_batches": batches,
                "train_seconds": batches * train_s[key] + s.epochs * evaluated * eval_per_sample,
                "audit_seconds_max": audited * passes * attack_per_sample,
            }
        )
    return CostEstimate(
        candidates=len(plan),
        train_seconds=sum(r["train_seconds"] for r in rows),
        audit_seconds_max=sum(r["audit_seconds_max"] for r in rows),
        per_candidate=rows,
    )


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
                return reused
        t0 = time.monotonic()
        state = None if path is None else path.with_name(path.name + ".state")
        trained = transfer(
            self.source,
            self.fit_data,
            tc,
            device=self.device,
            seed=self.seed,
            state_path=state,
            on_progress=lambda ev: self.emit("train", index, cand.name, training=ev),
            should_stop=self.should_stop,
        )
        model = trained.model
        val = self._audit(model, self.fit_data.test, "audit-val", index, cand.name)
        test = self._audit(model, self.test, "audit-test", index, cand.name)
        history = [_val_names(r.to_dict()) for r in trained.history]
        result = CandidateResult(
            name=cand.name, method=cand.method, k=cand.k, norm_beta=cand.norm_beta, bn=cand.bn,
            val_clean=val[0], val_robust=val[1], test_clean=test[0], test_robust=test[1],
            seconds=time.monotonic() - t0, path=path, history=history,
            training={**trained.training, "compare": fingerprint}, model=model,
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

    def _audit(
        self, model: BlockModel, split: Split, stage: str, index: int, name: str
    ) -> tuple[float, float]:
        self.stop_requested(f"the {stage} of {name}")

        def progress(event: AuditEvent) -> None:
            if event.attack:  # the first event only carries the audit's estimate
                self.emit(stage, index, name, attack=event.attack, done=event.done,
                          total=event.total)  # fmt: skip

        # The same attack randomness for every candidate: differences are the models'.
        torch.manual_seed(self.seed)
        with stop_when(self.should_stop):
            result = run_ensemble(model, split, self.audit, on_progress=progress)
        return result.clean_accuracy, result.robust_accuracy


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
) -> CompareResult:
    """Train the planned candidates of ``source`` on ``data``, audit them, choose one.

    ``centre_k``: the k the default k list is centred on, normally the k the source was
    pre-trained for (:func:`pretrained_k` of its checkpoint header). ``out_dir``: where each
    candidate's weights go as ``NAME.safetensors`` (an earlier run's matching files there are
    reused). ``on_progress`` gets a :class:`CompareEvent` with the cost estimate before anything
    trains, then one per training and audit step of each candidate. ``source`` is left untouched;
    every candidate's model comes back on the CPU, the chosen one as ``result.model``.
    """
    config = config or CompareConfig()
    started = time.monotonic()
    Augmentation.from_name(config.augmentation, data.input_shape)  # fails now, not at candidate 1
    dev = resolve_device(device)
    plan, dropped = plan_candidates(source, config, centre_k)
    _check_candidates(source, data, plan)
    held = validation_split(data.train.labels, config.val_fraction, seed)
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
    )
    run = _Run(
        source=source, fit_data=fit_data, test=test, config=config, audit=audit, device=dev,
        seed=seed, total=len(plan), started=started,
        out_dir=None if out_dir is None else Path(out_dir),
        fingerprint=_fingerprint(data, held, config, seed, audit) if out_dir is not None else {},
        on_progress=on_progress, should_stop=should_stop,
    )  # fmt: skip
    run.emit("estimate", 0, plan[0].name, estimate=estimate)
    results = []
    for i, cand in enumerate(plan):
        run.stop_requested(f"candidate {cand.name}")
        result = run.candidate(i, cand)
        results.append(result)
        run.emit("candidate-done", i, cand.name, result=result)
    chosen = choose_candidate(
        [r.val_clean for r in results], [r.val_robust for r in results], config.max_clean_drop
    )
    return CompareResult(
        candidates=results,
        chosen=results[chosen],
        estimate=estimate,
        selection=_selection(results, chosen, config, held, audit),
        dropped=[c.name for c in dropped],
        seconds=time.monotonic() - started,
    )


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


def _selection(
    results: Sequence[CandidateResult],
    chosen: int,
    config: CompareConfig,
    held: HeldOut,
    audit: AuditConfig,
) -> dict[str, Any]:
    best = max(r.val_clean for r in results)
    pick = results[chosen]
    eligible = [r.name for r in results if r.val_clean >= best - config.max_clean_drop - 1e-9]
    return {
        "rule": "most robust on validation among candidates whose validation clean accuracy is "
        "within max_clean_drop of the best; ties: higher validation clean, then earlier",
        "reason": f"{pick.name}: validation robust {pick.val_robust:.3f}, the highest among the "
        f"{len(eligible)} candidate(s) with validation clean accuracy >= "
        f"{best - config.max_clean_drop:.3f} (best {best:.3f} - {config.max_clean_drop:g})",
        "eligible": eligible,
        "best_val_clean": best,
        "max_clean_drop": config.max_clean_drop,
        "val_fraction": config.val_fraction,
        "val_samples": len(held.val),
        "train_samples": len(held.train),
        "ensemble": audit.attacks,
        "eps": audit.eps[0],
        "norm": audit.norm,
    }
