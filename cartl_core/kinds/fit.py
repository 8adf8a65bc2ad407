"""A job's parameters checked against the checkpoint and dataset it will meet, before it runs.

:func:`fit` runs the checks every kind shares (channels, class counts, the architecture of plain
weights), then the kind's own (``JobKind.fit``). Every problem is a :class:`ConfigError` naming a
parameter, or ``checkpoint_id``/``dataset_id`` where the input is at fault; all are raised at
once (the first, with the rest in ``more``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

from cartl_core.errors import CartlError, ConfigError
from cartl_core.kinds.base import CheckpointFacts, Inputs, JobKind
from cartl_core.models import model_info

__all__ = [
    "RESIZE_WITHOUT_MODEL",
    "fit",
    "image_size_errors",
    "k_in_range",
    "residual_scale_error",
]

RESIZE_WITHOUT_MODEL = (
    "resize true means the model's input size, and a new model has none; give a side in "
    "pixels (e.g. 32)"
)


def fit(kind: JobKind, params: Any, inputs: Inputs) -> Any:
    """``params`` with what the checkpoint knows filled in (the architecture of plain weights, a
    source's class count, a source's pre-trained k where k was left out); raises ConfigError."""
    errors: list[ConfigError] = []
    inputs = _plain_at_data_size(params, inputs)
    checkpoint, dataset = inputs.checkpoint, inputs.dataset
    if checkpoint is not None:
        params = _fill_from_checkpoint(kind, params, inputs, errors)
        if checkpoint.input_shape[0] != dataset.input_shape[0]:
            errors.append(
                ConfigError(
                    f"checkpoint {checkpoint.id} takes {checkpoint.input_shape[0]}-channel images "
                    f"but dataset {dataset.id} has {dataset.input_shape[0]} channels",
                    field="dataset_id",
                )
            )
        # A source gets a new classifier; any other checkpoint classifies the data as it is.
        if kind.checkpoint != "source" and dataset.num_classes > checkpoint.num_classes:
            errors.append(
                ConfigError(
                    f"dataset {dataset.id} has {dataset.num_classes} classes but checkpoint "
                    f"{checkpoint.id} classifies {checkpoint.num_classes}",
                    field="dataset_id",
                )
            )
    if kind.fit is not None:
        params, more = kind.fit(params, inputs)
        errors += more
    if errors:
        first, *rest = errors
        raise ConfigError(str(first), field=first.field, more=tuple(rest))
    return params


def _plain_at_data_size(params: Any, inputs: Inputs) -> Inputs:
    """Plain weights are built at the size of the images the job reads (what their upload
    recorded is a default, the data unknown then): the checks see that size."""
    checkpoint, dataset = inputs.checkpoint, inputs.dataset
    if checkpoint is None or checkpoint.described:
        return inputs
    resize = getattr(params, "resize", False)
    size = dataset.input_shape[1] if resize is False or resize is True else int(resize)
    shape = (checkpoint.input_shape[0], size, size)
    return replace(inputs, checkpoint=replace(checkpoint, input_shape=shape))


def _fill_from_checkpoint(
    kind: JobKind, params: Any, inputs: Inputs, errors: list[ConfigError]
) -> Any:
    checkpoint = inputs.checkpoint
    assert checkpoint is not None
    names = {f.name for f in fields(params)}
    if "arch" not in names:
        return params
    if "arch" in inputs.given and params.arch is not None and params.arch != checkpoint.arch:
        errors.append(
            ConfigError(
                f"checkpoint {checkpoint.id} is a {checkpoint.arch}; leave arch out or set it "
                "to that",
                field="arch",
            )
        )
        return params
    if kind.checkpoint == "init":
        return replace(params, arch=checkpoint.arch)  # initial weights fix the architecture
    if checkpoint.described:
        return params  # the header names everything
    changes: dict[str, Any] = {"arch": checkpoint.arch}
    if "source_classes" in names:
        if params.source_classes not in (None, checkpoint.num_classes):
            errors.append(
                ConfigError(
                    f"checkpoint {checkpoint.id} has {checkpoint.num_classes} classes",
                    field="source_classes",
                )
            )
            return params
        changes["source_classes"] = checkpoint.num_classes
    return replace(params, **changes)


def k_in_range(k: int | Sequence[int] | None, blocks: int) -> list[ConfigError]:
    """``k`` (or each of several) between 1 and the model's block count."""
    if k is None:
        return []
    if isinstance(k, int):
        if 1 <= k <= blocks:
            return []
        return [ConfigError(f"must be between 1 and {blocks} (the model's block count)", field="k")]
    bad = [v for v in k if not 1 <= v <= blocks]
    if not bad:
        return []
    return [
        ConfigError(
            f"k={bad[0]} is out of range: every k must be between 1 and {blocks} (the model's "
            "block count)",
            field="k",
        )
    ]


def image_size_errors(resize: bool | int, inputs: Inputs) -> list[ConfigError]:
    """What the job's images cannot be fitted to: ``resize`` true (the model's input size)
    without a checkpoint to take it from, or non-square images left as they are.

    Images of another size than a checkpoint's are no error: the job resizes them where
    ``resize`` says, and otherwise the model resamples them inside itself (plain weights are
    built at the data's size).
    """
    checkpoint, dataset = inputs.checkpoint, inputs.dataset
    if resize is True and checkpoint is None:
        return [ConfigError(RESIZE_WITHOUT_MODEL, field="resize")]
    # resize true resizes to the size a CARTL checkpoint records; plain weights record none.
    resized = resize is not False and (
        resize is not True or bool(checkpoint and checkpoint.described)
    )
    height, width = dataset.input_shape[1], dataset.input_shape[2]
    if not resized and height != width:
        return [
            ConfigError(
                f"dataset {dataset.id} has {height}x{width} images; models take square ones: "
                f"set resize to a side (e.g. {min(height, width)})",
                field="resize",
            )
        ]
    return []


def residual_scale_error(checkpoint: CheckpointFacts, field: str, fix: str) -> list[ConfigError]:
    """An architecture whose residual sums cannot be rescaled (neft and cartl rescale them)."""
    c, size = checkpoint.input_shape[0], checkpoint.input_shape[1]
    try:
        info = model_info(checkpoint.arch, checkpoint.num_classes, c, size)
    except CartlError:
        return []
    if info.residual_scalable:
        return []
    return [
        ConfigError(
            f"{checkpoint.arch} has residual sums that cannot be rescaled; {fix}", field=field
        )
    ]
