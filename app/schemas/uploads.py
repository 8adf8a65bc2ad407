"""Responses for uploaded files, of either kind: :class:`CheckpointOut`, :class:`DatasetOut`.

What the kinds share is written once: the config (read from rows, one example each) and the
annotated fields both have. Each model lists its fields in the order of its JSON.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import UtcDateTime

__all__ = ["CheckpointOut", "DatasetOut", "UploadOut"]

Filename = Annotated[str, Field(description="The uploaded file's name.")]
InputShape = Annotated[list[int], Field(description="Channels, height, width.")]
Size = Annotated[int, Field(description="Bytes.")]


class UploadOut(BaseModel):
    """Base of both kinds' responses: read from the row."""

    model_config = ConfigDict(from_attributes=True)


CHECKPOINT_EXAMPLE: dict[str, Any] = {
    "id": "ckpt_019abc3f2e10a1b2c3d4e5",
    "filename": "resnet18-fdm.safetensors",
    "arch": "resnet18-cifar",
    "num_classes": 10,
    "num_blocks": 9,
    "input_shape": [3, 32, 32],
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "size": 44791234,
    "created_at": "2026-11-25T10:00:00Z",
    "description": {
        "format": "cartl-checkpoint/1",
        "model": {"arch": "resnet18-cifar", "num_classes": 10},
        "num_blocks": 9,
        "input_shape": [3, 32, 32],
    },
}


class CheckpointOut(UploadOut):
    model_config = ConfigDict(json_schema_extra={"examples": [CHECKPOINT_EXAMPLE]})

    id: str
    filename: Filename
    arch: str = Field(description="Architecture, e.g. small-cnn, resnet18-cifar, wrn-34-10.")
    num_classes: int
    num_blocks: int = Field(description="Block count T; a job's k must lie in 1..T.")
    input_shape: InputShape
    sha256: str
    size: Size
    created_at: UtcDateTime
    description: dict[str, Any] = Field(
        description="The checkpoint's self-description (model spec, training, metrics); for "
        "plain state dicts, what the upload's arch and num_classes gave."
    )


DATASET_EXAMPLE: dict[str, Any] = {
    "id": "ds_019abc3f2e10f6e5d4c3b2",
    "filename": "cifar10-subset.npz",
    "format": "npz",
    "num_classes": 10,
    "class_names": ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "train_size": 5000,
    "test_size": 1000,
    "input_shape": [3, 32, 32],
    "sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    "size": 18433024,
    "created_at": "2026-11-25T10:01:00Z",
}


class DatasetOut(UploadOut):
    model_config = ConfigDict(json_schema_extra={"examples": [DATASET_EXAMPLE]})

    id: str
    filename: Filename
    format: str = Field(description="npz, imagefolder, cifar10, cifar100 or svhn.")
    num_classes: int
    class_names: list[str]
    train_size: int
    test_size: int
    input_shape: InputShape
    sha256: str
    size: Size
    created_at: UtcDateTime
