"""Training options beyond the paper (issue 23): each checked on its arithmetic, and the
paper's path checked bit for bit against the loop as it was before them.

Loop-level tests use tiny modules; stage-level tests train ResNet34v2 at 32x32 with an
8-8 head on 14 synthetic images (see tests/test_engine.py).
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from fertool.checkpoint import load_checkpoint
from fertool.engine import train as train_module
from fertool.engine.callbacks import Callback
from fertool.engine.loop import evaluate, train_one_epoch
from fertool.engine.schedule import learning_rate, make_ema
from fertool.engine.train import train_stage
from fertool.files import read_json, read_jsonl
from fertool.recipe import StageConfig, load_recipe
from fertool.surgery import model_from_checkpoint

from . import _frozen_loop
from .test_engine import random_split, tiny_recipe

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return random_split(14, name="Training", seed=1), random_split(7, name="PublicTest", seed=2)


def _weights(path):
    return load_checkpoint(path)["state_dict"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- the paper is unchanged


def test_the_paper_path_trains_bit_identically_to_the_loop_before_the_options(tmp_path, data, monkeypatch):
    """A stage with every option off (the paper recipe's defaults) against the same stage whose
    epochs run the frozen pre-issue loop: same weights, bit for bit, and the same metrics."""
    train, val = data
    recipe = tiny_recipe(
        max_epochs=2, patience=5, optimizer="adam", augment={"rotation": 30, "flip": True}
    )  # the paper's stage 1, scaled down
    stage_cfg = recipe.train.stages["1"]
    assert (
        stage_cfg.schedule,
        stage_cfg.warmup_epochs,
        stage_cfg.label_smoothing,
        stage_cfg.ema,
        stage_cfg.accumulate,
    ) == ("constant", 0.0, 0.0, 0.0, 1)
    assert load_recipe("paper").train.stages == load_recipe(None).train.stages
    now = train_stage(recipe, "1", tmp_path / "now", seed=3, train_data=train, val_data=val)

    new_options = ("label_smoothing", "accumulate", "scaler", "lr_at", "start_step", "ema", "on_step", "log_every")

    def frozen(*args, **kwargs):
        for key in new_options:
            kwargs.pop(key, None)
        return dict(_frozen_loop.train_one_epoch(*args, **kwargs), steps=2, skipped_steps=0)

    monkeypatch.setattr(train_module, "train_one_epoch", frozen)
    before = train_stage(recipe, "1", tmp_path / "before", seed=3, train_data=train, val_data=val)
    assert now["epochs"] == before["epochs"] == 2
    for name in ("best.pt", "last.pt"):
        assert _same(_weights(tmp_path / "now/stage1" / name), _weights(tmp_path / "before/stage1" / name))
    timing = ("seconds", "images_per_s")
    rows = [
        [{k: v for k, v in r.items() if k not in timing} for r in read_jsonl(tmp_path / run / "stage1/metrics.jsonl")]
        for run in ("now", "before")
    ]
    assert rows[0] == rows[1]
    assert now["options"] == {}


# --------------------------------------------------------------------------- schedules


def test_schedule_values_follow_their_formulas_and_torch_schedulers():
    spe = 4
    warm = StageConfig(lr=0.1, warmup_epochs=1, max_epochs=3)
    assert [learning_rate(warm, s, spe) for s in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    # cosine after the warmup = torch's CosineAnnealingLR over the remaining steps (closed form)
    cos = StageConfig(lr=0.1, warmup_epochs=1, max_epochs=3, schedule="cosine", min_lr=0.001)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8, eta_min=0.001)
    expected = []
    for _ in range(9):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [learning_rate(cos, 4 + s, spe) for s in range(9)] == pytest.approx(expected, rel=1e-9)
    assert learning_rate(cos, 8, spe) == pytest.approx(0.001 + 0.5 * 0.099)  # half way: the mean
    # step: x gamma every step_epochs epochs = torch's StepLR with step_size = step_epochs * spe
    step = StageConfig(lr=0.1, schedule="step", step_epochs=2, gamma=0.5, max_epochs=10)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=8, gamma=0.5)
    expected = []
    for _ in range(30):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [learning_rate(step, s, spe) for s in range(30)] == pytest.approx(expected, rel=1e-12)


class Linear(nn.Module):
    """No batch statistics: a batch's gradient is the mean of its images' gradients."""

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * size * size, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1) / 255.0)


def _epoch(model, split, opt, **options):
    return train_one_epoch(model, split, opt, device=CPU, generator=torch.Generator().manual_seed(0), **options)


def test_the_loop_applies_the_scheduled_rate_at_each_optimiser_step():
    cfg = StageConfig(lr=0.1, warmup_epochs=0.5, max_epochs=2, schedule="cosine")
    split = random_split(16, size=8)
    torch.manual_seed(0)
    model = Linear()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    seen = []
    applied = []
    opt.register_step_pre_hook(lambda o, args, kwargs: applied.append(o.param_groups[0]["lr"]))
    for epoch in range(2):
        out = _epoch(
            model,
            split,
            opt,
            batch_size=4,
            lr_at=lambda s: learning_rate(cfg, s, 4),
            start_step=4 * epoch,
            on_step=lambda step: seen.append(step["step"]),
        )
        assert out["steps"] == 4
    assert applied == pytest.approx([learning_rate(cfg, s, 4) for s in range(8)])
    assert applied[:2] == pytest.approx([0.05, 0.1])  # warmup of 2 steps
    assert seen == list(range(1, 9))


# --------------------------------------------------------------------------- label smoothing


def test_label_smoothing_loss_is_the_cross_entropy_against_the_smoothed_targets():
    split = random_split(7, size=8)
    torch.manual_seed(0)
    model = Linear()
    with torch.no_grad():
        log_p = torch.log_softmax(model(split.load(torch.arange(7))).double(), dim=1).numpy()
    eps, c = 0.2, 7
    q = np.full((7, c), eps / c)
    q[np.arange(7), split.labels.numpy()] += 1 - eps
    expected = float(np.mean(-(q * log_p).sum(1)))
    plain = float(np.mean(-log_p[np.arange(7), split.labels.numpy()]))
    out = _epoch(model, split, torch.optim.SGD(model.parameters(), lr=0.0), batch_size=7, label_smoothing=eps)
    assert out["train_loss"] == pytest.approx(expected, rel=1e-6)
    assert abs(expected - plain) > 1e-3  # the smoothing changes the number


# --------------------------------------------------------------------------- EMA


def test_ema_is_the_exponential_average_of_the_weights_after_each_step():
    split = random_split(12, size=8)
    torch.manual_seed(0)
    model = Linear()
    ema = make_ema(model, 0.75)
    after = []
    _epoch(
        model,
        split,
        torch.optim.SGD(model.parameters(), lr=0.5),
        batch_size=4,
        ema=ema,
        on_step=lambda step: after.append(copy.deepcopy(model.state_dict())),
    )
    assert len(after) == 3
    expected = {k: v.double() for k, v in after[0].items()}  # the first update copies the weights
    for weights in after[1:]:
        expected = {k: 0.75 * expected[k] + 0.25 * weights[k].double() for k in expected}
    got = ema.module.state_dict()
    for key in expected:
        torch.testing.assert_close(got[key].double(), expected[key], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got["fc.weight"], model.fc.weight)


# --------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("n, micro, k", [(12, 4, 3), (10, 4, 2)], ids=["even", "short-last-group"])
def test_accumulation_gives_the_gradients_of_a_k_times_larger_batch(n, micro, k):
    """SGD: the weights after each step equal those of batches k times larger (a short last
    group weighs its images as the short last batch does)."""
    split = random_split(n, size=8)
    results = []
    for batch_size, accumulate in ((micro, k), (micro * k, 1)):
        torch.manual_seed(0)
        model = Linear()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        trace = []
        out = _epoch(
            model,
            split,
            opt,
            batch_size=batch_size,
            accumulate=accumulate,
            on_step=lambda step, trace=trace, model=model: trace.append(model.fc.weight.detach().clone()),
        )
        results.append((out, [trace[i] for i in range(len(trace)) if i in _step_ends(n, batch_size, accumulate)]))
    (acc, acc_trace), (big, big_trace) = results
    assert acc["steps"] == big["steps"] == math.ceil(n / (micro * k))
    assert len(acc_trace) == len(big_trace) == acc["steps"]
    for a, b in zip(acc_trace, big_trace, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert acc["train_loss"] == pytest.approx(big["train_loss"], rel=1e-5)
    torch.manual_seed(0)
    model = Linear()
    plain = _epoch(model, split, torch.optim.SGD(model.parameters(), lr=0.5), batch_size=micro)
    assert plain["steps"] > acc["steps"]


def _step_ends(n: int, batch_size: int, accumulate: int) -> set[int]:
    """Indexes (among the batches) of the batches that end an optimiser step."""
    batches = math.ceil(n / batch_size)
    return {i for i in range(batches) if (i + 1) % accumulate == 0 or i + 1 == batches}


# --------------------------------------------------------------------------- fp16 and the gradient scaler


class _Spike(torch.autograd.Function):
    """Identity whose backward returns inf on the armed steps (an fp16 overflow, on demand)."""

    armed: ClassVar[set[int]] = set()
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _Spike.calls += 1
        return grad * math.inf if _Spike.calls in _Spike.armed else grad


class Spiky(Linear):
    def forward(self, x):
        return _Spike.apply(super().forward(x))


def test_fp16_skips_and_counts_the_steps_with_inf_gradients():
    split = random_split(20, size=8)
    torch.manual_seed(0)
    model = Spiky()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _Spike.armed, _Spike.calls = {2, 4}, 0
    weights = []
    out = _epoch(
        model,
        split,
        opt,
        batch_size=4,
        precision="fp16",
        scaler=scaler,
        on_step=lambda step: weights.append(model.fc.weight.detach().clone()),
    )
    assert out["steps"] == 5 and out["skipped_steps"] == 2
    assert scaler.get_scale() == 2.0**8  # halved once per skipped step
    assert torch.equal(weights[1], weights[0]) and torch.equal(weights[3], weights[2])  # skipped: untouched
    assert not torch.equal(weights[2], weights[1])
    assert all(torch.isfinite(w).all() for w in weights)


def test_fp16_runs_the_forward_pass_in_float16():
    split = random_split(4, size=8)
    model = Linear()
    dtypes = []
    model.fc.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    _epoch(
        model,
        split,
        torch.optim.SGD(model.parameters(), lr=0.1),
        batch_size=4,
        precision="fp16",
        scaler=torch.amp.GradScaler("cpu"),
    )
    evaluate(model, split, batch_size=4)  # evaluation stays float32
    assert dtypes == [torch.float16, torch.float32]


# --------------------------------------------------------------------------- a stage with every option on


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_stage_start(self, run):
        self.events.append(("start", run.stage))

    def on_step(self, step):
        self.events.append(("step", dict(step)))

    def on_epoch_end(self, row):
        self.events.append(("epoch", dict(row)))

    def on_stage_end(self, summary, run):
        self.events.append(("end", dict(summary)))


def test_a_stage_with_every_option_on(tmp_path, data):
    train, val = data
    recipe = tiny_recipe(
        max_epochs=2, patience=5, schedule="cosine", warmup_epochs=0.5, label_smoothing=0.1, ema=0.5, accumulate=2
    )
    # fp16 left out: float16 convolutions on the CPU are ~20x slower (the loop test above covers it)
    recorder = Recorder()
    notes = []
    summary = train_stage(
        recipe, "1", tmp_path, seed=1, train_data=train, val_data=val, callbacks=[recorder], log=notes.append
    )
    assert summary["options"] == {
        "schedule": "cosine",
        "warmup_epochs": 0.5,
        "label_smoothing": 0.1,
        "ema": 0.5,
        "accumulate": 2,
    }
    assert any("options beyond the paper: schedule cosine" in n for n in notes)
    rows = read_jsonl(tmp_path / "stage1/metrics.jsonl")
    # 14 images, batch 7, accumulate 2: one optimiser step per epoch; the row's lr is that step's
    cfg = recipe.train.stages["1"]
    assert [r["lr"] for r in rows] == pytest.approx([learning_rate(cfg, s, 1) for s in range(2)])
    # callbacks: one start, the epoch rows of metrics.jsonl, one end = summary.json
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 2
    epoch_rows = [e[1] for e in recorder.events if e[0] == "epoch"]
    assert [{k: r[k] for k in rows[0]} for r in epoch_rows] == rows
    assert recorder.events[-1][1] == read_json(tmp_path / "stage1/summary.json")
    steps = [e[1] for e in recorder.events if e[0] == "step"]
    assert [s["batch"] for s in steps] == [1, 2, 1, 2] and [s["step"] for s in steps] == [0, 1, 1, 2]
    # EMA: best.pt holds the EMA weights (what was validated) and the trained ones beside them
    best = load_checkpoint(tmp_path / "stage1/best.pt")
    assert best["extra"]["train_state_dict"].keys() == best["state_dict"].keys()
    v = evaluate(model_from_checkpoint(best), val, batch_size=16)
    best_row = max(rows, key=lambda r: r["val_accuracy"])
    assert v["accuracy"] == pytest.approx(best_row["val_accuracy"]) and v["loss"] == pytest.approx(best_row["val_loss"])
    last = load_checkpoint(tmp_path / "stage1/last.pt")
    assert "ema" in last["extra"]["resume"] and last["extra"]["resume"]["step"] == 2
    assert not _same(last["state_dict"], last["extra"]["ema_state_dict"])  # two steps: the average lags


def _raw(recipe):
    from fertool.recipe import to_dict

    return to_dict(recipe)


# --------------------------------------------------------------------------- resume and the pipeline


def test_a_resumed_stage_with_ema_schedule_and_accumulation_ends_bit_identical(tmp_path, data):
    train, val = data
    recipe = tiny_recipe(
        max_epochs=3, patience=5, optimizer="adam", schedule="cosine", warmup_epochs=1, ema=0.5, accumulate=2
    )
    train_stage(recipe, "1", tmp_path / "a", seed=5, train_data=train, val_data=val)

    def interrupt(done, total, **fields):
        if fields.get("phase") == "train" and fields.get("epoch") == 2 and fields.get("batch") == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_stage(recipe, "1", tmp_path / "b", seed=5, train_data=train, val_data=val, progress=interrupt)
    train_stage(recipe, "1", tmp_path / "b", seed=5, train_data=train, val_data=val, resume=True)
    for name in ("best.pt", "last.pt"):
        a, b = load_checkpoint(tmp_path / "a/stage1" / name), load_checkpoint(tmp_path / "b/stage1" / name)
        assert _same(a["state_dict"], b["state_dict"])
    a, b = load_checkpoint(tmp_path / "a/stage1/last.pt"), load_checkpoint(tmp_path / "b/stage1/last.pt")
    assert _same(a["extra"]["ema_state_dict"], b["extra"]["ema_state_dict"])
    assert [r["lr"] for r in read_jsonl(tmp_path / "a/stage1/metrics.jsonl")] == [
        r["lr"] for r in read_jsonl(tmp_path / "b/stage1/metrics.jsonl")
    ]


def test_run_pipeline_hands_its_callbacks_to_every_stage(tmp_path, monkeypatch):
    from fertool.pipeline import run_pipeline

    from .test_pipeline import TINY

    seen = []

    class Stop(Exception):
        pass

    def fake_train_stage(recipe, stage, where, **kwargs):
        seen.append((stage, kwargs.get("callbacks")))
        raise Stop

    monkeypatch.setattr(train_module, "train_stage", fake_train_stage)
    mine = [Recorder()]
    with pytest.raises(Stop):
        run_pipeline(load_recipe(TINY), tmp_path / "run", device="cpu", callbacks=mine)
    assert seen == [("1", mine)]


def test_an_fp16_stage_on_the_cpu_records_its_skipped_steps_and_scaler(tmp_path, data):
    train, val = data
    raw = _raw(tiny_recipe(max_epochs=1, patience=5))
    raw["train"]["precision"] = "fp16"
    notes = []
    summary = train_stage(load_recipe(raw), "1", tmp_path, seed=1, train_data=train, val_data=val, log=notes.append)
    assert any("fp16 on the CPU" in n for n in notes)
    assert summary["options"] == {"precision": "fp16"}
    (row,) = read_jsonl(tmp_path / "stage1/metrics.jsonl")
    resume = load_checkpoint(tmp_path / "stage1/last.pt")["extra"]["resume"]
    skipped = summary["skipped_steps"]
    assert row["skipped_steps"] == resume["skipped_steps"] == skipped
    # every skipped step halved the scale from 65536 (no growth within 2000 steps)
    assert resume["scaler"]["scale"] == 65536.0 / 2**skipped
