"""Dataset responses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import UtcDateTime

__all__ = ["DatasetOut"]

EXAMPLE: dict[str, Any] = {
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


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [EXAMPLE]})

    id: str
    filename: str = Field(description="The uploaded file's name.")
    format: str = Field(description="npz, imagefolder, cifar10, cifar100 or svhn.")
    num_classes: int
    class_names: list[str]
    train_size: int
    test_size: int
    input_shape: list[int] = Field(description="Channels, height, width.")
    sha256: str
    size: int = Field(description="Bytes.")
    created_at: UtcDateTime
