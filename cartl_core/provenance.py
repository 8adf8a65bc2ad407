"""Where a result came from: code version, inputs (by sha256), seed, device, settings and time.

:func:`cartl_core.jobs.run_job` attaches :func:`collect`'s dict to every job's outcome (and to its
``metrics["provenance"]``, which the service stores with the job), so a report can say which code
ran on which files. Everything here fails soft: an unknown commit is None, not an error.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from cartl_core._version import __version__

__all__ = ["collect", "git_commit", "package_version", "sha256_file", "source_summary"]

_CHUNK = 1 << 20
#: Set by builds (the Docker image) that are not git checkouts.
COMMIT_ENV = "CARTL_COMMIT"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def package_version() -> str:
    """The installed distribution's version, else the package's own ``__version__``."""
    try:
        return metadata.version("cartl")
    except metadata.PackageNotFoundError:
        return __version__


def git_commit() -> str | None:
    """``$CARTL_COMMIT``, else HEAD of the checkout the package runs from (None when unknown)."""
    return os.environ.get(COMMIT_ENV) or _checkout_commit()


@lru_cache(maxsize=1)
def _checkout_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    if not head:
        return None
    return f"{head}+local-changes" if dirty else head


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    )
    return done.stdout.strip()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _file(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    if not path.is_file():
        # A dataset may be an ImageFolder directory: no one file to hash.
        return {"name": path.name, "sha256": None, "bytes": None}
    return {"name": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def collect(
    *,
    kind: str,
    params: Mapping[str, Any],
    device: str,
    started: datetime,
    wall_seconds: float,
    dataset_path: Path | None = None,
    checkpoint_path: Path | None = None,
    weights_path: Path | None = None,
    attack_settings: Mapping[str, Any] | None = None,
    device_name: str | None = None,
) -> dict[str, Any]:
    """The provenance of one job, as plain JSON-ready data.

    ``checkpoint`` is the input (the audited model, the transfer's source, a pre-training's
    initial weights), ``weights`` the file the job wrote.
    """
    finished = datetime.now(UTC)
    return {
        "cartl_version": package_version(),
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "platform": platform.platform(terse=True),
        "kind": kind,
        "seed": params.get("seed"),
        "device": device,
        "device_name": device_name,
        "dataset": _file(dataset_path),
        "checkpoint": _file(checkpoint_path),
        "weights": _file(weights_path),
        "attack_settings": dict(attack_settings) if attack_settings is not None else None,
        "params": dict(params),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "wall_seconds": round(wall_seconds, 3),
    }


def source_summary(description: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A transfer source's own robustness, from its checkpoint header (None if it has none).

    The numbers were measured on the source's data when it was trained, not on the target's.
    """
    if not description:
        return None
    metrics = description.get("metrics") or {}
    audit = metrics.get("audit") or {}
    model = description.get("model") or {}
    training = description.get("training") or {}
    config = audit.get("config") or {}
    eps = audit.get("eps", _first(config.get("eps")))
    if eps is None and audit.get("attacks"):
        eps = audit["attacks"][0].get("eps")
    out = {
        "arch": model.get("arch"),
        "method": training.get("method"),
        "classes": len(description.get("class_names") or []) or None,
        "clean_accuracy": metrics.get("clean_accuracy", audit.get("clean_accuracy")),
        "robust_accuracy": metrics.get("robust_accuracy", audit.get("robust_accuracy")),
        "worst_case_accuracy": audit.get("worst_case_accuracy"),
        "samples": audit.get("samples"),
        "norm": audit.get("norm", config.get("norm")),
        "eps": eps,
        "by_eps": audit.get("by_eps"),
    }
    if out["clean_accuracy"] is None and out["robust_accuracy"] is None:
        return None
    return out


def _first(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return value[0] if value else None
    return value
