"""Checkpoints, one kind of uploaded file (:mod:`app.services.uploads`): :data:`CHECKPOINTS`.

Self-describing CARTL files need no form field, nor do published robust models whose layout the
probe recognises from their keys (RobustBench, MadryLab robustness, torchvision ResNets: see
:mod:`cartl_core.models.layouts`; the answer's ``description.origin`` says what was recognised).
Other plain state dicts name their architecture (and may give the class count, input channels
and size). An upload of bytes the owner has uploaded
before, with fields that would record the same row (the rule the client applies too,
:func:`app.shared.checkpoint_upload_matches`), is answered with that row instead of a new one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.db.models import Checkpoint
from app.errors import UnprocessableError
from app.services.ids import ARCH_PATTERN
from app.services.probe import ProbeError, probe_checkpoint
from app.services.uploads import UploadKind, int_field
from app.settings import Settings
from app.shared import CHECKPOINT_DEFAULT_NAME, CHECKPOINT_FORM_FIELDS, checkpoint_upload_matches

__all__ = ["CHECKPOINTS"]


def _options(fields: Mapping[str, str]) -> dict[str, Any]:
    arch = fields.get("arch", "").strip() or None
    if arch is not None and not re.match(ARCH_PATTERN, arch):
        raise UnprocessableError.one(
            "arch", "an architecture name such as small-cnn, wrn-34-10 or torchvision:resnet50"
        )
    return {
        "arch": arch,
        "num_classes": int_field(fields, "num_classes", minimum=2),
        "in_channels": int_field(fields, "in_channels", minimum=1),
        "input_size": int_field(fields, "input_size", minimum=8),
    }


async def _probe(path: Path, settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    try:
        return await probe_checkpoint(path, timeout_s=settings.probe_timeout_s, **options)
    except ProbeError as exc:
        # The architecture was the client's choice: the error is on that field.
        if exc.kind == "ArchitectureError" and options["arch"] is not None:
            raise ProbeError(exc.message, exc.kind, "arch") from None
        raise


CHECKPOINTS = UploadKind(
    name="checkpoint",
    model=Checkpoint,
    id_prefix="ckpt",
    default_name=CHECKPOINT_DEFAULT_NAME,
    probe=_probe,
    recorded=("arch", "num_classes", "num_blocks", "input_shape", "description"),
    matches=checkpoint_upload_matches,
    form_fields=CHECKPOINT_FORM_FIELDS,
    options=_options,
)
