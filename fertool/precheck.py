"""Checks of input paths that need no heavy import (no torch, OpenCV or onnxruntime).

A command runs them before it loads the libraries that do the work, so that a mistyped
path is answered in a fraction of a second instead of after the 2-5 s that importing
torch takes (on a loaded machine far longer).  The functions that open the files check
again, with the same messages: these are early answers, not the only check.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError, DataError

__all__ = ["checkpoint_file", "existing_file", "existing_folder", "weights_source"]


def checkpoint_file(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is an existing file (not a folder)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")


def existing_file(path: str | os.PathLike | None, what: str = "file") -> None:
    """Raise :class:`DataError` when ``path`` is given and does not exist (``what`` names it)."""
    if path is not None and not Path(path).exists():
        raise DataError(f"{path}: {what} not found")


def existing_folder(path: str | os.PathLike | None, what: str = "folder") -> None:
    """Raise :class:`DataError` when ``path`` is given and is not an existing folder."""
    if path is None:
        return
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    if not path.is_dir():
        raise DataError(f"{path}: is a file, expected {what}")


def weights_source(path: str | os.PathLike) -> None:
    """Raise :class:`ModelError` when neither ``path`` nor a TensorFlow ``path.index`` exists
    (the message of :func:`fertool.models.importer.source_kind`)."""
    from .errors import ModelError

    path = Path(path)
    if not path.exists() and not path.with_name(path.name + ".index").exists():
        raise ModelError(f"{path}: no such file or folder (and no {path.name}.index beside it)")
