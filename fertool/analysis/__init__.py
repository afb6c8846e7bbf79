"""What the paper measures after training (SPEC §6): ablation, head analysis, run statistics.

* :mod:`fertool.analysis.ablation` — ``ablate()``: switch LHC modules off or reset them to
  their untrained initial weights, without retraining, and measure test accuracy; runs the
  head analysis and draws the attention pictures on the same images.
* :mod:`fertool.analysis.heads` — correlation between the outputs of the heads of each LHC
  module (accumulated batch by batch), LHC-NetC controller weights.
* :mod:`fertool.analysis.report` — ``report()``: Table 7 of the paper from any number of
  evaluated runs.
* :mod:`fertool.analysis.plots` — the pictures (matplotlib, Agg backend).

This package module stays light (no torch import) so that ``fertool report`` starts fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from ..errors import FertoolError
from ..tempfiles import temp_dir

__all__ = ["atomic_dir"]


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; on success it replaces ``path``.

    Outputs are built in the temporary folder, so a failure (or Ctrl-C) leaves ``path``
    exactly as it was; an existing folder ``path`` is removed only once the new one is
    complete (an existing file is refused).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():  # never replace a user's file by a folder
        raise FertoolError(f"{path}: exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = temp_dir(path, ".old")
        os.replace(path, old / path.name)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
