"""The registry of job kinds, and what one kind declares.

A kind (pre-training, transfer, audit, compare, or any later one) lives in one module that builds
one :class:`JobKind` and passes it to :func:`register`. It declares

- its parameters: a frozen dataclass whose fields carry :class:`cartl_core.options.Option`
  metadata, the one schema from which the CLI options, the API's JSON schema and the run config
  come, with a ``check()`` that relates the values to each other;
- the inputs it needs (``checkpoint``: what role a checkpoint plays, if any; every kind reads a
  dataset) and its check against them (``fit``), run before a job is queued;
- its run function (``run``) and the progress events it sends (``progress``).

The CLI (:mod:`app.cli.library`), the API (``app.services``), the worker and the dashboard's
form read this registry; none of them names a kind.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from cartl_core.errors import ConfigError

if TYPE_CHECKING:
    from cartl_core.audit import AuditEvent
    from cartl_core.data import Resize

__all__ = [
    "CheckpointFacts",
    "CheckpointRole",
    "DatasetFacts",
    "Inputs",
    "JobKind",
    "JobOutcome",
    "JobParams",
    "ProgressStyle",
    "RunContext",
    "find_kind",
    "get_kind",
    "job_kinds",
    "register",
    "unregister",
]

#: What a kind's checkpoint is to it: the ``model`` it examines (an audit), the ``source`` it
#: fine-tunes into a new model with a new head (a transfer), or optional initial weights
#: (``init``, a pre-training).
CheckpointRole = Literal["model", "source", "init"]
#: The progress events a kind's run sends to ``on_progress``: ``epochs``
#: (:class:`cartl_core.training.loop.TrainProgress`, and an ``on_epoch`` record after each
#: epoch), ``candidates`` (:class:`cartl_core.compare.CompareEvent`) or ``none``. Every kind
#: that audits also sends :class:`cartl_core.audit.AuditEvent` to ``on_audit_progress``.
ProgressStyle = Literal["epochs", "candidates", "none"]


class JobParams(Protocol):
    """A kind's parameters: a frozen dataclass of :func:`cartl_core.options.option` fields."""

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the parameter whose value does not fit the others."""


@dataclass(frozen=True)
class CheckpointFacts:
    """What a job's checkpoint is, as recorded when it was uploaded (no weights are read)."""

    id: str
    arch: str
    num_classes: int
    num_blocks: int
    input_shape: tuple[int, int, int]
    #: A CARTL checkpoint (self-describing) rather than plain weights.
    described: bool
    #: The k a source was pre-trained for, from its header.
    pretrained_k: int | None = None


@dataclass(frozen=True)
class DatasetFacts:
    id: str
    num_classes: int
    input_shape: tuple[int, int, int]


@dataclass(frozen=True)
class Inputs:
    """What a job will meet, for its kind's ``fit``."""

    dataset: DatasetFacts
    checkpoint: CheckpointFacts | None = None
    #: The parameters the request named (the rest are defaults the kind may fill in).
    given: frozenset[str] = frozenset()


@dataclass
class JobOutcome:
    """What a job produced: final metrics, per-epoch history, the audit, the weights written.

    ``provenance`` (:func:`cartl_core.provenance.collect`) and, for a transfer, ``source`` (the
    source checkpoint's own robustness) are also in ``metrics``, which the service stores.
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[str, Any] | None = None
    weights: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunContext:
    """Where a job reads and writes, on what device, and whom it tells how it goes."""

    dataset_path: Path
    #: How the dataset was uploaded to be resized (the job's own ``resize`` replaces it).
    dataset_resize: Resize | None = None
    checkpoint_path: Path | None = None
    #: Where a kind that makes a model writes it.
    out_path: Path | None = None
    #: Where a training writes its resumable state after every epoch.
    state_path: Path | None = None
    #: Where a kind keeps extra files that must survive a retry (a compare's candidates).
    extra_dir: Path | None = None
    device: str = "auto"
    on_progress: Callable[[Any], None] | None = None
    on_audit_progress: Callable[[AuditEvent], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_epoch: Callable[[Any, Any], None] | None = None
    #: Processes a training runs on, data-parallel (:mod:`cartl_core.parallel`).
    processes: int = 1

    def needs_out(self, kind: str) -> Path:
        if self.out_path is None:
            raise ConfigError(f"a {kind} job needs an output path for its weights", field="out")
        return self.out_path

    def needs_checkpoint(self, kind: str, what: str = "checkpoint") -> Path:
        if self.checkpoint_path is None:
            raise ConfigError(f"a {kind} needs a {what}", field="checkpoint_id")
        return self.checkpoint_path


@dataclass(frozen=True)
class JobKind:
    """One kind of job; see the module's docstring."""

    name: str
    #: One line, for ``--help``, the API and the dashboard.
    summary: str
    params: type[Any]
    run: Callable[[Any, RunContext], JobOutcome]
    #: What its checkpoint is to it (None: it takes none); a ``model`` or a ``source`` must be
    #: given, ``init`` weights may be.
    checkpoint: CheckpointRole | None = None
    #: Kind-specific checks of the parameters against the inputs, after the shared ones
    #: (:func:`cartl_core.kinds.fit.fit`): the params (perhaps with values filled in from the
    #: checkpoint) and every problem found, each a ConfigError naming its field.
    fit: Callable[[Any, Inputs], tuple[Any, list[ConfigError]]] | None = None
    progress: ProgressStyle = "epochs"
    #: Whether a successful job writes a model (an audit does not).
    makes_weights: bool = True
    #: Whether its result holds a table of candidate models, each downloadable by name.
    candidates: bool = False
    #: A request the API's documentation shows: ``params`` as a client would send them.
    example: Mapping[str, Any] = field(default_factory=dict)

    @property
    def needs_checkpoint(self) -> bool:
        return self.checkpoint in ("model", "source")

    def param_names(self) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(self.params))


_KINDS: dict[str, JobKind] = {}


#: A kind's name: the CLI command, the API's ``kind`` and the service's stored column (20 wide).
_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")


def register(kind: JobKind) -> JobKind:
    """Add ``kind`` to the registry; a second kind of the same name is a bug."""
    if not _NAME.fullmatch(kind.name):
        raise ValueError(f"a job kind's name is 1-20 of a-z, 0-9 and -; got {kind.name!r}")
    if kind.name in _KINDS and _KINDS[kind.name] is not kind:
        raise ValueError(f"a job kind named {kind.name!r} is already registered")
    if not dataclasses.is_dataclass(kind.params) or not callable(
        getattr(kind.params, "check", None)
    ):
        raise TypeError(f"{kind.name}: params must be a dataclass with a check() method")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests that register their own)."""
    _KINDS.pop(name, None)


def job_kinds() -> tuple[JobKind, ...]:
    """Every registered kind, in registration order."""
    return tuple(_KINDS.values())


def find_kind(name: str) -> JobKind | None:
    """The kind named ``name``, or None: a stored job may name a kind no longer registered."""
    return _KINDS.get(name)


def get_kind(name: str) -> JobKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown job kind {name!r}; choose one of {', '.join(_KINDS)}", field="kind"
        ) from None
