"""``fertool import``: foreign weights -> a fertool checkpoint, whichever kind of file they are.

* Keras HDF5 weight files (``.h5``, ``.h5.gz``): the classification_models ResNet34 the paper
  started from (:mod:`fertool.models.keras`);
* TensorFlow checkpoints of the authors' LHC-Net / LHC-NetC (a prefix, its ``.index``, or the
  folder holding the ``checkpoint`` file; :mod:`fertool.models.tf_checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError
from ..progress import Progress
from .keras import import_keras
from .tf_checkpoint import import_tf_checkpoint, tf_prefix

__all__ = ["import_weights", "source_kind"]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"


def source_kind(source: str | os.PathLike) -> str:
    """``"keras"`` or ``"tensorflow"``; anything else is a :class:`ModelError`."""
    path = Path(source)
    if path.is_file() and path.name.lower().endswith((".h5", ".h5.gz", ".hdf5", ".hdf5.gz")):
        return "keras"
    if tf_prefix(path) is not None:
        return "tensorflow"
    if path.is_file():  # a Keras file under another name
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head == _HDF5_MAGIC or head.startswith(_GZIP_MAGIC):
            return "keras"
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder (and no {path.name}.index beside it)")
    raise ModelError(
        f"{path}: neither a Keras .h5/.h5.gz weight file nor a TensorFlow checkpoint "
        "(a prefix, its .index file, or the folder holding the 'checkpoint' file)"
    )


def import_weights(
    source: str | os.PathLike,
    *,
    input_size: int | None = None,
    num_classes: int | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
) -> dict:
    """A fertool checkpoint from a Keras .h5 file or an authors' TensorFlow checkpoint.

    ``input_size``, ``num_classes`` and ``seed`` (of a head the file lacks) apply to Keras
    files; a TensorFlow checkpoint is the paper's model as published and takes none of them.
    """
    kind = source_kind(source)
    if kind == "keras":
        options = {"input_size": input_size, "num_classes": num_classes, "seed": seed}
        return import_keras(source, **{k: v for k, v in options.items() if v is not None})
    given = [
        name for name, v in (("input_size", input_size), ("num_classes", num_classes), ("seed", seed)) if v is not None
    ]
    if given:
        raise ModelError(
            f"{source}: {', '.join(given)}: not applicable to a TensorFlow checkpoint "
            "(imported as published: the paper's model, 224 px, 7 classes)"
        )
    return import_tf_checkpoint(source, progress=progress)
