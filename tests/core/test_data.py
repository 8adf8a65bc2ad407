"""Every dataset format loads with the right shapes, labels and names; broken input is explained."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cartl_core import ConfigError, DataError, load_dataset
from cartl_core.data import RESIZE_METHODS, Resize

from .data_builders import (
    cifar_tarball,
    imagefolder_files,
    png,
    svhn_mat,
    write_tar,
    write_zip,
)


def _npz(path: Path, **overrides: object) -> Path:
    rng = np.random.default_rng(0)
    arrays: dict[str, object] = {
        "x_train": rng.integers(0, 256, (12, 10, 10, 3), dtype=np.uint8),
        "y_train": np.arange(12) % 3,
        "x_test": rng.integers(0, 256, (6, 10, 10, 3), dtype=np.uint8),
        "y_test": np.arange(6) % 3,
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})  # type: ignore[arg-type]
    return path


def test_npz_uint8_nhwc(tmp_path: Path) -> None:
    data = load_dataset(_npz(tmp_path / "d.npz"))
    assert data.train.images.shape == (12, 3, 10, 10)
    assert data.train.images.dtype == torch.uint8
    assert data.num_classes == 3
    assert data.input_shape == (3, 10, 10)
    assert data.format == "npz"


def test_npz_float_nchw_and_grey_nhw_and_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = load_dataset(
        _npz(
            tmp_path / "f.npz",
            x_train=rng.random((12, 1, 9, 9), dtype=np.float32),
            x_test=rng.random((6, 1, 9, 9), dtype=np.float32),
            class_names=np.array(["a", "b", "c", "d"]),
        )
    )
    assert data.train.images.dtype == torch.float32
    assert data.class_names == ("a", "b", "c", "d")
    grey = load_dataset(
        _npz(
            tmp_path / "g.npz",
            x_train=np.zeros((12, 9, 9), np.uint8),
            x_test=np.zeros((6, 9, 9), np.uint8),
        )
    )
    assert grey.input_shape == (1, 9, 9)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"y_test": None}, "lacks y_test"),
        ({"y_train": np.array([0, 1, -1] * 4)}, ">= 0"),
        ({"y_train": np.arange(12) * 0.5}, "must be integers"),
        ({"y_test": np.array([0, 1, 7, 0, 1, 2])}, "never in the train split"),
        ({"x_train": np.full((12, 3, 10, 10), 2.0, np.float32)}, "must lie in [0, 1]"),
        ({"x_train": np.zeros((12, 10, 10, 7), np.uint8)}, "1-4 channels"),
        ({"y_train": np.arange(11) % 3}, "12 images but labels"),
        ({"class_names": np.array(["a", "b"])}, "only 2 class names"),
        (
            {
                "x_train": np.zeros((12, 4, 4, 3), np.uint8),
                "x_test": np.zeros((6, 4, 4, 3), np.uint8),
            },
            "at least 8x8",
        ),
    ],
)
def test_npz_errors(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(_npz(tmp_path / "bad.npz", **overrides))
    assert message in str(err.value)


def test_npz_object_array_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(
        path,
        x_train=np.array([object()] * 2, dtype=object),
        y_train=np.arange(2),
        x_test=np.zeros((1, 8, 8), np.uint8),
        y_test=np.arange(1),
    )
    with pytest.raises(DataError, match="Python objects"):
        load_dataset(path)


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
@pytest.mark.parametrize("top", ["", "mydata/"])
def test_imagefolder_archives(tmp_path: Path, kind: str, top: str) -> None:
    files = imagefolder_files(top) | {
        f"{top}train/cat/.DS_Store": b"junk",
        f"{top}README.txt": b"hello",
    }
    path = tmp_path / f"imgs.{kind}"
    if kind == "zip":
        write_zip(path, files)
    else:
        write_tar(path, files, compress=kind == "tar.gz")
    data = load_dataset(path)
    assert data.class_names == ("cat", "dog")
    assert data.train.images.shape == (6, 3, 8, 8)
    assert sorted(data.test.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert data.format == "imagefolder"


def test_imagefolder_directory_and_grey(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for c in ("x", "y"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            (tmp_path / "d" / split / c / "0.png").write_bytes(png(mode="L", value=9))
    data = load_dataset(tmp_path / "d")
    assert data.input_shape == (1, 8, 8)


def test_imagefolder_mixed_sizes_need_resize(tmp_path: Path) -> None:
    files = imagefolder_files() | {"train/cat/big.png": png((12, 10))}
    path = write_zip(tmp_path / "mixed.zip", files)
    with pytest.raises(DataError, match=r"differ in size.*resize.*bilinear, bicubic"):
        load_dataset(path)
    assert load_dataset(path, resize=16).input_shape == (3, 16, 16)
    for method in RESIZE_METHODS:
        data = load_dataset(path, resize=Resize(12, method))
        assert data.input_shape == (3, 12, 12)
        assert data.train.images.dtype == torch.uint8


def test_resize_methods_do_what_they_say(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz")
    x = load_dataset(path).train.images
    # Nearest doubles each pixel; area halves by averaging each 2x2 block.
    near = load_dataset(path, resize=Resize(20, "nearest")).train.images
    assert torch.equal(near, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    big = np.random.default_rng(2).integers(0, 256, (12, 20, 20, 3), dtype=np.uint8)
    twice = _npz(tmp_path / "twice.npz", x_train=big, x_test=big[:6])
    area = load_dataset(twice, resize=Resize(10, "area")).train.images
    blocks = torch.from_numpy(big).permute(0, 3, 1, 2).float()
    blocks = blocks.reshape(12, 3, 10, 2, 10, 2).mean(dim=(3, 5))
    assert (area.float() - blocks).abs().max() <= 0.5 + 1e-4  # rounded to 8 bits
    # Bilinear and bicubic stay in the 8-bit range; bicubic overshoots a little, and is clamped.
    for method in ("bilinear", "bicubic"):
        resized = load_dataset(path, resize=Resize(16, method)).test.images
        assert resized.shape == (6, 3, 16, 16)
        assert resized.dtype == torch.uint8


@pytest.mark.parametrize(
    ("size", "method", "field"),
    [(4, "bilinear", "resize"), (2048, "bilinear", "resize"), (True, "bilinear", "resize"),
     (16, "lanczos", "resize_method")],
)  # fmt: skip
def test_a_bad_resize_names_its_field(size: Any, method: Any, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Resize(size, method)
    assert exc.value.field == field


def test_undecodable_image_named(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "bad.zip", imagefolder_files() | {"train/cat/x.png": b"nope"})
    with pytest.raises(DataError, match=r"train/cat/x\.png"):
        load_dataset(path)


def test_test_only_class(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "c.zip", imagefolder_files() | {"test/cow/0.png": png()})
    with pytest.raises(DataError, match="cow"):
        load_dataset(path)


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_tarballs(tmp_path: Path, hundred: bool) -> None:
    data = load_dataset(cifar_tarball(tmp_path / "cifar.tar.gz", hundred))
    assert data.train.images.shape == ((6 if hundred else 30), 3, 32, 32)
    assert data.format == ("cifar100" if hundred else "cifar10")
    assert data.class_names == (("apple", "bee", "cup") if hundred else ("plane", "car", "bird"))


def test_cifar_rows_are_rgb_planes(tmp_path: Path) -> None:
    row = np.arange(3072, dtype=np.int64) % 251
    batch = pickle.dumps({b"data": row.astype(np.uint8)[None].repeat(2, 0), b"labels": [0, 1]})
    files = {f"cifar-10-batches-py/data_batch_{i}": batch for i in range(1, 6)}
    files["cifar-10-batches-py/test_batch"] = batch
    data = load_dataset(write_tar(tmp_path / "c.tar.gz", files))
    img = data.train.images[0]
    assert int(img[0, 0, 1]) == 1  # red plane, row 0, column 1
    assert int(img[1, 0, 0]) == 1024 % 251  # green plane starts after 1024 values
    assert int(img[0, 1, 0]) == 32  # row-major 32 wide


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    evil = pickle.dumps({b"data": Evil(), b"labels": [0]})
    files = {f"cifar-10-batches-py/data_batch_{i}": evil for i in range(1, 6)}
    files["cifar-10-batches-py/test_batch"] = evil
    with pytest.raises(DataError, match="refused to unpickle"):
        load_dataset(write_tar(tmp_path / "evil.tar.gz", files))
    assert not marker.exists()


def test_svhn_sibling_directory_and_archive(tmp_path: Path) -> None:
    train, test = svhn_mat()
    (tmp_path / "train_32x32.mat").write_bytes(train)
    (tmp_path / "test_32x32.mat").write_bytes(test)
    for source in (
        tmp_path / "train_32x32.mat",
        tmp_path,
        write_zip(
            tmp_path / "svhn.zip", {"svhn/train_32x32.mat": train, "svhn/test_32x32.mat": test}
        ),
    ):
        data = load_dataset(source)
        assert data.train.images.shape == (5, 3, 32, 32)
        assert data.train.labels.tolist() == [0, 1, 2, 3, 0]  # 10 means digit 0
        assert data.format == "svhn"


def test_svhn_alone_explains_pair(tmp_path: Path) -> None:
    (tmp_path / "train_32x32.mat").write_bytes(svhn_mat()[0])
    with pytest.raises(DataError, match="side by side"):
        load_dataset(tmp_path / "train_32x32.mat")


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_truncated_archives(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"t.{kind}"
    files = imagefolder_files(per_class=20)
    write_zip(path, files) if kind == "zip" else write_tar(path, files)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated"):
        load_dataset(path)


def test_random_bytes_named_npz(tmp_path: Path) -> None:
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError, match=r"not an \.npz file .*truncated, corrupt or another"):
        load_dataset(path)


def test_unknown_and_missing(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="accepted"):
        load_dataset(tmp_path / "x.csv")
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nothing.npz")


def test_digits_task_is_real_data() -> None:
    pytest.importorskip("sklearn")
    from cartl_core.data.digits import digits_task

    data = digits_task([3, 5, 8])
    assert data.input_shape == (1, 8, 8)
    assert data.class_names == ("3", "5", "8")
    assert float(data.train.images.min()) >= 0.0
    assert float(data.train.images.max()) <= 1.0
