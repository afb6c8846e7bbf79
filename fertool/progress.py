"""The progress callback that every long-running library function accepts.

``progress(done, total=None, **fields)``: ``done`` items of ``total`` (None: unknown) are
finished.  Optional keyword fields name the phase so that a display can restart its
count and rate when the phase changes: the training engine sends ``phase`` ("cache",
"train", "val"), ``epoch``, ``epochs``, ``batch``, ``batches``, ``loss``, ``accuracy``;
``predict`` sends ``description`` (the file being read).  A callback ignores fields it does
not know.  Library code only calls it; the command line renders it (a Rich bar on a
terminal, periodic log lines otherwise).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress"]

Progress = Callable[..., None]
