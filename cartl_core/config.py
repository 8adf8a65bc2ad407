"""The paper's defaults, defined once.

Every front end (CLI, REST API, worker) reads its defaults from here; a test checks they agree.
Values follow ``docs/method.md``: where the authors' release and the paper differ, the release's
behaviour is the default and the alternative is a named option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Self

from cartl_core.errors import ConfigError

__all__ = [
    "ADVERSARIAL_METHODS",
    "ATTACK_NAMES",
    "BN_PRESETS",
    "COMPARE_BN_PRESETS",
    "COMPARE_CENTRE_K_ONLY",
    "COMPARE_K_OFFSETS",
    "COMPARE_METHODS",
    "COMPARE_NORM_BETAS",
    "CPU_MAX_COST_SECONDS",
    "ENSEMBLES",
    "TRANSFER_METHODS",
    "AttackConfig",
    "AuditConfig",
    "BNPolicy",
    "CompareConfig",
    "FDMConfig",
    "LwFConfig",
    "ScheduleConfig",
    "TraceConfig",
    "TransferConfig",
    "resolve_attacks",
]

Norm = Literal["linf", "l2"]
AttackLoss = Literal["ce", "cw"]
FDMReduction = Literal["sum", "mean"]
TransferMethod = Literal["standard", "neft", "cartl", "lwf", "adversarial", "trades"]
SpectralMode = Literal["exact", "at-most"]
SpectralEstimate = Literal["matrix", "conv"]
StatsSource = Literal["source", "target"]
LwFTune = Literal["all", "last-k"]
LRShape = Literal["step", "one-cycle"]

TRANSFER_METHODS: tuple[str, ...] = ("standard", "neft", "cartl", "lwf", "adversarial", "trades")


class _Config:
    """Shared helpers: validated ``replace`` and a JSON-friendly dict."""

    def with_(self, **changes: Any) -> Self:
        unknown = set(changes) - {f.name for f in fields(self)}  # type: ignore[arg-type]
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, _Config) else value
            if isinstance(value, tuple):
                out[f.name] = list(value)
        return out


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0; got {value}", field=name)


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{name} must be >= 0; got {value}", field=name)


@dataclass(frozen=True)
class AttackConfig(_Config):
    """PGD settings. Defaults: the paper's training attack (PGD-7, Linf 8/255, step 2/255).

    ``alpha`` None is eps/4, which is the paper's 2/255 at its 8/255 and keeps 7 steps able to
    cross the ball at any other eps (a fixed 2/255 at eps 0.2 covers a quarter of it).
    """

    eps: float = 8 / 255
    alpha: float | None = None
    steps: int = 7
    norm: Norm = "linf"
    random_start: bool = True
    restarts: int = 1
    loss: AttackLoss = "ce"

    def __post_init__(self) -> None:
        _positive("eps", self.eps)
        if self.alpha is not None:
            _positive("alpha", self.alpha)
        _non_negative("steps", self.steps)
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1; got {self.restarts}", field="restarts")
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"norm must be 'linf' or 'l2'; got {self.norm!r}", field="norm")
        if self.loss not in ("ce", "cw"):
            raise ConfigError(f"loss must be 'ce' or 'cw'; got {self.loss!r}", field="loss")
        if self.norm == "linf" and self.eps > 1:
            raise ConfigError(
                f"Linf eps {self.eps} exceeds the [0, 1] pixel range; did you mean {self.eps}/255?",
                field="eps",
            )

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.eps / 4

    def to_dict(self) -> dict[str, Any]:
        # Checkpoint headers record the step that was used, not "default".
        return {**super().to_dict(), "alpha": self.step_size}


@dataclass(frozen=True)
class ScheduleConfig(_Config):
    """SGD with one linear warm-up epoch and step decay, as in the release.

    ``milestones`` are fractions of ``epochs``: (0.4, 0.7, 0.9) of 100 epochs gives the paper's
    epochs 40, 70 and 90, and a shortened run keeps the same shape. ``shape="one-cycle"`` (not
    the paper's; an option) replaces warm-up and milestones with PyTorch's ``OneCycleLR`` curve
    per batch: cosine up from lr/25 to lr over the first 30% of the steps, then cosine down to
    lr/25e4.
    """

    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    milestones: tuple[float, ...] = (0.4, 0.7, 0.9)
    gamma: float = 0.2
    shape: LRShape = "step"

    def __post_init__(self) -> None:
        if self.shape not in ("step", "one-cycle"):
            raise ConfigError(
                f"lr_schedule must be 'step' or 'one-cycle'; got {self.shape!r}",
                field="lr_schedule",
            )
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1; got {self.epochs}", field="epochs")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1; got {self.batch_size}", field="batch_size")
        _positive("lr", self.lr)
        _non_negative("momentum", self.momentum)
        _non_negative("weight_decay", self.weight_decay)
        _non_negative("warmup_epochs", self.warmup_epochs)
        if any(not 0 < m <= 1 for m in self.milestones):
            raise ConfigError("milestones are fractions of epochs in (0, 1]", field="milestones")

    def milestone_epochs(self) -> list[int]:
        # Never epoch 0: with 1 or 2 epochs, 0.4 * epochs would round to a decay before training.
        return sorted({max(1, round(m * self.epochs)) for m in self.milestones})


@dataclass(frozen=True)
class TraceConfig(_Config):
    """The robust trace: clean and robust accuracy on a fixed test subset after every epoch.

    Monitoring only: it is never used to pick a checkpoint or stop a run (that would be model
    selection on the test set); the last epoch's weights are always the result. The attack is an
    early-exit PGD (``steps`` steps of ``alpha``, default eps/4, random start) in the job's threat
    model: ``eps``/``norm`` left as None take the training attack's for pre-training and the final
    audit's first radius for a transfer. ``samples`` 0 turns the trace off.

    Cost rule: the subset is cut so that ``samples * (steps + 1)`` forward-backward passes stay
    within ``budget`` (10%) of the epoch's training passes (training samples times passes per
    sample: attack steps + 1 for adversarial training, + 1 more for FDM's clean features, 1 for
    clean fine-tuning), but never below ``min_samples`` (64, so a tiny dataset still gets a
    meaningful trace) nor above the test split. The early exit makes the real cost lower still.
    ``seed`` picks the subset and the attack's random start: the same every epoch, and the same
    for runs with other training seeds on the same data, so their traces compare.
    ``overfit_drop``: a robust-accuracy drop below its best so far, while clean accuracy rises,
    that raises a catastrophic-overfitting warning (more than 10 points by default).
    ``batch_size``: samples attacked at once, the audit's default (a training job's final audit
    attacks batches of that size on the same model anyway).

    Errors name the job parameters (``trace_samples``, ...), as the CLI and API spell them.
    """

    samples: int = 512
    steps: int = 10
    eps: float | None = None
    norm: Norm | None = None
    alpha: float | None = None
    budget: float = 0.10
    min_samples: int = 64
    overfit_drop: float = 0.10
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ConfigError(
                f"trace_samples must be >= 0 (0 turns the trace off); got {self.samples}",
                field="trace_samples",
            )
        if self.steps < 1:
            raise ConfigError(f"trace_steps must be >= 1; got {self.steps}", field="trace_steps")
        if self.eps is not None:
            _positive("trace_eps", self.eps)
        if self.alpha is not None:
            _positive("trace_alpha", self.alpha)
        if self.norm is not None and self.norm not in ("linf", "l2"):
            raise ConfigError(f"norm must be 'linf' or 'l2'; got {self.norm!r}", field="trace_norm")
        if self.norm == "linf" and self.eps is not None and self.eps > 1:
            raise ConfigError(
                f"Linf eps {self.eps} exceeds the [0, 1] pixel range", field="trace_eps"
            )
        _positive("trace_budget", self.budget)
        _non_negative("trace_min_samples", self.min_samples)
        _positive("trace_overfit_drop", self.overfit_drop)
        if self.batch_size < 1:
            raise ConfigError("the trace's batch_size must be >= 1", field="trace_batch_size")

    @property
    def enabled(self) -> bool:
        return self.samples > 0

    def resolved(self, eps: float, norm: Norm) -> TraceConfig:
        """This trace with the job's threat model filled in where none was given."""
        return replace(
            self,
            eps=self.eps if self.eps is not None else eps,
            norm=self.norm if self.norm is not None else norm,
        )

    def step_size(self) -> float:
        """``alpha``, or eps/4 (the paper's 2/255 at 8/255) when none is given."""
        if self.alpha is not None:
            return self.alpha
        if self.eps is None:
            raise ConfigError("the trace's eps is not resolved yet", field="trace_eps")
        return self.eps / 4


@dataclass(frozen=True)
class FDMConfig(_Config):
    """FDM pre-training: PGD adversarial training plus the feature-distance term.

    ``fdm_lambda`` 0.005 is the release's WRN-34-10/CIFAR-100 value (its other runs use 0.01);
    0 gives plain adversarial training. The term is summed over the batch as in the release
    (so lambda scales with batch size); ``reduction="mean"`` averages instead.
    """

    k: int = 4
    fdm_lambda: float = 0.005
    reduction: FDMReduction = "sum"
    attack: AttackConfig = field(default_factory=AttackConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augmentation: str = "auto"
    trace: TraceConfig = field(default_factory=TraceConfig)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k must be >= 1; got {self.k}", field="k")
        _non_negative("fdm_lambda", self.fdm_lambda)
        if self.reduction not in ("sum", "mean"):
            raise ConfigError("reduction must be 'sum' or 'mean'", field="reduction")


@dataclass(frozen=True)
class BNPolicy(_Config):
    """What BatchNorm layers do during fine-tuning, separately for frozen and fine-tuned blocks.

    ``*_affine_trainable``: whether gamma/beta get gradients ("freezing BN" in the paper means
    False). ``*_stats``: "target" re-estimates running statistics on the target data (train mode),
    "source" keeps the source statistics (eval mode on every batch of every epoch).
    """

    frozen_affine_trainable: bool = False
    frozen_stats: StatsSource = "source"
    tuned_affine_trainable: bool = True
    tuned_stats: StatsSource = "target"

    def __post_init__(self) -> None:
        for name in ("frozen_stats", "tuned_stats"):
            if getattr(self, name) not in ("source", "target"):
                raise ConfigError(f"{name} must be 'source' or 'target'", field=name)


BN_PRESETS: dict[str, BNPolicy] = {
    # Ordinary fine-tuning: frozen blocks fully frozen, tuned blocks fully trainable.
    "trainable": BNPolicy(False, "source", True, "target"),
    # The release's standard-fine-tuning baseline.
    "source-stats": BNPolicy(False, "source", False, "target"),
    # The release's CARTL runs: affine frozen everywhere, statistics re-estimated everywhere.
    "frozen": BNPolicy(False, "target", False, "target"),
    # Everything from the source: affine frozen and statistics kept everywhere.
    "all-source": BNPolicy(False, "source", False, "source"),
}

DEFAULT_BN_PRESET: dict[str, str] = {
    "standard": "source-stats",
    "neft": "trainable",
    "cartl": "frozen",
    "lwf": "trainable",
    # Adversarial and TRADES fine-tuning: the tuned blocks' BN learns the target's statistics.
    "adversarial": "trainable",
    "trades": "trainable",
}
#: The methods that train on adversarial examples, against ``TransferConfig.attack``.
ADVERSARIAL_METHODS: tuple[str, ...] = ("adversarial", "trades")

DEFAULT_NORM_BETA: dict[str, float] = {"neft": 0.6, "cartl": 0.4}


@dataclass(frozen=True)
class LwFConfig(_Config):
    """Shafahi et al.'s LwF-style robust transfer baseline, with its published schedule.

    The feature targets are recorded once, from one augmented pass over the training images
    (seeded by the run's seed), and training runs on exactly those images, as in the release.
    After ``head_only_epochs`` epochs that train only the classifier, ``tune="all"`` (the
    release) trains the whole model, stem included, with every BatchNorm in train mode (the BN
    preset then applies to the head-only epochs only); ``"last-k"`` tunes only the last k blocks
    under the BN preset, as the other methods do, for comparisons at equal k.
    """

    lwf_lambda: float = 0.01
    head_only_epochs: int = 25
    tune: LwFTune = "all"

    def __post_init__(self) -> None:
        _non_negative("lwf_lambda", self.lwf_lambda)
        _non_negative("head_only_epochs", self.head_only_epochs)
        if self.tune not in ("all", "last-k"):
            raise ConfigError(
                f"tune must be 'all' or 'last-k'; got {self.tune!r}", field="lwf_tune"
            )


LWF_SCHEDULE = ScheduleConfig(
    epochs=52,
    batch_size=128,
    lr=0.001,
    momentum=0.9,
    weight_decay=2e-4,
    warmup_epochs=0,
    milestones=(),
)


@dataclass(frozen=True)
class TransferConfig(_Config):
    """Target-side fine-tuning.

    ``spectral_estimate="matrix"`` bounds each kernel reshaped to (out, in*kh*kw), as the paper
    does; ``"conv"`` bounds each convolution's true operator norm at its input size.
    ``norm_beta`` and ``bn`` left as None take the method's default (NEFT 0.6, CARTL 0.4; BN
    presets per method in ``DEFAULT_BN_PRESET``). ``residual_scale`` 0.5 makes each fine-tuned
    residual block output 0.5 * shortcut + 0.5 * residual (the release's NEFT); None picks 0.5
    for neft/cartl and 1.0 (plain sum) otherwise.

    ``method="adversarial"`` is PGD adversarial fine-tuning (Madry et al.) of the last k blocks
    from the source: each batch is replaced by its PGD examples under ``attack`` (None: PGD-7,
    Linf 8/255, step eps/4, random start; the jobs pass the source's threat model, compare its
    own), the model in eval mode while attacking, then one SGD step on CE of the adversarial
    batch. k counts the last blocks as for every method: k = T tunes every block (the stem, which
    belongs to no block, stays frozen). ``method="trades"`` is TRADES fine-tuning (Zhang et al.
    2019): the examples maximise KL(f(x') || f(x)) from x + 0.001 * N(0, 1) under the same attack
    settings, and the loss is CE(f(x), y) + ``trades_beta`` * KL(f(x') || f(x)) (beta 6, the
    paper's CIFAR-10 setting). ``attack`` and ``trades_beta`` are ignored by the methods they do
    not concern.
    """

    method: TransferMethod = "cartl"
    k: int = 4
    norm_beta: float | None = None
    spectral_mode: SpectralMode = "exact"
    spectral_estimate: SpectralEstimate = "matrix"
    power_iterations: int = 1
    residual_scale: float | None = None
    bn: str | None = None
    schedule: ScheduleConfig | None = None
    lwf: LwFConfig = field(default_factory=LwFConfig)
    augmentation: str = "auto"
    trace: TraceConfig = field(default_factory=TraceConfig)
    attack: AttackConfig | None = None
    trades_beta: float = 6.0

    def __post_init__(self) -> None:
        _non_negative("trades_beta", self.trades_beta)
        if self.method not in TRANSFER_METHODS:
            raise ConfigError(
                f"unknown method {self.method!r}; choose one of {', '.join(TRANSFER_METHODS)}",
                field="method",
            )
        if self.k < 1:
            raise ConfigError(f"k must be >= 1; got {self.k}", field="k")
        if self.norm_beta is not None:
            _positive("norm_beta", self.norm_beta)
        if self.spectral_mode not in ("exact", "at-most"):
            raise ConfigError("spectral_mode must be 'exact' or 'at-most'", field="spectral_mode")
        if self.spectral_estimate not in ("matrix", "conv"):
            raise ConfigError(
                "spectral_estimate must be 'matrix' or 'conv'", field="spectral_estimate"
            )
        if self.power_iterations < 1:
            raise ConfigError("power_iterations must be >= 1", field="power_iterations")
        if self.residual_scale is not None:
            _positive("residual_scale", self.residual_scale)
        if self.bn is not None and self.bn not in BN_PRESETS:
            raise ConfigError(
                f"unknown BN preset {self.bn!r}; choose one of {', '.join(BN_PRESETS)}",
                field="bn",
            )

    @property
    def uses_spectral_norm(self) -> bool:
        return self.method in ("neft", "cartl")

    def resolved_attack(self) -> AttackConfig | None:
        """The training attack: adversarial and TRADES fine-tuning's (the default if none is
        given), None for the methods that train on clean data only."""
        if self.method not in ADVERSARIAL_METHODS:
            return None
        return self.attack if self.attack is not None else AttackConfig()

    def resolved_norm_beta(self) -> float | None:
        if not self.uses_spectral_norm:
            return None
        return self.norm_beta if self.norm_beta is not None else DEFAULT_NORM_BETA[self.method]

    def resolved_bn_name(self) -> str:
        return self.bn if self.bn is not None else DEFAULT_BN_PRESET[self.method]

    def resolved_bn(self) -> BNPolicy:
        return BN_PRESETS[self.resolved_bn_name()]

    def resolved_schedule(self) -> ScheduleConfig:
        """The release's schedule, or LwF's published one for ``lwf``, unless one is given."""
        if self.schedule is not None:
            return self.schedule
        return LWF_SCHEDULE if self.method == "lwf" else ScheduleConfig()

    def resolved_residual_scale(self) -> float:
        if self.residual_scale is not None:
            return self.residual_scale
        return 0.5 if self.uses_spectral_norm else 1.0


#: Attack ensembles for the audit's headline, run in this order on the samples still robust.
#: ``standard`` is exactly AutoAttack's standard version (its attacks, in its order); ``fast`` its
#: two gradient attacks, for model selection; ``paper`` the CARTL paper's protocol, PGD-``steps``
#: with CE.
ENSEMBLES: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "fast": ("apgd-ce", "apgd-t"),
    "paper": ("pgd",),
}
#: Attack names a list may use: ``pgd`` is PGD-``steps``, ``pgd-N`` PGD with N steps, ``-cw``
#: the CW-margin loss.
ATTACK_NAMES = (
    "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "fgsm", "pgd", "pgd-N", "pgd-cw",
)  # fmt: skip
_ATTACK_NAME = re.compile(
    r"^(apgd-ce|apgd-dlr|apgd-t|fab-t|square|fgsm|pgd(-[1-9][0-9]{0,3})?(-cw)?)$"
)
#: Arithmetic of a model's passes: ``fp32`` everywhere, or ``bf16``: autocast on CUDA (fp32
#: elsewhere). Training uses bf16; attacks fp32 unless asked (the reference evaluates in fp32).
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def resolve_attacks(spec: str, steps: int = 20) -> tuple[str, tuple[str, ...]]:
    """``standard``, ``fast``, ``paper`` or a comma-separated list of attack names: the name to
    report and the attacks in order (``pgd`` becomes ``pgd-STEPS``)."""
    if spec in ENSEMBLES:
        names = ENSEMBLES[spec]
    else:
        names = tuple(part.strip() for part in spec.split(",") if part.strip())
        bad = [n for n in names if not _ATTACK_NAME.match(n)]
        if not names or bad:
            raise ConfigError(
                f"attacks must be one of {', '.join(ENSEMBLES)} or a comma-separated list of "
                f"{', '.join(ATTACK_NAMES)}; got {spec!r}",
                field="attacks",
            )
        if len(set(names)) != len(names):
            raise ConfigError(f"attacks lists an attack twice: {spec!r}", field="attacks")
    expanded = tuple(re.sub(r"^pgd(?=$|-cw)", f"pgd-{steps}", n) for n in names)
    return spec, expanded


@dataclass(frozen=True)
class AuditConfig(_Config):
    """Robustness audit at Linf 8/255 by default.

    ``attacks`` picks the ensemble behind the headline (see ``ENSEMBLES``); the APGD and FAB-T
    settings are AutoAttack's standard ones (100 steps, one restart, up to 9 target classes) and
    Square gets 5,000 queries. Square's window schedule is rescaled to its budget, as in the
    Square paper's code (``square_rescale``); AutoAttack counts it in queries instead
    (``square_rescale=False``), which measured weaker here at 1,000 and 5,000 queries
    (docs/audit.md). PGD-``steps`` with CE (the paper's protocol: 20 steps, or 100 with
    ``steps=100``; step ``alpha``, eps/4 by default) and FGSM are always run as named attacks.
    ``check_samples`` bounds the subset the masking checks attack at other radii. ``precision``
    is fp32 unless ``bf16`` is asked for (autocast, CUDA only; the report names it).
    """

    eps: tuple[float, ...] = (8 / 255,)
    attacks: str = "standard"
    alpha: float | None = None
    steps: int = 20
    norm: Norm = "linf"
    restarts: int = 1
    apgd_steps: int = 100
    apgd_restarts: int = 1
    apgd_targets: int = 9
    fab_steps: int = 100
    fab_targets: int = 9
    square_queries: int = 5000
    square_rescale: bool = True
    fgsm: bool = True
    check_samples: int = 256
    batch_size: int = 256
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        if not self.eps:
            raise ConfigError("give at least one eps", field="eps")
        for e in self.eps:
            _positive("eps", e)
            if self.norm == "linf" and e > 1:
                raise ConfigError(
                    f"Linf eps {e} exceeds the [0, 1] pixel range; did you mean {e}/255?",
                    field="eps",
                )
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"norm must be 'linf' or 'l2'; got {self.norm!r}", field="norm")
        resolve_attacks(self.attacks, self.steps)
        for name in ("steps", "restarts", "apgd_steps", "apgd_restarts", "apgd_targets",
                     "fab_steps", "fab_targets", "square_queries", "check_samples",
                     "batch_size"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}", field=name)
        if self.alpha is not None:
            _positive("alpha", self.alpha)
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be fp32 or bf16; got {self.precision!r}", field="precision"
            )

    def alpha_for(self, eps: float) -> float:
        """The paper's step is eps/4 (2/255 for 8/255) unless one is given."""
        return self.alpha if self.alpha is not None else eps / 4


#: The budget a comparison on a CPU gets when it names none (``max_cost_seconds``): the default
#: grid on a 2,000-image 28-px target is estimated at hours of training per candidate there.
CPU_MAX_COST_SECONDS = 2 * 3600.0

#: What ``compare`` tries when the caller does not say; the one place to change them. Methods in
#: the order they are tried and listed. ``trades`` is in, ``adversarial`` is not, from
#: ``bench/adversarial_finetune.py`` on the demo task (docs/compare.md has the numbers): TRADES
#: fine-tuning kept 3x CARTL's robustness from either source within the clean-accuracy rule,
#: while PGD adversarial fine-tuning lost 10 points of clean accuracy from the FDM source and
#: matched TRADES from the AT source; each costs 7-10x standard fine-tuning's training.
#: The order is the priority a budget cuts by (``max_cost``, and on a CPU its default): the
#: baseline, then CARTL and NEFT, then LwF, which kept the least on every task measured (real
#: data: 0.18 and 0.32 robust accuracy against standard's 0.54 and 0.61, ``bench/evidence.py``,
#: three seeds; digits: at most 0.10), then TRADES, the costliest.
COMPARE_METHODS: tuple[str, ...] = ("standard", "cartl", "neft", "lwf", "trades")
#: Methods the default k list tries at its centre k only: adversarial training costs 7-10x the
#: others per candidate. A given k list (``ks``) applies to them as to every method.
COMPARE_CENTRE_K_ONLY: tuple[str, ...] = ("adversarial", "trades")
#: Default k values, as offsets from the centre k (the k the source was pre-trained for, from its
#: checkpoint header, else ``TransferConfig().k``), most preferred first.
COMPARE_K_OFFSETS: tuple[int, ...] = (0, -1, 1)
#: Default spectral-norm targets per method (the methods without spectral norm get none).
COMPARE_NORM_BETAS: dict[str, tuple[float, ...]] = {
    m: (beta,) for m, beta in DEFAULT_NORM_BETA.items()
}
#: Default BN presets per method: each method's own, and for the spectral-norm methods also
#: ``source-stats`` (frozen blocks keep the source's statistics), tried first: it kept the most
#: robustness on the digits ablation (``bench/transfer_ablation.py``: CARTL k 3, 0.230 against
#: 0.210 with ``frozen`` at the same clean accuracy), and on real data the gap is wide: CARTL from
#: an FDM source kept 0.647 (Fashion-MNIST) and 0.641 (MNIST) robust accuracy with
#: ``source-stats`` against 0.492 and 0.443 with ``frozen`` (``bench/evidence.py``, three seeds).
#: ``all-source`` is left out: with a tuned conv block it cost 30 points of clean accuracy there.
COMPARE_BN_PRESETS: dict[str, tuple[str, ...]] = {
    m: ("source-stats", preset) if m in DEFAULT_NORM_BETA else (preset,)
    for m, preset in DEFAULT_BN_PRESET.items()
}


@dataclass(frozen=True)
class CompareConfig(_Config):
    """Candidates for ``compare``: transfers over methods x k x beta x BN preset, one of them chosen
    on a validation split held out from the target's training data.

    ``eps``/``norm``: the threat model every candidate is audited in (the ``fast`` ensemble).
    ``ks``, ``norm_betas``, ``bn_presets`` left as None take the defaults above: k around the
    source's pre-training k (see :func:`cartl_core.compare.compare`), each method's own beta and
    BN preset. Given lists apply to every method they fit (betas only to neft and cartl); their
    order is their priority. ``max_candidates`` keeps the first candidates in priority order
    (position of k in ``ks``, then of beta, then of the BN preset, then the method's in
    ``methods``); the rest are not trained.

    The choice (see :func:`cartl_core.compare.choose_candidate`) is paired and noise-aware:
    candidates in order of preference (least training work first), the first one kept unless
    another is more robust on validation beyond noise (exact McNemar test, one-sided at
    ``confidence``, Holm over the comparisons). ``max_clean_drop``: a candidate is left out when
    its validation clean accuracy is below the best candidate's by more than this, beyond noise
    (the same confidence).
    The validation split: ``val_fraction`` of each class's training images, at least
    ``min_val_samples`` in all where the data allow it (the larger of the two, but never more
    than a third of the images: the chosen model trains on the rest; per class at least one image,
    and at least one left to train on), drawn with the run's seed. 200 images bound one
    accuracy's 95% interval at +-6.9 points.

    The schedule options (``epochs``, ``batch_size``, ``lr``, ``weight_decay``) override each
    method's default schedule (the release's; LwF's published one for lwf), so a candidate is
    trained exactly as ``transfer`` with the same options would train it. Adversarial fine-tuning
    candidates train against PGD-7 (step eps/4) in the comparison's own threat model.

    ``max_cost_seconds``: a budget, in device-seconds, for the whole comparison's candidates,
    each counted as compare measures it (its training plus its validation audit; the test audits
    are the report's and fall outside it). Before anything trains, candidates are kept in
    priority order while the sum of their estimated costs (training, and the validation audit at
    its maximum) fits; one that does not fit is dropped, and a cheaper later one may still fit.
    None: the device's default, ``CPU_MAX_COST_SECONDS`` (2 h) on a CPU, none on an accelerator:
    a CPU run gets the part of the grid it can finish, and the estimate names what was cut.
    """

    eps: float = 8 / 255
    norm: Norm = "linf"
    methods: tuple[str, ...] = COMPARE_METHODS
    ks: tuple[int, ...] | None = None
    norm_betas: tuple[float, ...] | None = None
    bn_presets: tuple[str, ...] | None = None
    max_candidates: int = 12
    max_clean_drop: float = 0.05
    val_fraction: float = 0.2
    min_val_samples: int = 200
    confidence: float = 0.95
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    lr_schedule: LRShape = "step"
    augmentation: str = "auto"
    lwf: LwFConfig = field(default_factory=LwFConfig)
    max_cost_seconds: float | None = None

    def __post_init__(self) -> None:
        _positive("eps", self.eps)
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"norm must be 'linf' or 'l2'; got {self.norm!r}", field="norm")
        if self.norm == "linf" and self.eps > 1:
            raise ConfigError(
                f"Linf eps {self.eps} exceeds the [0, 1] pixel range; did you mean {self.eps}/255?",
                field="eps",
            )
        _listed("methods", self.methods, TRANSFER_METHODS)
        if self.ks is not None:
            _unique("ks", self.ks)
            if any(k < 1 for k in self.ks):
                raise ConfigError(f"every k must be >= 1; got {list(self.ks)}", field="ks")
        if self.norm_betas is not None:
            _unique("norm_betas", self.norm_betas)
            for beta in self.norm_betas:
                _positive("norm_betas", beta)
        if self.bn_presets is not None:
            _listed("bn_presets", self.bn_presets, tuple(BN_PRESETS))
        if self.max_candidates < 1:
            raise ConfigError(
                f"max_candidates must be >= 1; got {self.max_candidates}", field="max_candidates"
            )
        if not 0 <= self.max_clean_drop <= 1:
            raise ConfigError(
                f"max_clean_drop is an accuracy difference in [0, 1]; got {self.max_clean_drop}",
                field="max_clean_drop",
            )
        if not 0 < self.val_fraction < 1:
            raise ConfigError(
                f"val_fraction must lie strictly between 0 and 1; got {self.val_fraction}",
                field="val_fraction",
            )
        if self.min_val_samples < 0:
            raise ConfigError(
                f"min_val_samples must be >= 0; got {self.min_val_samples}",
                field="min_val_samples",
            )
        if not 0.5 < self.confidence < 1:
            raise ConfigError(
                f"confidence must lie strictly between 0.5 and 1; got {self.confidence}",
                field="confidence",
            )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1; got {value}", field=name)
        if self.lr is not None:
            _positive("lr", self.lr)
        if self.weight_decay is not None:
            _non_negative("weight_decay", self.weight_decay)
        if self.max_cost_seconds is not None:
            _positive("max_cost_seconds", self.max_cost_seconds)

    def schedule_for(self, method: str) -> ScheduleConfig:
        """The method's default schedule with this comparison's overrides."""
        base = TransferConfig(method=method).resolved_schedule()  # type: ignore[arg-type]
        changes: dict[str, object] = {
            name: getattr(self, name)
            for name in ("epochs", "batch_size", "lr", "weight_decay")
            if getattr(self, name) is not None
        }
        return base.with_(**changes, shape=self.lr_schedule)

    def betas_for(self, method: str) -> tuple[float | None, ...]:
        """The spectral-norm targets tried with ``method`` (None: it uses no spectral norm)."""
        if method not in COMPARE_NORM_BETAS:
            return (None,)
        return self.norm_betas if self.norm_betas is not None else COMPARE_NORM_BETAS[method]

    def bn_presets_for(self, method: str) -> tuple[str, ...]:
        return self.bn_presets if self.bn_presets is not None else COMPARE_BN_PRESETS[method]


def _unique(name: str, values: tuple[Any, ...]) -> None:
    if not values:
        raise ConfigError(f"{name} must list at least one value", field=name)
    if len(set(values)) != len(values):
        raise ConfigError(f"{name} lists a value twice: {list(values)}", field=name)


def _listed(name: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    _unique(name, values)
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ConfigError(
            f"unknown {name} value {bad[0]!r}; choose from {', '.join(allowed)}", field=name
        )
