"""Where a long multi-step command stands: ``step 4/15 stage 2 (ResNet34v2)``, the time so
far and an estimate of the rest.

:class:`StepTracker` is told when each step starts and ends (``start``/``end``) and
watches the progress reports of the training steps (``watch``) to measure the seconds an
epoch takes.  The rest is estimated from that rate and the recipe's epoch caps
(``max_epochs``, an upper bound wherever early stopping can end a stage sooner, which is
said as "at most"), plus the measured time of the evaluation-like steps of the same kind
once one has run.  It writes its lines through the ``log`` callable it was given (the
command line prints them on stderr: one line when a step starts, one when it ends).
Library code only; it never prints itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .progress import Progress

__all__ = ["PlannedStep", "StepTracker", "format_duration", "pipeline_plan"]

#: What the stage of each key trains, for the step line: ``stage 2 (ResNet34v2)``.
MODEL_NAMES = {"backbone": "ResNet34v2", "lhc": "LHC-Net", "controller": "LHC-NetC"}


@dataclass
class PlannedStep:
    """One step of a plan: ``key`` identifies it to :meth:`StepTracker.start`; ``label`` is
    what a person reads; ``kind`` groups steps that take alike (train, evaluate, ...);
    ``epochs`` is a training step's cap and ``early_stop`` whether it can end sooner."""

    key: str
    label: str
    kind: str
    epochs: int | None = None
    early_stop: bool = False
    seconds: float | None = None  # measured when it ran (None: not run, or skipped)
    state: str = "pending"  # pending, running, done, skipped
    epochs_seen: set = field(default_factory=set)


def format_duration(seconds: float) -> str:
    """``45s``, ``3m12s``, ``2h05m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def pipeline_plan(recipe, seeds: Sequence[int], *, ablate: bool, prepare: bool = True) -> list[PlannedStep]:
    """The steps of :func:`fertool.pipeline.run_pipeline`, keyed as it names them: ``prepare``,
    ``train <folder>`` (folder relative to the run directory), ``evaluate <folder>``,
    ``ablate``, ``report``."""
    stages = recipe.train.stages

    def train(folder: str, stage: str, model: str | None = None) -> PlannedStep:
        cfg = stages[stage]
        model = model or cfg.model
        name = "controller" if stage == "controller" else f"stage {stage}"
        where = folder.rsplit("/", 1)[0] + " " if "/" in folder else ""
        return PlannedStep(
            f"train {folder}",
            f"{where}{name} ({MODEL_NAMES.get(model, model)})",
            "train",
            epochs=cfg.max_epochs,
            early_stop=cfg.max_epochs > 1,
        )

    plan = [PlannedStep("prepare", "prepare the images", "prepare")] if prepare else []
    plan += [train(f"stage{s}", s) for s in ("1", "2", "3")]
    trained = []
    for seed in seeds:
        plan += [
            train(f"seed-{seed}/stage4", "4"),
            train(f"seed-{seed}/controller", "controller"),
            train(f"seed-{seed}/resnet/stage4", "4", model="backbone"),
        ]
        trained += [f"seed-{seed}/resnet/stage4", f"seed-{seed}/stage4", f"seed-{seed}/controller"]
    # evaluated model by model, as the pipeline does: every ResNet control, then LHC-Net, then LHC-NetC
    order = sorted(trained, key=lambda f: 0 if "/resnet/" in f else 1 if f.endswith("stage4") else 2)
    plan += [PlannedStep(f"evaluate {f}", f"evaluate {f}", "evaluate") for f in order]
    if ablate:
        plan.append(PlannedStep("ablate", "ablate the best LHC-Net", "ablate"))
    plan.append(PlannedStep("report", "report (Table 7, HTML page)", "report"))
    return plan


class StepTracker:
    """Counts the steps of a plan and estimates the time left (see the module's text)."""

    def __init__(
        self,
        plan: Iterable[PlannedStep],
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = list(plan)
        self.log = log or (lambda message: None)
        self.clock = clock
        self.started = clock()
        self.current: PlannedStep | None = None
        self.step_started = self.started

    # ------------------------------------------------------------------ the plan
    def _find(self, key: str) -> PlannedStep:
        for step in self.plan:
            if step.key == key:
                return step
        step = PlannedStep(key, key, key.split()[0])  # a step the plan did not know: counted from now on
        self.plan.append(step)
        return step

    def number(self, step: PlannedStep) -> str:
        return f"step {self.plan.index(step) + 1}/{len(self.plan)}"

    # ------------------------------------------------------------------ events
    def start(self, key: str) -> None:
        """A step begins (its work is about to run)."""
        step = self._find(key)
        step.state, step.epochs_seen = "running", set()
        self.current, self.step_started = step, self.clock()
        self.log(f"{self.number(step)} {step.label}: started; {self.summary()}")

    def end(self, key: str, *, skipped: bool = False, why: str | None = None) -> None:
        """A step ended; ``skipped``: no work done, not timed, because its outputs already
        existed or for the reason ``why``."""
        step = self._find(key)
        if skipped:
            step.state, step.seconds = "skipped", None
            self.log(f"{self.number(step)} {step.label}: skipped ({why or 'its outputs are there'})")
        else:
            step.state, step.seconds = "done", self.clock() - self.step_started
            epochs = len(step.epochs_seen)
            ran = f" ({epochs} epoch{'s' if epochs != 1 else ''})" if step.kind == "train" else ""
            self.log(
                f"{self.number(step)} {step.label}: finished in {format_duration(step.seconds)}{ran}; {self.summary()}"
            )
        if self.current is step:
            self.current = None

    def watch(self, progress: Progress | None) -> Progress:
        """A progress callback that passes everything on to ``progress`` and counts the
        running training step's finished epochs (the rate of the estimate)."""

        def callback(done: int, total: int | None = None, **fields) -> None:
            step = self.current
            if (
                step is not None
                and fields.get("phase") == "train"
                and fields.get("epoch") is not None
                and total is not None
                and done >= total
            ):
                step.epochs_seen.add(fields["epoch"])
            if progress is not None:
                progress(done, total, **fields)

        return callback

    # ------------------------------------------------------------------ the estimate
    def epoch_seconds(self) -> float | None:
        """Seconds per epoch over the training steps that ran (None before the first)."""
        ran = [s for s in self.plan if s.kind == "train" and s.state == "done" and s.epochs_seen]
        if not ran:
            return None
        return sum(s.seconds for s in ran) / sum(len(s.epochs_seen) for s in ran)

    def remaining(self) -> tuple[float | None, bool, list[str]]:
        """(seconds left for the steps not yet finished, whether that is an upper bound,
        kinds of steps left that have no measured time yet)."""
        per_epoch = self.epoch_seconds()
        measured: dict[str, list[float]] = {}
        for s in self.plan:
            if s.state == "done" and s.kind != "train" and s.seconds is not None:
                measured.setdefault(s.kind, []).append(s.seconds)
        total, upper, unknown, timed = 0.0, False, [], 0
        for s in self.plan:
            if s.state in ("done", "skipped"):
                continue
            if s.kind == "train" and per_epoch is not None:
                total += per_epoch * max(0, (s.epochs or 0) - len(s.epochs_seen))
                upper = upper or s.early_stop
                timed += 1
            elif s.kind in measured:
                total += sum(measured[s.kind]) / len(measured[s.kind])
                timed += 1
            else:
                unknown.append(s.kind)
        unknown = list(dict.fromkeys(unknown))
        if not timed and unknown:  # nothing left has a measured kind yet
            return None, False, unknown
        return total, upper, unknown

    def summary(self) -> str:
        """``12m05s so far, at most 40m more (early stopping)``."""
        text = f"{format_duration(self.clock() - self.started)} so far"
        left, upper, unknown = self.remaining()
        if left is None:
            return text + ", the rest not yet estimated (no step of its kinds timed yet)"
        if not any(s.state in ("pending", "running") for s in self.plan):
            return text
        text += f", {'at most' if upper else 'about'} {format_duration(left)} more"
        if unknown:
            return text + f" for the timed kinds of step; {', '.join(unknown)} not yet timed"
        return text + (" (early stopping can end stages sooner)" if upper else "")
