"""Training events and the callbacks that receive them.

A :class:`Callback` may implement any of four hooks; :func:`fertool.engine.train.train_stage`
and :func:`fertool.pipeline.run_pipeline` take a list of them (``callbacks=``) and call
them on the main process only:

``on_stage_start(run)``
    the stage is built and its folder prepared (``run`` is the :class:`~.stage.Stage`
    record: recipe, stage name, folder ``run.out.dir``, model; read it, do not change it);
``on_step(step)``
    during training, at every batch whose loss is read back from the device (every batch on
    the CPU, every 25th on a GPU, and every ``train.log_every``-th optimiser step):
    ``step`` holds ``stage``, ``epoch``, ``epochs``, ``batch``, ``batches``, ``step`` (the
    optimiser step since the stage began), ``images`` done and ``images_total`` of the epoch,
    the running epoch means ``loss`` and ``accuracy``, the batch's ``batch_loss``, ``lr``,
    ``skipped_steps`` (fp16) and ``log_step`` (True on every ``train.log_every``-th step);
``on_epoch_end(row)``
    the epoch's metrics row, as written to ``metrics.jsonl``, with ``stage``,
    ``max_epochs``, ``best_epoch``, ``wait`` and ``patience`` added;
``on_stage_end(summary, run)``
    ``summary.json``'s content once it is written (also for an interrupted or diverged
    stage; then before the exception propagates).

fertool's own outputs are callbacks too: :class:`MetricsFile` (``metrics.jsonl`` and
``curves.png``, redrawn every 30 s and at the end), :class:`ProgressBar` (the ``progress`` argument), :class:`EpochFunction`
(the ``on_epoch`` argument) and the loggers of ``train.log`` (:mod:`.loggers`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..files import append_jsonl
from ..progress import Progress

#: The record of a running stage (:class:`fertool.engine.stage.Stage`, which holds its
#: callbacks: naming the class here would make the two modules import each other).
Stage = Any

__all__ = ["Callback", "CallbackList", "MetricsFile", "ProgressBar", "EpochFunction"]


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    def on_stage_start(self, run: Stage) -> None:
        pass

    def on_step(self, step: Mapping[str, Any]) -> None:
        pass

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        pass

    def on_stage_end(self, summary: Mapping[str, Any], run: Stage) -> None:
        pass


class CallbackList(Callback):
    """Calls each callback's hook in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)

    def on_stage_start(self, run: Stage) -> None:
        for c in self.callbacks:
            c.on_stage_start(run)

    def on_step(self, step: Mapping[str, Any]) -> None:
        for c in self.callbacks:
            c.on_step(step)

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        for c in self.callbacks:
            c.on_epoch_end(row)

    def on_stage_end(self, summary: Mapping[str, Any], run: Stage) -> None:
        for c in self.callbacks:
            c.on_stage_end(summary, run)


#: Keys the engine adds to an epoch row for callbacks; metrics.jsonl holds the row without them.
ROW_CONTEXT = ("stage", "max_epochs", "best_epoch", "wait", "patience")


class MetricsFile(Callback):
    """``metrics.jsonl`` (one line per epoch) and ``curves.png``.

    The curves are redrawn when an epoch ends at least :attr:`redraw_s` seconds after the
    last drawing, and when the stage ends: a stage of long epochs gets a fresh picture every
    epoch, a stage of sub-second epochs does not spend its time in matplotlib.
    """

    #: Seconds between redrawings of ``curves.png`` while a stage runs.
    redraw_s = 30.0

    def __init__(self, run: Stage):
        self.run = run
        self._drawn_at = time.monotonic()
        self._stale = False

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        append_jsonl(self.run.out.metrics, {k: v for k, v in row.items() if k not in ROW_CONTEXT})
        self._stale = True
        if time.monotonic() - self._drawn_at >= self.redraw_s:
            self._draw()

    def on_stage_end(self, summary: Mapping[str, Any], run: Stage) -> None:
        out = self.run.out
        if self._stale or (not out.curves.exists() and out.metrics.exists() and out.metrics.stat().st_size):
            self._draw()

    def _draw(self) -> None:
        from .plots import plot_curves

        run = self.run
        plot_curves(run.out.metrics, run.out.curves, title=f"stage {run.stage} ({run.arch}, seed {run.start.seed})")
        self._drawn_at, self._stale = time.monotonic(), False


class ProgressBar(Callback):
    """Forwards training steps to a ``progress(done, total, **fields)`` callable."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def on_step(self, step: Mapping[str, Any]) -> None:
        fields = {
            k: v
            for k, v in step.items()
            if k in ("phase", "epoch", "epochs", "stage", "batch", "batches", "loss", "accuracy")
        }
        self.progress(step["images"], step["images_total"], **fields)


class EpochFunction(Callback):
    """``on_epoch(row)`` as a callback."""

    def __init__(self, function: Callable[[dict], None]):
        self.function = function

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        self.function(dict(row))
