"""On-device batches: coverage, determinism, conversion, and exact augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cartl_core import ConfigError
from cartl_core.data import Augmentation, DeviceLoader, Split, augment, dataset_mean_std


def _split(n: int = 50) -> Split:
    return Split(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8), torch.arange(n) % 7)


def test_batches_cover_each_sample_once() -> None:
    split = _split()
    loader = DeviceLoader(split, 16, device="cpu", shuffle=True)
    assert len(loader) == 4
    seen = torch.cat([y for _, y in loader])
    assert sorted(seen.tolist()) == sorted(split.labels.tolist())
    dropping = DeviceLoader(split, 16, device="cpu", shuffle=True, drop_last=True)
    assert len(dropping) == 3
    assert sum(int(y.numel()) for _, y in dropping) == 48


def test_order_is_a_function_of_seed_and_epoch() -> None:
    split = Split(torch.zeros(40, 1, 8, 8), torch.arange(40))
    a = DeviceLoader(split, 40, device="cpu", shuffle=True, seed=3)
    b = DeviceLoader(split, 40, device="cpu", shuffle=True, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    first = next(iter(a))[1]
    assert torch.equal(first, next(iter(b))[1])
    a.set_epoch(6)
    assert not torch.equal(first, next(iter(a))[1])
    a.set_epoch(5)
    assert torch.equal(first, next(iter(a))[1])


def test_uint8_becomes_unit_float() -> None:
    split = _split(10)
    x, y = next(iter(DeviceLoader(split, 10, device="cpu", shuffle=False)))
    assert x.dtype == torch.float32
    assert torch.allclose(x, split.images.float() / 255)
    assert torch.equal(y, split.labels)


def test_crop_is_an_exact_shift_of_the_padded_image() -> None:
    x = torch.rand(20, 3, 8, 8)
    out = augment(x, Augmentation(crop_padding=2), torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(20):
        assert any(
            torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
            for dy in range(5)
            for dx in range(5)
        )


def test_flip_is_identity_or_mirror_and_both_happen() -> None:
    x = torch.rand(40, 1, 8, 8)
    out = augment(x, Augmentation(flip=True), torch.Generator().manual_seed(1))
    same = [torch.equal(out[i], x[i]) for i in range(40)]
    mirrored = [torch.equal(out[i], x[i].flip(-1)) for i in range(40)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert any(same)
    assert any(mirrored)


def test_paper_augmentation_stays_in_range() -> None:
    x = torch.rand(16, 3, 32, 32)
    out = augment(x, Augmentation.paper_cifar(), torch.Generator().manual_seed(2))
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0
    assert not torch.equal(out, x)


def test_augmentation_names() -> None:
    assert Augmentation.from_name("paper") == Augmentation(4, True, 15.0)
    assert not Augmentation.from_name("none").enabled
    with pytest.raises(ConfigError, match="crop-flip"):
        Augmentation.from_name("fancy")


def test_mean_std_matches_torch() -> None:
    split = _split(30)
    mean, std = dataset_mean_std(split, chunk=7)
    x = split.images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        # 8x8 digits: none (a 1 px shift is an eighth of the image; 4 px would be half).
        ((1, 8, 8), Augmentation.none()),
        ((3, 12, 12), Augmentation.none()),
        ((1, 28, 28), Augmentation(crop_padding=4)),
        # Small colour images are not assumed to be natural photos either.
        ((3, 16, 16), Augmentation(crop_padding=2)),
        # CIFAR-like: exactly the paper's augmentation.
        ((3, 32, 32), Augmentation.paper_cifar()),
        ((3, 64, 64), Augmentation(crop_padding=8, flip=True, rotation_degrees=15.0)),
    ],
)
def test_auto_augmentation_follows_the_data(
    shape: tuple[int, int, int], expected: Augmentation
) -> None:
    assert Augmentation.from_name("auto", shape) == expected


def test_auto_needs_a_shape_and_describe_says_what_runs() -> None:
    with pytest.raises(ConfigError, match="input shape"):
        Augmentation.from_name("auto")
    assert Augmentation.from_name("auto", (1, 8, 8)).describe() == "none"
    assert Augmentation.from_name("auto", (1, 28, 28)).describe() == "crop 4 px"
    assert Augmentation.paper_cifar().describe() == "crop 4 px, flip, rotate 15 deg"
    assert Augmentation.none().describe() == "none"
