"""Job kinds: one module each, in one registry (see :mod:`cartl_core.kinds.base`).

Importing this package registers the built-in kinds (``pretrain``, ``transfer``, ``audit`` and
``compare``), then every module an installed package names in the entry-point group
``cartl.job_kinds``: a new kind is one more module that calls :func:`register`, in this package
or in a package of one's own, which the CLI, the API, the worker and the dashboard then offer.
"""

from __future__ import annotations

from cartl_core.kinds.base import (
    CheckpointFacts,
    CheckpointRole,
    DatasetFacts,
    Inputs,
    JobKind,
    JobOutcome,
    JobParams,
    ProgressStyle,
    RunContext,
    find_kind,
    get_kind,
    job_kinds,
    register,
    unregister,
)
from cartl_core.kinds.fit import fit

# The built-in kinds, in the order the CLI and the API list them.
from cartl_core.kinds.pretrain import PretrainParams  # isort: skip
from cartl_core.kinds.transfer import TransferParams  # isort: skip
from cartl_core.kinds.audit import AuditParams  # isort: skip
from cartl_core.kinds.compare import CompareParams  # isort: skip

#: The entry-point group of kinds from other packages (``[project.entry-points."cartl.job_kinds"]
#: toy = "my_package.toy_kind"``): each names a module that registers its kind when imported.
ENTRY_POINTS = "cartl.job_kinds"


def _load_installed_kinds() -> None:
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINTS):
        try:
            point.load()
        except Exception as exc:
            # A kind that cannot load would otherwise surface as "unknown job kind" far away.
            raise ImportError(
                f"the job kind {point.name!r} ({point.value}, entry point {ENTRY_POINTS}) failed "
                f"to load: {type(exc).__name__}: {exc}"
            ) from exc


_load_installed_kinds()

__all__ = [
    "ENTRY_POINTS",
    "AuditParams",
    "CheckpointFacts",
    "CheckpointRole",
    "CompareParams",
    "DatasetFacts",
    "Inputs",
    "JobKind",
    "JobOutcome",
    "JobParams",
    "PretrainParams",
    "ProgressStyle",
    "RunContext",
    "TransferParams",
    "find_kind",
    "fit",
    "get_kind",
    "job_kinds",
    "register",
    "unregister",
]
