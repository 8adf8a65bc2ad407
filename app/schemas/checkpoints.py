"""Checkpoint responses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import UtcDateTime

__all__ = ["CheckpointOut"]

EXAMPLE: dict[str, Any] = {
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


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [EXAMPLE]})

    id: str
    filename: str = Field(description="The uploaded file's name.")
    arch: str = Field(description="Architecture, e.g. small-cnn, resnet18-cifar, wrn-34-10.")
    num_classes: int
    num_blocks: int = Field(description="Block count T; a job's k must lie in 1..T.")
    input_shape: list[int] = Field(description="Channels, height, width.")
    sha256: str
    size: int = Field(description="Bytes.")
    created_at: UtcDateTime
    description: dict[str, Any] = Field(
        description="The checkpoint's self-description (model spec, training, metrics); for "
        "plain state dicts, what the upload's arch and num_classes gave."
    )
