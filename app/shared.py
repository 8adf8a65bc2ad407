"""What the client (:mod:`app.client`) and the server both apply: plain rules on plain values.

The client must not depend on the server, so this module imports no database, web framework or
service code; the services import their rules from here, and so does the client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cartl_core.checkpoints import PLAIN_FORMAT

__all__ = [
    "CHECKPOINT_DEFAULT_NAME",
    "CHECKPOINT_FORM_FIELDS",
    "DATASET_DEFAULT_NAME",
    "DATASET_FORM_FIELDS",
    "FINISHED",
    "PLAIN_INPUT_SIZE",
    "UPLOAD_MATCHES",
    "checkpoint_upload_matches",
    "dataset_resize",
    "dataset_upload_matches",
    "display_name",
]

#: The statuses a job ends in (``JobStatus`` values; a ``JobStatus`` is a ``str``, so
#: ``status in FINISHED`` works for both).
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

# For a file part without a name; loaders then judge the file by its content.
CHECKPOINT_DEFAULT_NAME = "checkpoint.bin"
DATASET_DEFAULT_NAME = "dataset.bin"

#: A checkpoint upload's form fields besides ``file``: for plain state dicts, which do not
#: describe themselves.
CHECKPOINT_FORM_FIELDS = {"arch", "num_classes", "in_channels", "input_size"}
#: A dataset upload's form fields besides ``file``: resize every image to ``resize`` x
#: ``resize`` pixels with ``resize_method`` (a folder of images of several sizes needs it).
DATASET_FORM_FIELDS = {"resize", "resize_method"}
#: The input side the probe gives plain weights uploaded without ``input_size``.
PLAIN_INPUT_SIZE = 32
_INT_FIELDS = ("num_classes", "in_channels", "input_size")


def display_name(name: str, default: str) -> str:
    """The client's file name as shown back to it: printable, at most 255 characters."""
    return "".join(c for c in name if c.isprintable()).strip()[:255] or default


def checkpoint_upload_matches(
    recorded: Mapping[str, Any], filename: str, fields: Mapping[str, str]
) -> bool:
    """Whether uploading the bytes of the checkpoint ``recorded`` (a row, as the API shows it)
    again, named ``filename`` with the form ``fields``, would record the same checkpoint.

    The server decides with it whether to reuse the row (before the probe), the client whether
    to upload at all; both err towards a new upload. Every field given must equal what the row
    recorded. A field left out gives what the probe derives: from the file for a self-describing
    checkpoint (which ignores the fields); for plain weights ``arch`` comes from their keys
    where the probe recognised them (the row's ``description.origin.arch_source``), else it is
    required (without it the upload is refused: no reuse), ``num_classes`` and ``in_channels``
    come from the weights (the same bytes give the same values) and ``input_size`` is
    :data:`PLAIN_INPUT_SIZE`.
    """
    if set(fields) - CHECKPOINT_FORM_FIELDS:
        return False
    if recorded.get("filename") != display_name(filename, CHECKPOINT_DEFAULT_NAME):
        return False
    shape = recorded.get("input_shape") or []
    if len(shape) != 3:
        return False
    actual: dict[str, Any] = {
        "arch": recorded.get("arch"),
        "num_classes": recorded.get("num_classes"),
        "in_channels": shape[0],
        "input_size": shape[1],
    }
    given: dict[str, Any] = {"arch": fields.get("arch", "").strip() or None}
    for name in _INT_FIELDS:
        raw = fields.get(name, "").strip()
        try:
            given[name] = int(raw) if raw else None
        except ValueError:
            return False
    if any(value is not None and value != actual[name] for name, value in given.items()):
        return False
    description = recorded.get("description") or {}
    if description.get("format") == PLAIN_FORMAT:
        recognised = (description.get("origin") or {}).get("arch_source") == "recognised"
        if given["arch"] is None and not recognised:
            return False
        if given["input_size"] is None and actual["input_size"] != PLAIN_INPUT_SIZE:
            return False
    return True


def dataset_resize(fields: Mapping[str, str]) -> dict[str, Any] | None:
    """The resize a dataset upload's form asks for, as the row records it (``{"size": 32,
    "method": "bilinear"}``; the method defaults to bilinear), or None for none. ValueError for
    a value that is not one (the server names the field; see :mod:`app.services.datasets`)."""
    raw = fields.get("resize", "").strip()
    method = fields.get("resize_method", "").strip()
    if not raw:
        if method:
            raise ValueError("resize_method needs resize")
        return None
    return {"size": int(raw), "method": method or "bilinear"}


def dataset_upload_matches(
    recorded: Mapping[str, Any], filename: str, fields: Mapping[str, str]
) -> bool:
    """Whether uploading the bytes of the dataset ``recorded`` (a row, as the API shows it)
    again, named ``filename`` with the form ``fields``, would record the same dataset.

    What it records besides the bytes' own summary is the file name, which also picks the
    loader (by its suffix), so the name must be the same, and the resize the form asks for
    (:data:`DATASET_FORM_FIELDS`; none must mean none). Unknown or bad fields: no reuse. The
    server also compares the stored name (the storage key's).
    """
    if set(fields) - DATASET_FORM_FIELDS:
        return False
    try:
        resize = dataset_resize(fields)
    except ValueError:
        return False
    return resize == recorded.get("resize") and recorded.get("filename") == display_name(
        filename, DATASET_DEFAULT_NAME
    )


#: The rule of each upload collection, by its API path (``/v1/checkpoints``, ``/v1/datasets``).
UPLOAD_MATCHES: Mapping[str, Callable[[Mapping[str, Any], str, Mapping[str, str]], bool]] = {
    "checkpoints": checkpoint_upload_matches,
    "datasets": dataset_upload_matches,
}
