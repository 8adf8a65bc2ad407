"""Datasets: formats, safe archives, and on-device batches with augmentation."""

from cartl_core.data._types import RESIZE_METHODS, Dataset, Resize, ResizeMethod, Split, resample
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
    "RESIZE_METHODS",
    "ArchiveLimits",
    "Augmentation",
    "Dataset",
    "DeviceLoader",
    "Resize",
    "ResizeMethod",
    "Split",
    "augment",
    "augmented_copy",
    "dataset_mean_std",
    "list_members",
    "load_dataset",
    "resample",
    "safe_extract",
]
