"""Datasets: formats, safe archives, and on-device batches with augmentation."""

from cartl_core.data._types import Dataset, Split
from cartl_core.data.archive import ArchiveLimits, list_members, safe_extract
from cartl_core.data.formats import load_dataset
from cartl_core.data.loader import (
    Augmentation,
    DeviceLoader,
    augment,
    augmented_copy,
    dataset_mean_std,
)

__all__ = [
    "ArchiveLimits",
    "Augmentation",
    "Dataset",
    "DeviceLoader",
    "Split",
    "augment",
    "augmented_copy",
    "dataset_mean_std",
    "list_members",
    "load_dataset",
    "safe_extract",
]
