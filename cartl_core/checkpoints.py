"""Self-describing checkpoints.

A CARTL checkpoint is a safetensors file whose header carries the model's description under the
key ``cartl`` (JSON: architecture, classes, input shape, normalisation, block count, residual
scaling, how it was trained, its metrics), so :func:`load_model` rebuilds it from the file alone.

Plain state dicts (``.pt``, ``.pth``, or safetensors without our header) load only through
``torch.load(weights_only=True)``: a pickle that would import or call code is refused before
anything runs; there is no unsafe fallback. Published robust models (RobustBench's zoo, MadryLab
``robustness``, torchvision's ResNets) are recognised from their keys
(:mod:`cartl_core.models.layouts`), with the input normalisation their files carry or their code
applies; anything else needs its architecture named.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cartl_core.errors import CheckpointError, UnsafeCheckpointError
from cartl_core.models import (
    BlockModel,
    ModelSpec,
    build_model,
    create_model,
    default_normalization,
)
from cartl_core.models.layouts import (
    Layout,
    Unwrapped,
    layout_hint,
    recognise,
    unwrap,
    zoo_entry,
    zoo_normalization,
)

__all__ = [
    "FORMAT",
    "PLAIN_FORMAT",
    "describe_model",
    "guess_in_channels",
    "load_model",
    "read_description",
    "save_checkpoint",
    "trained_threat",
]

FORMAT = "cartl-checkpoint/1"
# The ``format`` of a description made for plain weights (no ``cartl`` header in the file).
PLAIN_FORMAT = "plain-state-dict"
_PREFIXES = ("module.", "_orig_mod.")
# Where training scripts nest the weights ("last": RobustBench's Andriushchenko2020 and
# Kireev2021 files, which keep the last and the best epoch's).
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "last")


def save_checkpoint(
    model: BlockModel,
    path: str | Path,
    *,
    class_names: tuple[str, ...] | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model`` as safetensors with its description in the header (atomically)."""
    path = Path(path)
    description = {
        **describe_model(model, class_names=class_names),
        "training": dict(training or {}),
        "metrics": dict(metrics or {}),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={"cartl": json.dumps(description)})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return description


def describe_model(
    model: BlockModel, *, format: str = FORMAT, class_names: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The description of ``model`` that a checkpoint header carries, less training and metrics.

    ``format`` is :data:`FORMAT` for a CARTL checkpoint, :data:`PLAIN_FORMAT` for a description
    made up for plain weights. ``class_names`` default to the class indices in a checkpoint; a
    description of plain weights, which name no classes, says how many there are instead
    (``classes``: "1000 classes, numbered 0-999") rather than list the numbers. ``origin``:
    what :func:`load_model` recognised in published weights, where the model came from them.
    """
    spec = model.spec
    n = spec.num_classes
    description: dict[str, Any] = {
        "format": format,
        "model": spec.to_dict(),
        "num_blocks": model.num_blocks,
        "input_shape": [spec.in_channels, spec.input_size, spec.input_size],
    }
    if class_names:
        description["class_names"] = list(class_names)
    elif format == PLAIN_FORMAT:
        description["classes"] = f"{n} classes, numbered 0-{n - 1} (the weights name none)"
    else:
        description["class_names"] = [str(i) for i in range(n)]
    if model.origin is not None:
        description["origin"] = model.origin
    return description


def _is_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= path.stat().st_size and head[8:9] == b"{"


def read_description(path: str | Path) -> dict[str, Any] | None:
    """The ``cartl`` header of a safetensors checkpoint, or None for plain weights."""
    path = _existing(path)
    if not _is_safetensors(path):
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({exc})") from None
    if "cartl" not in meta:
        return None
    try:
        description: dict[str, Any] = json.loads(meta["cartl"])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path.name}: the cartl header is not valid JSON") from None
    return description


def guess_in_channels(path: str | Path) -> int | None:
    """The input channels of plain weights: the second dimension of the input convolution
    (our models' ``stem``, else the first 4-D tensor).

    Reads the state dict as :func:`load_model` does (safetensors, or
    ``torch.load(weights_only=True)``, which refuses pickled code before running it). None where
    there is no 4-D tensor or the file does not read: :func:`load_model` reports that properly.
    """
    try:
        p = _existing(path)
        unwrapped = unwrap(_read_plain(p))
    except (CheckpointError, OSError):
        return None
    layout = recognise(unwrapped.state, unwrapped.wrapper)
    return layout.in_channels if layout is not None else _input_channels(unwrapped.state)


def _input_channels(sd: Mapping[str, torch.Tensor]) -> int | None:
    convs = [(name, value) for name, value in sd.items() if value.ndim == 4]
    # Safetensors keeps keys sorted by name, so "first" is not the input layer there: our own
    # models name it ``stem``, which is then preferred wherever it sits.
    stems = [value for name, value in convs if name.startswith("stem.")]
    for value in stems or [value for name, value in convs if not name.startswith("normalize.")]:
        return int(value.shape[1])
    return None


def trained_threat(description: Mapping[str, Any] | None) -> tuple[float, str] | None:
    """(eps, norm) of the threat model a checkpoint was made robust against, from its header.

    A pre-trained source records its training attack; a transfer records its source's threat
    model as ``threat`` (it trains on clean data, but inherits that robustness). None for plain
    weights and headers without either.
    """
    training = (description or {}).get("training") or {}
    for key in ("threat", "attack"):
        threat = training.get(key)
        if isinstance(threat, Mapping) and isinstance(threat.get("eps"), int | float):
            return float(threat["eps"]), str(threat.get("norm") or "linf")
    return None


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def _torch_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it was not written with; the restricted
            # unpickler still decides what loads, so the warning adds nothing for the user.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        what = _blocked_global(exc) or "it holds pickled objects, not only tensors"
        raise UnsafeCheckpointError(
            f"{path.name} was refused: loading it would run code ({what}). Save plain tensors "
            "instead: torch.save(model.state_dict(), ...) or safetensors"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"{path.name} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'corrupt file'})"
        ) from None


def _blocked_global(exc: Exception) -> str | None:
    text = str(exc)
    marker = "Unsupported global: GLOBAL "
    if marker in text:
        name = text.split(marker, 1)[1].split()[0]
        return f"it imports {name}"
    return None


def _state_dict(obj: Any, name: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return {_strip(k): v for k, v in obj.items()}
    raise CheckpointError(
        f"{name} holds no state dict (a mapping of parameter names to tensors); "
        "save model.state_dict()"
    )


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _translate(model: BlockModel, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept the names of the code that defines the architecture (torchvision's, timm's,
    RobustBench's, ...): ``model.foreign_keys``. Weights already in our names stay as they are."""
    foreign = model.foreign_keys
    own = model.state_dict()
    if not foreign or all(k in own for k in sd):
        return sd
    return {foreign.get(k, k): v for k, v in sd.items()}


def _load_into(model: BlockModel, sd: dict[str, torch.Tensor], name: str) -> None:
    own = model.state_dict()
    # Normalisation buffers are ours; weights trained elsewhere do not carry them.
    for key in ("normalize.mean", "normalize.std"):
        sd.setdefault(key, own[key])
    parts = _mismatch(own, sd)
    if parts:
        raise CheckpointError(
            f"{name} does not fit {model.spec.arch} with {model.spec.num_classes} classes; "
            + "; ".join(parts)
        )
    model.load_state_dict(sd, strict=False)


def _mismatch(
    own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], shapes: bool = True
) -> list[str]:
    """The keys that keep ``sd`` from loading into a model with state ``own``, a few of each."""
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if shapes and k in sd and sd[k].shape != own[k].shape
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{label}: {', '.join(items[:5])}{more}")
    return parts


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int = 32,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> BlockModel:
    """Rebuild a model from a CARTL checkpoint, or from plain weights.

    Plain weights in a layout :mod:`cartl_core.models.layouts` recognises (RobustBench's zoo,
    MadryLab ``robustness``, torchvision's ResNets, timm's Swin Transformers and XCiTs) need no
    ``arch``; anything else names its architecture, and ``arch`` also picks one of the
    architectures that share a layout. RobustBench's ensembles and composite models are refused.
    The input normalisation folded into the model is ``mean``/``std`` where given, else the one
    the file carries (robustness' normalizer, RobustBench's ``normalize`` wrapper or
    ``mu``/``sigma``), else the zoo entry's where ``arch`` names one
    (``robustbench:Wong2020Fast``: the entries whose code normalises but whose files do not say
    so, :data:`~cartl_core.models.layouts.ZOO_NORMALIZATION`), else the architecture's published one
    (:func:`cartl_core.models.default_normalization`).
    What was recognised is recorded in ``model.origin`` (and so in :func:`describe_model`).

    ``num_classes`` defaults to the size of the checkpoint's last layer, ``in_channels`` to the
    input convolution's. The model takes ``input_size`` inputs; a recognised layout whose weights
    fit one side only (timm's Swin Transformers) is built at that side and resamples them.
    """
    p = _existing(path)
    description = read_description(p)
    if description is not None:
        model = build_model(ModelSpec.from_dict(description["model"]))
        _load_into(model, _safetensors(p), p.name)
        model.origin = description.get("origin")
        model.eval()
        return model
    unwrapped = unwrap(_read_plain(p))
    sd = unwrapped.state
    layout = recognise(sd, unwrapped.wrapper)
    # An entry named is a choice of the user's too (it sets the normalisation).
    arch_given = arch is not None
    entry = zoo_entry(arch)
    if entry is not None:
        if layout is None:
            raise CheckpointError(
                f"{p.name} is not in a layout of RobustBench's zoo cartl recognises, so it "
                f"cannot load as {arch}; give its architecture instead"
            )
        arch = None  # the entry's network is what its keys say
    if arch is None:
        if layout is None:
            hint = layout_hint(sd)
            raise CheckpointError(
                f"{p.name} holds plain weights in no layout cartl recognises"
                + (f" ({hint})" if hint else "")
                + "; give the architecture (--arch / arch; `cartl models` lists them) and, if "
                "the last layer is not the class count, num_classes"
            )
        arch = layout.arch
    if in_channels is None:
        in_channels = layout.in_channels if layout is not None else _input_channels(sd) or 3
    normalization_given = mean is not None or std is not None
    mean = mean if mean is not None else unwrapped.mean
    std = std if std is not None else unwrapped.std
    entry_stats = None
    if entry is not None and layout is not None and mean is None and std is None:
        entry_stats = zoo_normalization(entry, layout.num_classes)
        if entry_stats is not None:
            mean, std = entry_stats
    # Weights whose shapes hold at one input side only (a Swin's attention windows) are built at
    # that side, and the model resamples the inputs it is fed.
    built = input_size
    if layout is not None and layout.fixed_size and layout.arch == arch:
        built = layout.input_size
    try:
        model = _build_for(p.name, sd, arch, num_classes, in_channels, built, mean, std)
    except CheckpointError as exc:
        raise CheckpointError(str(exc) + _suggestion(layout, arch, sd)) from None
    if built != input_size:
        model.set_input_size(input_size)
    model.origin = _origin(
        model, layout, unwrapped, arch_given=arch_given, normalization_given=normalization_given
    )
    if entry is not None:
        model.origin["zoo_entry"] = entry
        if entry_stats is not None:
            model.origin["normalization"]["source"] = (
                f"RobustBench's {entry} entry, as the zoo's code runs it (the file does not say)"
            )
    model.eval()
    return model


def _build_for(
    name: str,
    sd: dict[str, torch.Tensor],
    arch: str,
    num_classes: int | None,
    in_channels: int,
    input_size: int,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> BlockModel:
    """``arch`` built for plain weights ``sd`` and loaded with them."""
    # Only names and shapes are needed to read the class count: no memory, no initialisation.
    with torch.device("meta"):
        probe = create_model(arch, 2, in_channels=in_channels, input_size=input_size)
    sd = _translate(probe, sd)
    fc_key = f"blocks.{probe.num_blocks - 1}.fc.weight"
    if num_classes is None:
        if fc_key not in sd:
            # Normalisation buffers are ours, not the file's.
            own = {k: v for k, v in probe.state_dict().items() if not k.startswith("normalize.")}
            parts = _mismatch(own, sd, shapes=False)
            raise CheckpointError(
                f"{name} does not fit {arch}: " + "; ".join(parts) + "; check the architecture"
            )
        num_classes = int(sd[fc_key].shape[0])
    model = create_model(
        arch, num_classes, in_channels=in_channels, input_size=input_size, mean=mean, std=std
    )
    _load_into(model, sd, name)
    return model


def _suggestion(layout: Layout | None, arch: str, sd: Mapping[str, torch.Tensor]) -> str:
    """What to try instead, where the weights are in a layout other than ``arch``'s."""
    if layout is not None and layout.arch != arch:
        return (
            f". Its keys are {layout.description}'s: give the architecture {layout.arch} (or "
            "leave it out to load them as recognised)"
        )
    hint = layout_hint(sd)
    return f" ({hint})" if hint else ""


def _origin(
    model: BlockModel,
    layout: Layout | None,
    unwrapped: Unwrapped,
    *,
    arch_given: bool,
    normalization_given: bool,
) -> dict[str, Any]:
    """What :func:`load_model` found in plain weights, for the model's description."""
    spec = model.spec
    mine = layout is not None and layout.arch == spec.arch
    if normalization_given:
        source = "given"
    elif unwrapped.mean is not None:
        source = f"the file: {unwrapped.normalization_keys}"
    else:
        source = default_normalization(spec.arch, spec.num_classes)[2]
    return {
        "layout": layout.name if layout is not None else None,
        "recognised_as": layout.description if layout is not None else None,
        "arch": spec.arch,
        # "recognised": from the keys alone, so the same bytes always load as the same model.
        "arch_source": "given" if arch_given else "recognised",
        "wrapper": unwrapped.wrapper,
        "normalization": {"mean": list(spec.mean), "std": list(spec.std), "source": source},
        "ignored": list(unwrapped.ignored),
        # The side the published weights were trained at (inputs of another size are resampled
        # or resized to it, or fine-tuned as they are).
        "trained_input_size": layout.input_size if mine and layout is not None else None,
    }


def _read_plain(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of plain weights, prefixes such as ``module.`` taken off."""
    return (
        _safetensors(path) if _is_safetensors(path) else _state_dict(_torch_load(path), path.name)
    )


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return {_strip(k): v for k, v in load_file(str(path), device="cpu").items()}
    except Exception as exc:
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({exc})") from None
