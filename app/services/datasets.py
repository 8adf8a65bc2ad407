"""Datasets, one kind of uploaded file (:mod:`app.services.uploads`): :data:`DATASETS`.

A dataset upload may ask for its images to be resized (``resize``, a side in pixels, and
``resize_method``): a folder of images of several sizes needs it. The row records the resize and
the shape after it, and every job that reads the file resizes it the same way (its own
``resize`` parameter replaces it). An upload of bytes the owner has uploaded before, under the
same name and with the same resize (the rule the client applies too,
:func:`app.shared.dataset_upload_matches`), is answered with that row instead of a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.db.models import DatasetRow
from app.errors import UnprocessableError
from app.services.probe import probe_dataset
from app.services.uploads import UploadKind, int_field
from app.settings import Settings
from app.shared import DATASET_DEFAULT_NAME, DATASET_FORM_FIELDS, dataset_upload_matches
from cartl_core.data import RESIZE_METHODS
from cartl_core.data._types import MAX_SIDE, MIN_SIDE

__all__ = ["DATASETS"]


def _options(fields: Mapping[str, str]) -> dict[str, Any]:
    """The form's resize, checked: each bad field named in a 422."""
    size = int_field(fields, "resize", minimum=MIN_SIDE)
    if size is not None and size > MAX_SIDE:
        raise UnprocessableError.one("resize", f"must be <= {MAX_SIDE}; got {size}")
    method = fields.get("resize_method", "").strip()
    if method and method not in RESIZE_METHODS:
        raise UnprocessableError.one(
            "resize_method", f"must be one of {', '.join(RESIZE_METHODS)}; got {method[:40]!r}"
        )
    if method and size is None:
        raise UnprocessableError.one(
            "resize_method", "names how to resize: give resize too (a side in pixels, e.g. 32)"
        )
    return {} if size is None else {"resize": size, "resize_method": method or "bilinear"}


async def _probe(path: Path, settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    return await probe_dataset(
        path,
        timeout_s=settings.probe_timeout_s,
        max_extract_bytes=settings.max_extract_bytes,
        **options,
    )


DATASETS = UploadKind(
    name="dataset",
    model=DatasetRow,
    id_prefix="ds",
    default_name=DATASET_DEFAULT_NAME,
    probe=_probe,
    recorded=(
        "format",
        "num_classes",
        "class_names",
        "train_size",
        "test_size",
        "input_shape",
        "resize",
    ),
    matches=dataset_upload_matches,
    form_fields=DATASET_FORM_FIELDS,
    options=_options,
)
