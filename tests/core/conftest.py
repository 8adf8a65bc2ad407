"""Small, fast, learnable data for cartl_core tests."""

from __future__ import annotations

import pytest
import torch

from cartl_core.config import ScheduleConfig
from cartl_core.data import Dataset, Split


def make_dataset(
    num_classes: int = 4,
    n_train: int = 128,
    n_test: int = 64,
    channels: int = 1,
    size: int = 8,
    seed: int = 0,
    noise: float = 0.15,
) -> Dataset:
    """Class templates plus noise: learnable in a few epochs, not trivially robust."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, channels, size, size, generator=g) * 0.6 + 0.2

    def split(n: int) -> Split:
        y = torch.arange(n) % num_classes
        x = templates[y] + noise * torch.randn(n, channels, size, size, generator=g)
        return Split(x.clamp(0, 1).float(), y.long())

    return Dataset(
        split(n_train), split(n_test), tuple(f"c{i}" for i in range(num_classes)), "synthetic"
    )


@pytest.fixture
def tiny_data() -> Dataset:
    return make_dataset()


@pytest.fixture
def fast_schedule() -> ScheduleConfig:
    return ScheduleConfig(epochs=2, batch_size=32, lr=0.05)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
