"""Dataset formats: npz, ImageFolder (archive or folder), CIFAR-10/100 python tarballs, SVHN .mat.

``load_dataset(path)`` detects the format and returns a validated :class:`Dataset`. Untrusted files
are never unpickled freely: CIFAR's pickles go through an allow-list unpickler that can rebuild
numpy arrays and nothing else, npz is read with ``allow_pickle=False``, and archives are
validated before anything is read (see :mod:`cartl_core.data.archive`).
"""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
import torch

from cartl_core._stop import check_stop
from cartl_core.data._types import MIN_SIDE, RESIZE_METHODS, Dataset, Resize, Split, resample
from cartl_core.data.archive import ArchiveLimits, archive_kind, iter_files, list_members
from cartl_core.errors import DataError

__all__ = ["load_dataset"]

FORMATS = (
    ".npz (x_train, y_train, x_test, y_test), ImageFolder .zip/.tar/.tar.gz or folder "
    "(train/<class>/, test/<class>/), the CIFAR-10/100 python tarballs, SVHN "
    "train_32x32.mat + test_32x32.mat"
)
#: Each resize method as the image library names it: its BILINEAR and BICUBIC are antialiased
#: when they shrink, as :func:`cartl_core.data._types.resample` is; BOX is the area average.
_PIL_FILTERS = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST", "area": "BOX"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def load_dataset(
    path: str | Path, *, limits: ArchiveLimits | None = None, resize: int | Resize | None = None
) -> Dataset:
    """Load a dataset from any supported format.

    ``resize`` makes every image ``size`` x ``size``: a :class:`Resize` names the method, a side
    alone is resized bilinearly (antialiased when it shrinks). Images of several sizes (an
    image folder) need it; a :class:`ConfigError` names ``resize`` or ``resize_method`` where
    the value is wrong.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"dataset not found: {p}")
    how = Resize.of(resize)
    data = _dispatch(p, limits or ArchiveLimits(), how)
    if how is not None and data.format != "imagefolder":
        data = Dataset(
            _resized(data.train, how), _resized(data.test, how), data.class_names, data.format
        )
    _check_side(data)
    return data


def _dispatch(p: Path, limits: ArchiveLimits, resize: Resize | None) -> Dataset:
    if p.is_dir():
        return _from_directory(p, resize)
    name = p.name.lower()
    if name.endswith((".npz", ".zip")) and not zipfile.is_zipfile(p):
        what = "an .npz file (a zip of .npy arrays)" if name.endswith(".npz") else "a zip archive"
        raise DataError(f"{p.name} is not {what}: it is truncated, corrupt or another format")
    if name.endswith(".npz"):
        return _npz(p)
    if name.endswith(".mat"):
        return _svhn_sibling(p)
    kind = archive_kind(p)
    if kind is None:
        raise DataError(f"{p.name}: unsupported dataset format; accepted: {FORMATS}")
    names = {m.name for m in list_members(p, limits) if not m.is_dir}
    if kind == "zip" and any(n in names for n in ("x_train.npy", "y_train.npy")):
        return _npz(p)
    if (cifar := _cifar_layout(names)) is not None:
        return _cifar(p, limits, *cifar)
    if svhn := _find_svhn(names):
        files = dict(iter_files(p, limits, set(svhn.values())))
        return _svhn(files[svhn["train"]], files[svhn["test"]], p.name)
    if _imagefolder_root(names) is not None:
        return _imagefolder(iter_files(p, limits), resize, p.name)
    raise DataError(
        f"{p.name}: the archive holds no recognised dataset layout; expected "
        "train/<class>/<image> and test/<class>/<image> (optionally under one top folder), "
        "a CIFAR python tarball, or SVHN's train_32x32.mat and test_32x32.mat"
    )


def _check_side(data: Dataset) -> None:
    _, h, w = data.input_shape
    if min(h, w) < MIN_SIDE:
        raise DataError(
            f"images are {h}x{w}; at least {MIN_SIDE}x{MIN_SIDE} is needed (use resize)"
        )


def _resized(split: Split, how: Resize, chunk: int = 1024) -> Split:
    """Resized in chunks: a float copy of a whole large split would be 4x its uint8 size."""
    parts = []
    for start in range(0, len(split), chunk):
        check_stop("resizing the dataset")
        images = split.subset(torch.arange(start, min(start + chunk, len(split))))
        x = resample(images.float_images(), how.size, how.method).clamp_(0, 1)
        if split.images.dtype == torch.uint8:
            x = x.mul_(255).round_().to(torch.uint8)
        parts.append(x)
    return Split(torch.cat(parts), split.labels)


# --- npz ---------------------------------------------------------------------------------------


def _npz(p: Path) -> Dataset:
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{p.name} holds Python objects (pickled arrays), which are refused; save "
                "numeric arrays only"
            ) from None
        raise DataError(f"{p.name}: not a readable .npz file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{p.name}: not a readable .npz file ({exc})") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise DataError(
            f"{p.name} lacks {', '.join(missing)}; it needs x_train, y_train, x_test, y_test"
        )
    names = _class_names(arrays.get("class_names"), p.name)
    train = Split(_npz_images(arrays["x_train"], "x_train"), _labels(arrays["y_train"], "y_train"))
    test = Split(_npz_images(arrays["x_test"], "x_test"), _labels(arrays["y_test"], "y_test"))
    return _assemble(train, test, names, "npz")


def _npz_images(a: np.ndarray, key: str) -> torch.Tensor:
    if a.dtype == np.uint8:
        if a.ndim == 3:
            a = a[..., None]
        if a.ndim != 4 or not 1 <= a.shape[-1] <= 4:
            raise DataError(
                f"{key}: uint8 images must be NHWC (or NHW) with 1-4 channels; got shape {a.shape}"
            )
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    if a.dtype.kind == "f":
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim != 4 or not 1 <= a.shape[1] <= 4:
            raise DataError(
                f"{key}: float images must be NCHW (or NHW) with 1-4 channels; got shape {a.shape}"
            )
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not np.isfinite(a).all() or lo < 0 or hi > 1:
            raise DataError(
                f"{key}: float images must lie in [0, 1]; found {lo:.3g}..{hi:.3g} "
                "(divide by 255, or store uint8)"
            )
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    raise DataError(f"{key}: images must be uint8 or float; got {a.dtype}")


def _labels(a: np.ndarray | list[int], key: str) -> torch.Tensor:
    arr = np.asarray(a)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{key}: labels must be one integer per image; got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise DataError(f"{key}: labels must be integers; got {arr.dtype}")
    if arr.size and int(arr.min()) < 0:
        raise DataError(f"{key}: labels must be >= 0; found {int(arr.min())}")
    return torch.from_numpy(arr.astype(np.int64))


def _class_names(a: np.ndarray | None, source: str) -> tuple[str, ...] | None:
    if a is None:
        return None
    if a.dtype.kind not in "US" or a.ndim != 1:
        raise DataError(f"{source}: class_names must be a 1-D array of strings")
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in a.tolist())


def _assemble(train: Split, test: Split, names: tuple[str, ...] | None, fmt: str) -> Dataset:
    for key, split in (("train", train), ("test", test)):
        if len(split) == 0:
            raise DataError(f"the {key} split is empty")
    n_classes = int(max(train.labels.max(), test.labels.max())) + 1
    if names is not None:
        if n_classes > len(names):
            raise DataError(
                f"labels go up to {n_classes - 1} but only {len(names)} class names are given"
            )
    else:
        names = tuple(str(i) for i in range(n_classes))
    unseen = sorted(set(test.labels.unique().tolist()) - set(train.labels.unique().tolist()))
    if unseen:
        raise DataError(
            f"class(es) {unseen[:5]} appear in the test split but never in the train split"
        )
    return Dataset(train, test, names, fmt)


# --- CIFAR -------------------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings, numbers and numpy arrays; refuses every other global."""

    ALLOWED: ClassVar[dict[tuple[str, str], tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        target = self.ALLOWED.get((module, name))
        if target is None:
            raise DataError(
                f"refused to unpickle {module}.{name}: the file would run code, and only "
                "numpy arrays are allowed in a CIFAR batch"
            )
        return super().find_class(*target)


def _unpickle(data: bytes, member: str) -> dict[str, Any]:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{member}: not a readable CIFAR batch ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{member}: a CIFAR batch must be a dict")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_layout(names: set[str]) -> tuple[list[str], str, str, str, str] | None:
    for folder in {n.split("/")[0] for n in names}:
        if f"{folder}/data_batch_1" in names and f"{folder}/test_batch" in names:
            train = sorted(n for n in names if n.startswith(f"{folder}/data_batch_"))
            return train, f"{folder}/test_batch", f"{folder}/batches.meta", "labels", "label_names"
        if f"{folder}/train" in names and f"{folder}/test" in names and f"{folder}/meta" in names:
            return (
                [f"{folder}/train"],
                f"{folder}/test",
                f"{folder}/meta",
                "fine_labels",
                "fine_label_names",
            )
    return None


def _cifar(
    p: Path,
    limits: ArchiveLimits,
    train_members: list[str],
    test_member: str,
    meta: str,
    label_key: str,
    names_key: str,
) -> Dataset:
    files = dict(iter_files(p, limits, {*train_members, test_member, meta}))

    def split(members: list[str]) -> Split:
        xs, ys = [], []
        for m in members:
            batch = _unpickle(files[m], m)
            if "data" not in batch or label_key not in batch:
                raise DataError(f"{m}: a CIFAR batch needs 'data' and {label_key!r}")
            x = np.asarray(batch["data"])
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
                raise DataError(f"{m}: 'data' must be uint8 rows of 3072 values; got {x.shape}")
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[label_key]))
        return Split(torch.from_numpy(np.concatenate(xs)), _labels(np.concatenate(ys), label_key))

    names = None
    if meta in files:
        raw = _unpickle(files[meta], meta).get(names_key)
        if raw is not None:
            names = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in raw)
    fmt = "cifar100" if label_key == "fine_labels" else "cifar10"
    return _assemble(split(train_members), split([test_member]), names, fmt)


# --- SVHN --------------------------------------------------------------------------------------


def _find_svhn(names: Iterable[str]) -> dict[str, str] | None:
    found = {}
    for n in names:
        base = PurePosixPath(n).name
        for key, fname in zip(("train", "test"), SVHN_FILES, strict=True):
            if base == fname:
                found[key] = n
    return found if len(found) == 2 else None


def _svhn_split(data: bytes, source: str) -> Split:
    from scipy.io import loadmat

    try:
        mat = loadmat(io.BytesIO(data))
    except Exception as exc:
        raise DataError(f"{source}: not a readable .mat file ({exc})") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{source}: an SVHN .mat file needs arrays X and y")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.shape[0]:
        raise DataError(f"{source}: X must be (32, 32, 3, N) matching y; got {x.shape}")
    labels = _labels(y.astype(np.int64), source)
    if labels.numel() and (labels.min() < 1 or labels.max() > 10):
        raise DataError(f"{source}: SVHN labels must lie in 1..10 (10 is digit 0)")
    labels = torch.where(labels == 10, 0, labels)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1).astype(np.uint8)))
    return Split(images, labels)


def _svhn(train: bytes, test: bytes, source: str) -> Dataset:
    return _assemble(
        _svhn_split(train, f"{source}: train_32x32.mat"),
        _svhn_split(test, f"{source}: test_32x32.mat"),
        tuple(str(i) for i in range(10)),
        "svhn",
    )


def _svhn_sibling(p: Path) -> Dataset:
    folder = p.parent
    paths = [folder / f for f in SVHN_FILES]
    if p.name not in SVHN_FILES or not all(f.is_file() for f in paths):
        raise DataError(
            f"{p.name}: SVHN needs train_32x32.mat and test_32x32.mat side by side; pass either "
            "file, their folder, or an archive holding both"
        )
    return _svhn(paths[0].read_bytes(), paths[1].read_bytes(), folder.name)


# --- ImageFolder -------------------------------------------------------------------------------


def _imagefolder_root(names: Iterable[str]) -> str | None:
    """ "" when train/ and test/ are at the top, "top/" under one folder, None otherwise."""
    names = list(names)
    tops = {n.split("/")[0] for n in names}
    for prefix in ("", *(f"{t}/" for t in tops)):
        has = {
            split: any(n.startswith(f"{prefix}{split}/") for n in names)
            for split in ("train", "test")
        }
        if all(has.values()):
            return prefix
    return None


def _from_directory(p: Path, resize: Resize | None) -> Dataset:
    files = [f for f in p.rglob("*") if f.is_file() and not f.is_symlink()]
    rel = {f.relative_to(p).as_posix(): f for f in files}
    if svhn := _find_svhn(rel):
        return _svhn(rel[svhn["train"]].read_bytes(), rel[svhn["test"]].read_bytes(), p.name)
    if _imagefolder_root(rel) is None:
        raise DataError(f"{p}: expected train/<class>/ and test/<class>/ folders, or SVHN files")
    return _imagefolder(((n, f.read_bytes()) for n, f in rel.items()), resize, p.name)


def _imagefolder(files: Iterable[tuple[str, bytes]], resize: Resize | None, source: str) -> Dataset:
    from PIL import Image

    images: dict[str, list[tuple[str, Image.Image]]] = {"train": [], "test": []}
    entries = list(files)
    root = _imagefolder_root(n for n, _ in entries) or ""
    for name, data in entries:
        check_stop("decoding the dataset")
        parts = name[len(root) :].split("/") if name.startswith(root) else []
        if len(parts) != 3 or parts[0] not in images or parts[2].startswith("."):
            continue
        if PurePosixPath(parts[2]).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        images[parts[0]].append((parts[1], _decode(data, name)))
    classes = sorted({c for c, _ in images["train"]})
    if not classes:
        raise DataError(f"{source}: train/ holds no images in class folders")
    missing = sorted({c for c, _ in images["test"]} - set(classes))
    if missing:
        raise DataError(f"{source}: test classes {missing[:5]} have no train/ folder")
    grey = all(
        img.mode in ("1", "L", "LA", "I", "I;16") for _, img in images["train"] + images["test"]
    )
    mode = "L" if grey else "RGB"
    sizes = {img.size for _, img in images["train"] + images["test"]}
    if resize is None and len(sizes) > 1:
        a, b = sorted(sizes)[:2]
        raise DataError(
            f"{source}: images differ in size ({a[0]}x{a[1]}, {b[0]}x{b[1]}, ...); "
            "resize them all to one size (resize, e.g. 32, and resize_method: "
            f"{', '.join(RESIZE_METHODS)})"
        )
    index = {c: i for i, c in enumerate(classes)}

    def split(key: str) -> Split:
        arrays = []
        for _, img in images[key]:
            check_stop("decoding the dataset")
            img = img.convert(mode)
            if resize is not None:
                img = img.resize(
                    (resize.size, resize.size),
                    getattr(Image.Resampling, _PIL_FILTERS[resize.method]),
                )
            arr = np.asarray(img, dtype=np.uint8)
            arrays.append(arr[..., None] if arr.ndim == 2 else arr)
        if not arrays:
            raise DataError(f"{source}: {key}/ holds no images")
        x = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())
        y = torch.tensor([index[c] for c, _ in images[key]], dtype=torch.int64)
        return Split(x, y)

    return _assemble(split("train"), split("test"), tuple(classes), "imagefolder")


def _decode(data: bytes, name: str) -> Any:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except Exception as exc:
        raise DataError(f"{name}: not a readable image ({type(exc).__name__})") from None
    return img
