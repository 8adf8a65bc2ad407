"""Datasets, one kind of uploaded file (:mod:`app.services.uploads`): :data:`DATASETS`.

A dataset upload takes no form field. An upload of bytes the owner has uploaded before, under
the same name (the rule the client applies too, :func:`app.shared.dataset_upload_matches`), is
answered with that row instead of a new one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.db.models import DatasetRow
from app.services.probe import probe_dataset
from app.services.uploads import UploadKind
from app.settings import Settings
from app.shared import DATASET_DEFAULT_NAME, dataset_upload_matches

__all__ = ["DATASETS"]


async def _probe(path: Path, settings: Settings, _options: dict[str, Any]) -> dict[str, Any]:
    return await probe_dataset(
        path, timeout_s=settings.probe_timeout_s, max_extract_bytes=settings.max_extract_bytes
    )


DATASETS = UploadKind(
    name="dataset",
    model=DatasetRow,
    id_prefix="ds",
    default_name=DATASET_DEFAULT_NAME,
    probe=_probe,
    recorded=("format", "num_classes", "class_names", "train_size", "test_size", "input_shape"),
    matches=dataset_upload_matches,
)
