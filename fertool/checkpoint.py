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

The model itself is rebuilt from ``arch`` and ``arch_args`` by
:func:`fertool.surgery.model_from_checkpoint`.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import CLASS_NAMES, __version__
from .errors import CheckpointError, DataError, ModelError, printable
from .files import atomic_path
from .precheck import checkpoint_file

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
    buffer = io.BytesIO()  # in memory first: torch's own file writer fails on a full disk with
    torch.save(dict(ckpt), buffer)  # "unexpected pos" or worse; Python's says ENOSPC and the file
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    archs: Iterable[str] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict:
    """Load a fertool checkpoint safely (``weights_only=True``) and validate it.

    The entries must have their types (:func:`structure_problems`) and the weights must fit
    the architecture that ``arch_args`` describe (:func:`check_model_fits`), so a damaged
    or hand-made file fails here, in one line, not later in a traceback.  ``archs``
    restricts the accepted architectures; anything else is a one-line
    :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    checkpoint_file(path)
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except Exception as exc:  # torch raises many types for foreign files
        raise CheckpointError(f"{path}: {_unreadable(path, exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fertool checkpoint (no '{FORMAT}' marker)")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {printable(repr(version))} is newer than this fertool supports "
            f"({FORMAT_VERSION})"
        )
    problems = structure_problems(ckpt)
    if problems:
        raise CheckpointError(f"{path}: not a valid fertool checkpoint: {'; '.join(problems)}")
    if archs is not None:
        archs = list(archs)
        if ckpt.get("arch") not in archs:
            raise CheckpointError(
                f"{path}: is a '{printable(ckpt.get('arch'))}' checkpoint, this command needs one of: {', '.join(archs)}"
            )
    check_model_fits(ckpt, str(path))
    check_values(ckpt, str(path))
    return ckpt


def check_values(ckpt: Mapping[str, Any], where: str) -> None:
    """Refuse weights holding NaN or infinity, and class names that do not fit the head.

    A model with a NaN weight outputs NaN for every image: its evaluation would be written
    as a result (accuracy of argmax over NaN) and its predictions say ``p nan``.
    """
    for key, value in (ckpt.get("state_dict") or {}).items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where}: weight {printable(key)} holds NaN or infinite values")
    names = ckpt.get("class_names")
    num_classes = (ckpt.get("arch_args") or {}).get("num_classes", len(CLASS_NAMES))  # the models' default
    if names and isinstance(num_classes, int) and len(names) != num_classes:
        raise CheckpointError(f"{where}: records {len(names)} class names for a model of {num_classes} classes")


#: Entries of a checkpoint: the type each must have (None allowed where listed).
_FIELDS: dict[str, tuple[type, ...]] = {
    "arch": (str,),
    "arch_args": (dict,),
    "state_dict": (dict,),
    "optimizer_state": (dict, type(None)),
    "stage": (str, type(None)),
    "epoch": (int, type(None)),
    "metrics": (dict,),
    "recipe": (dict, type(None)),
    "class_names": (list,),
    "lineage": (list,),
    "extra": (dict,),
}


def structure_problems(ckpt: Mapping[str, Any]) -> list[str]:
    """What is wrong with the entries of a loaded checkpoint dict (empty: nothing).

    Checks presence and types only; :func:`check_model_fits` checks the weights against
    the architecture.  Names in the messages are escaped (they come from the file).
    """
    problems = []
    for key, types in _FIELDS.items():
        if key not in ckpt:
            problems.append(f"'{key}' is missing")
        elif not isinstance(ckpt[key], types) or isinstance(ckpt[key], bool):
            problems.append(
                f"'{key}' is a {type(ckpt[key]).__name__}, expected "
                + " or ".join("null" if t is type(None) else t.__name__ for t in types)
            )
    if problems:
        return problems
    if not all(isinstance(k, str) for k in ckpt["arch_args"]):
        problems.append("'arch_args' has keys that are not strings")
    bad = [k for k, v in ckpt["state_dict"].items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        problems.append(
            f"'state_dict' holds {len(bad)} entries that are not named tensors (e.g. {printable(repr(bad[0]))[:80]})"
        )
    if not all(isinstance(c, str) for c in ckpt["class_names"]):
        problems.append("'class_names' holds entries that are not strings")
    return problems


#: The largest model a checkpoint may describe: 50x the paper's LHC-Net (32.4M parameters).
MAX_PARAMETERS = 2_000_000_000
#: Input sizes a checkpoint may declare (the paper uses 224).
INPUT_SIZES = range(32, 2049)


def check_model_fits(ckpt: Mapping[str, Any], where: str = "checkpoint") -> None:
    """Refuse ``arch_args`` that build no sensible model, or weights of the wrong shapes.

    The model is first built on PyTorch's ``meta`` device, which allocates nothing, so an
    absurd ``arch_args`` (a billion-unit layer) is refused before any memory is taken;
    every tensor of ``state_dict`` is then compared with the model's by name and shape.
    """
    from .models import build_model  # local import: models import torch-heavy modules

    arch, args = ckpt["arch"], ckpt["arch_args"]
    size = args.get("input_size", 224)
    if not isinstance(size, int) or isinstance(size, bool) or size not in INPUT_SIZES:
        raise CheckpointError(
            f"{where}: arch_args.input_size must be an integer {INPUT_SIZES.start}.."
            f"{INPUT_SIZES.stop - 1}, got {printable(repr(size))[:40]}"
        )
    try:
        with torch.device("meta"):
            model = build_model(arch, **args)
    except ModelError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError, KeyError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"{where}: arch_args do not describe a '{printable(arch)}' model ({printable(first)})"
        ) from None
    expected = model.state_dict()
    count = sum(t.numel() for t in expected.values())
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{where}: arch_args describe a model of {count:,} values, more than fertool "
            f"accepts ({MAX_PARAMETERS:,}); the checkpoint is not a sensible fertool model"
        )
    wrong = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in ckpt["state_dict"].items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        name, got, want = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise CheckpointError(
            f"{where}: tensor '{printable(name)}' has shape {list(got)}, architecture "
            f"'{printable(arch)}' needs {list(want)}{more}"
        )


def _unreadable(path: Path, exc: Exception) -> str:
    """Why ``torch.load`` could not read ``path``, in words, from the file's first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        head = b""
    if not head:
        return "is empty (0 bytes), not a checkpoint (an interrupted copy or download?)"
    if head.startswith(b"\x89HDF"):
        return "is an HDF5 file (a Keras .h5?), not a fertool checkpoint; convert it with `fertool import`"
    if head.startswith(b"\x1f\x8b"):
        return "is gzip-compressed, not a fertool checkpoint (a Keras .h5.gz goes through `fertool import`)"
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            begins = " ".join(text.split())[:40]
            return f"is a text file (it begins '{printable(begins)}'), not a fertool checkpoint"
    message = str(exc)
    if "Weights only load failed" in message or "WeightsUnpickler" in message:
        return (
            "is not a fertool checkpoint: it holds Python objects (or pickle codes) beyond tensors and plain "
            "values, which fertool never unpickles, so that no code from a file runs"
        )
    if head.startswith(b"PK\x03\x04"):
        return "is truncated or corrupted (its zip structure is incomplete: an interrupted copy or download?)"
    first = (message.strip().splitlines() or [type(exc).__name__])[0]
    return f"not a readable fertool checkpoint ({type(exc).__name__}: {printable(first)})"


def checkpoint_classes(ckpt: Mapping[str, Any]) -> tuple[str, ...]:
    """The class names of a checkpoint, index = output (``class0``... if it records none that fit)."""
    names = tuple(ckpt.get("class_names") or CLASS_NAMES)
    num_classes = int((ckpt.get("arch_args") or {}).get("num_classes", len(names)))
    return names if len(names) == num_classes else tuple(f"class{i}" for i in range(num_classes))


def check_same_classes(model_classes: Iterable[str], data_classes: Iterable[str], *, model: str, data: str) -> None:
    """Refuse to use a model of one class set on data of another; the message shows both lists."""
    model_classes, data_classes = tuple(model_classes), tuple(data_classes)
    if model_classes != data_classes and sorted(model_classes) == sorted(data_classes):
        raise DataError(reordered_classes_message(data, data_classes, model, model_classes))
    if model_classes != data_classes:
        raise DataError(
            f"{data}: the data's {len(data_classes)} classes ({', '.join(data_classes)}) are not the "
            f"{len(model_classes)} classes of {model} ({', '.join(model_classes)}): a model of one class set "
            "cannot be trained or evaluated on data of another"
        )


def reordered_classes_message(data: str, data_classes: Sequence[str], model: str, model_classes: Sequence[str]) -> str:
    """The message for data whose classes are the model's names in another order: label
    ``i`` would mean another class, and the recipe key ``data.classes`` fixes the order."""
    return (
        f"{data}: the data's {len(data_classes)} classes are the same names as {model}'s, in another order "
        f"(data: {', '.join(data_classes)}; model: {', '.join(model_classes)}), so a label number would mean "
        f"another class; prepare the data again with the recipe key data.classes listing the model's order: "
        f"data.classes=[{', '.join(model_classes)}]"
    )


#: Data sets of photos: their models see colour face crops fitted the way ``prepare --folder`` does.
PHOTO_DATASETS = ("folder", "rafdb")


def photo_preparation(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``prepare`` settings of a model trained on photos (class folders, RAF-DB), else None."""
    data = (ckpt.get("extra") or {}).get("data") or {}
    if data.get("dataset") not in PHOTO_DATASETS or not isinstance(data.get("prepare"), Mapping):
        return None
    return dict(data["prepare"])


def lineage_entry(path: str | os.PathLike, ckpt: Mapping[str, Any]) -> dict:
    """The record a derived checkpoint keeps of its parent."""
    return {
        "path": str(path),
        "arch": ckpt.get("arch"),
        "stage": ckpt.get("stage"),
        "epoch": ckpt.get("epoch"),
    }
