"""The pipeline's step line: ``step k/N <label>``, time so far and an estimate of the rest
from the measured seconds per epoch and the recipe's epoch caps (fertool/steps.py)."""

from __future__ import annotations

import re

from fertool.recipe import load_recipe
from fertool.steps import PlannedStep, StepTracker, format_duration, pipeline_plan


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def train_epochs(tracker: StepTracker, clock: Clock, epochs: int, seconds_each: float) -> None:
    callback = tracker.watch(None)
    for epoch in range(1, epochs + 1):
        clock.now += seconds_each
        callback(10, 10, phase="train", epoch=epoch, epochs=epochs)
        callback(5, 5, phase="val", epoch=epoch, epochs=epochs)


def test_durations_read_as_minutes_and_hours():
    assert [format_duration(s) for s in (0.4, 45, 192, 7500)] == ["0s", "45s", "3m12s", "2h05m"]


def test_the_estimate_comes_from_the_measured_epoch_rate_and_the_caps():
    clock, lines = Clock(), []
    plan = [
        PlannedStep("train a", "stage 1 (ResNet34v2)", "train", epochs=4, early_stop=True),
        PlannedStep("train b", "stage 2 (ResNet34v2)", "train", epochs=10, early_stop=True),
        PlannedStep("evaluate a", "evaluate a", "evaluate"),
        PlannedStep("evaluate b", "evaluate b", "evaluate"),
    ]
    tracker = StepTracker(plan, lines.append, clock=clock)
    tracker.start("train a")
    assert (
        lines[-1]
        == "step 1/4 stage 1 (ResNet34v2): started; 0s so far, the rest not yet estimated (no step of its kinds timed yet)"
    )
    train_epochs(tracker, clock, 3, 20.0)  # stopped early after 3 of 4 epochs: 20 s an epoch
    tracker.end("train a")
    # 10 epochs of stage 2 at 20 s = 200 s at most; the evaluations not yet timed
    assert lines[-1] == (
        "step 1/4 stage 1 (ResNet34v2): finished in 1m00s (3 epochs); 1m00s so far, at most 3m20s "
        "more for the timed kinds of step; evaluate not yet timed"
    )
    tracker.start("train b")
    train_epochs(tracker, clock, 1, 20.0)
    tracker.end("train b")
    assert "finished in 20s (1 epoch);" in lines[-1]  # singular
    tracker.start("evaluate a")
    clock.now += 30
    tracker.end("evaluate a")
    assert lines[-1].endswith("1m50s so far, about 30s more")  # one more evaluation, as long as the first
    tracker.end("evaluate b", skipped=True)
    assert lines[-1] == "step 4/4 evaluate b: skipped (its outputs are there)"


def test_no_estimate_while_no_step_left_is_of_a_timed_kind():
    clock, lines = Clock(), []
    plan = [PlannedStep("prepare", "prepare", "prepare"), PlannedStep("train a", "stage 1", "train", epochs=3)]
    tracker = StepTracker(plan, lines.append, clock=clock)
    tracker.start("prepare")
    clock.now += 5
    tracker.end("prepare")  # prepare is timed, but only a training step is left
    assert lines[-1].endswith("5s so far, the rest not yet estimated (no step of its kinds timed yet)")


def test_a_step_the_plan_does_not_know_is_counted_not_refused():
    lines = []
    tracker = StepTracker([PlannedStep("a", "a", "train", epochs=1)], lines.append, clock=Clock())
    tracker.start("other thing")
    assert lines[-1].startswith("step 2/2 other thing: started")


def test_the_plan_of_the_demo_recipe_names_each_stage_and_model():
    recipe = load_recipe("demo")
    plan = pipeline_plan(recipe, [1, 2], ablate=True)
    labels = [s.label for s in plan]
    # prepare, stages 1-3, three trainings per seed, three evaluations per seed, ablate, report
    assert len(plan) == 1 + 3 + 3 * 2 + 3 * 2 + 1 + 1
    assert labels[:5] == [
        "prepare the images",
        "stage 1 (ResNet34v2)",
        "stage 2 (ResNet34v2)",
        "stage 3 (ResNet34v2)",
        "seed-1 stage 4 (LHC-Net)",
    ]
    assert "seed-2 controller (LHC-NetC)" in labels and "seed-2/resnet stage 4 (ResNet34v2)" in labels
    caps = {s.key: s.epochs for s in plan if s.kind == "train"}
    assert caps["train stage1"] == recipe.train.stages["1"].max_epochs
    assert caps["train seed-1/controller"] == recipe.train.stages["controller"].max_epochs
    assert len({s.key for s in plan}) == len(plan)
    assert all(re.fullmatch(r"(prepare|train \S+|evaluate \S+|ablate|report)", s.key) for s in plan)
