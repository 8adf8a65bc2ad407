"""Responses for uploaded files, of either kind: :class:`CheckpointOut`, :class:`DatasetOut`.

What the kinds share is written once: the config (read from rows, one example each) and the
annotated fields both have. Each model lists its fields in the order of its JSON.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import UtcDateTime

__all__ = ["CheckpointOut", "DatasetOut", "DatasetResize", "UploadOut"]

Filename = Annotated[str, Field(description="The uploaded file's name.")]
InputShape = Annotated[list[int], Field(description="Channels, height, width.")]
Size = Annotated[int, Field(description="Bytes.")]


class UploadOut(BaseModel):
    """Base of both kinds' responses: read from the row."""

    model_config = ConfigDict(from_attributes=True)


PLAIN_CHECKPOINT_EXAMPLE: dict[str, Any] = {
    "id": "ckpt_019abc3f2e10a1b2c3d4e6",
    "filename": "Salman2020Do_R50.pt",
    "arch": "torchvision:resnet50",
    "num_classes": 1000,
    "num_blocks": 17,
    "input_shape": [3, 32, 32],
    "sha256": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
    "size": 102504213,
    "created_at": "2026-11-25T10:02:00Z",
    "description": {
        "format": "plain-state-dict",
        "model": {"arch": "torchvision:resnet50", "num_classes": 1000},
        "num_blocks": 17,
        "input_shape": [3, 32, 32],
        "classes": "1000 classes, numbered 0-999 (the weights name none)",
        "origin": {
            "layout": "madrylab-robustness:resnet50",
            "recognised_as": "torchvision resnet50",
            "arch": "torchvision:resnet50",
            "arch_source": "recognised",
            "wrapper": "madrylab-robustness",
            "normalization": {
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
                "source": "the file: normalizer.new_mean, normalizer.new_std (robustness' "
                "InputNormalize)",
            },
            "ignored": ["attacker.* (320 tensors: the attack's reference to the same network)"],
            "trained_input_size": 224,
        },
    },
}

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
    model_config = ConfigDict(
        json_schema_extra={"examples": [CHECKPOINT_EXAMPLE, PLAIN_CHECKPOINT_EXAMPLE]}
    )

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
        description="The checkpoint's self-description (model spec, training, metrics). For "
        "plain state dicts, the one made for them: the model spec the weights loaded as, the "
        "class count (classes: the weights name none) and, under origin, what was recognised: "
        "the layout read from the keys (e.g. robustbench:dm-wrn-70-16, "
        "madrylab-robustness:resnet50; null if none, when arch was given), whether arch was "
        "recognised or given, the input normalisation folded into the model and where it came "
        "from, and the tensors left out (a MadryLab attacker's copy)."
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
    "resize": {"size": 32, "method": "bilinear"},
    "sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    "size": 18433024,
    "created_at": "2026-11-25T10:01:00Z",
}


class DatasetResize(BaseModel):
    size: int = Field(description="Every image's side after the resize, in pixels.")
    method: str = Field(description="bilinear, bicubic, nearest or area.")


class DatasetOut(UploadOut):
    model_config = ConfigDict(json_schema_extra={"examples": [DATASET_EXAMPLE]})

    id: str
    filename: Filename
    format: str = Field(description="npz, imagefolder, cifar10, cifar100 or svhn.")
    num_classes: int
    class_names: list[str]
    train_size: int
    test_size: int
    input_shape: InputShape = Field(description="Channels, height, width (after any resize).")
    resize: DatasetResize | None = Field(
        default=None,
        description="The resize the upload asked for, which every job that reads the dataset "
        "applies (its own resize parameter replaces it); null: the images as they are.",
    )
    sha256: str
    size: Size
    created_at: UtcDateTime
