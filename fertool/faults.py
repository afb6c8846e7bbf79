"""Pause points for the fault-injection tests (``tests/test_faults.py``); inert otherwise.

The tests kill fertool with ``kill -9`` at exact moments: inside an epoch, between writing a
checkpoint's temporary file and renaming it into place, between the renames that install a
prepared folder.  To hit such a moment deterministically they set two environment variables:

``FERTOOL_PAUSE_AT=point[:N]``
    the point to stop at (``epoch``, ``write:<file name>``, ``prepare-chunk``,
    ``prepare-install``...), the N-th time it is reached (default 1);
``FERTOOL_PAUSE_FILE=path``
    created when the process stops there; the process then sleeps until it is killed.

Without ``FERTOOL_PAUSE_AT`` (every normal run) :func:`pause_point` returns at once.
"""

from __future__ import annotations

import os
import time

__all__ = ["pause_point"]

_seen: dict[str, int] = {}


def pause_point(name: str) -> None:
    """Stop here for good if the fault tests asked for this point (see the module docstring)."""
    spec = os.environ.get("FERTOOL_PAUSE_AT")
    if not spec:
        return
    point, _, count = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "1")
    if name != point:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] != int(count):
        return
    with open(os.environ["FERTOOL_PAUSE_FILE"], "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
    while True:
        time.sleep(60)
