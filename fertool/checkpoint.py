"""Checkpoints: one self-describing format, plain types only, written atomically.

A checkpoint is a dict that ``torch.load(..., weights_only=True)`` can read (so loading
never executes code from the file)::

    format            "fertool-checkpoint"
    format_version    1
    fertool_version   "0.1.0"
    arch              registry name of the architecture ("resnet34v2", "lhc_net", ...)
    arch_args         keyword arguments that rebuild the model (plain types)
    state_dict        model weights
    optimizer_state   optimiser state dict or None
    stage             training stage that produced it ("1".."4", "controller") or None
    epoch             epochs completed or None
    metrics           dict of floats (val_accuracy, ...)
    recipe            the resolved recipe as a plain dict, or None
    class_names       list of class names, index = label
    lineage           list of {"path", "arch", "stage", "epoch"} of the checkpoints it came from
    extra             free-form plain dict (early-stopping state, RNG state, lhc_seed...)

The model itself is rebuilt with :func:`fertool.models.build_model` from ``arch`` and
``arch_args`` (see :func:`model_from_checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from . import CLASS_NAMES, __version__
from .errors import CheckpointError, DataError
from .utils import atomic_path

FORMAT = "fertool-checkpoint"
FORMAT_VERSION = 1


def make_checkpoint(
    *,
    arch: str,
    arch_args: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any] | None = None,
    stage: str | None = None,
    epoch: int | None = None,
    metrics: Mapping[str, float] | None = None,
    recipe: Mapping[str, Any] | None = None,
    class_names: Iterable[str] = CLASS_NAMES,
    lineage: list[dict] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Assemble a checkpoint dict of plain types (tensors moved to CPU)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fertool_version": __version__,
        "arch": arch,
        "arch_args": dict(arch_args),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "optimizer_state": optimizer_state,
        "stage": stage,
        "epoch": epoch,
        "metrics": dict(metrics or {}),
        "recipe": dict(recipe) if recipe is not None else None,
        "class_names": list(class_names),
        "lineage": list(lineage or []),
        "extra": dict(extra or {}),
    }


def save_checkpoint(path: str | os.PathLike, ckpt: Mapping[str, Any]) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temp file + ``os.replace``)."""
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: refusing to write a dict that is not a fertool checkpoint")
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(ckpt), tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    archs: Iterable[str] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict:
    """Load a fertool checkpoint safely (``weights_only=True``).

    ``archs`` restricts the accepted architectures; anything else is a one-line
    :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable fertool checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fertool checkpoint (no '{FORMAT}' marker)")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this fertool supports ({FORMAT_VERSION})"
        )
    if archs is not None:
        archs = list(archs)
        if ckpt.get("arch") not in archs:
            raise CheckpointError(
                f"{path}: is a '{ckpt.get('arch')}' checkpoint, this command needs one of: {', '.join(archs)}"
            )
    return ckpt


def model_from_checkpoint(ckpt: Mapping[str, Any], *, strict: bool = True) -> torch.nn.Module:
    """Rebuild the model described by ``ckpt`` and load its weights."""
    from .models import build_model  # local import: models import torch-heavy modules

    model = build_model(ckpt["arch"], **ckpt["arch_args"])
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"checkpoint weights do not fit architecture '{ckpt['arch']}': {'; '.join(parts)}")
    return model


def checkpoint_classes(ckpt: Mapping[str, Any]) -> tuple[str, ...]:
    """The class names of a checkpoint, index = output (``class0``... if it records none that fit)."""
    names = tuple(ckpt.get("class_names") or CLASS_NAMES)
    num_classes = int((ckpt.get("arch_args") or {}).get("num_classes", len(names)))
    return names if len(names) == num_classes else tuple(f"class{i}" for i in range(num_classes))


def check_same_classes(model_classes: Iterable[str], data_classes: Iterable[str], *, model: str, data: str) -> None:
    """Refuse to use a model of one class set on data of another; the message shows both lists."""
    model_classes, data_classes = tuple(model_classes), tuple(data_classes)
    if model_classes != data_classes:
        raise DataError(
            f"{data}: the data's {len(data_classes)} classes ({', '.join(data_classes)}) are not the "
            f"{len(model_classes)} classes of {model} ({', '.join(model_classes)}): a model of one class set "
            "cannot be trained or evaluated on data of another"
        )


def lineage_entry(path: str | os.PathLike, ckpt: Mapping[str, Any]) -> dict:
    """The record a derived checkpoint keeps of its parent."""
    return {
        "path": str(path),
        "arch": ckpt.get("arch"),
        "stage": ckpt.get("stage"),
        "epoch": ckpt.get("epoch"),
    }
