"""The training engine: epoch loop, evaluation, early stopping, stages, resume, divergence.

Loop-level tests use a tiny nn.Module; stage-level tests train the real ResNet34v2 /
LHC-Net at 32x32 with a 8-8 head on 14 synthetic images (a few seconds per epoch).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fertool.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from fertool.data.datasets import ArraySplit
from fertool.engine.loop import (
    EarlyStopping,
    NonFiniteLossError,
    evaluate,
    make_optimizer,
    set_train_mode,
    train_one_epoch,
)
from fertool.engine.plots import plot_curves
from fertool.engine.train import train_stage
from fertool.errors import RecipeError, TrainingError
from fertool.files import read_jsonl
from fertool.recipe import StageConfig, load_recipe, to_dict
from tests.conftest import TINY_WIDTH

from .conftest import reference_file

#: LHC modules valid at input 32 (positions: stem 8x8, stage1 8x8, stage2 4x4, stage3 2x2, stage4 1x1).
TINY_LHC = [
    {"after": "stem", "heads": 4, "dim": 8},
    {"after": "stage1_unit3", "heads": 4, "dim": 8},
    {"after": "stage2_unit4", "heads": 2, "dim": 4},
    {"after": "stage3_unit6", "heads": 1, "dim": 2},
    {"after": "stage4_unit3", "heads": 1, "dim": 1},
]


def tiny_recipe(**stage_overrides):
    """Input 32, 8-8 head, deterministic; every stage plain SGD unless overridden (cheap steps)."""
    stages = {
        s: {"max_epochs": 2, "batch_size": 7, "optimizer": "sgd", **stage_overrides}
        for s in ("1", "2", "3", "4", "controller")
    }
    return load_recipe(
        {
            "model": {"input_size": 32, "hidden": [8, 8], "bn_momentum": 0.9, "lhc": TINY_LHC, **TINY_WIDTH},
            "train": {"deterministic": True, "eval_batch_size": 16, "stages": stages},
        }
    )


def random_split(n: int, size: int = 32, name: str = "split", seed: int = 0) -> ArraySplit:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 7
    images = (rng.integers(0, 80, (n, size, size)) + 25 * labels[:, None, None]).astype(np.uint8)
    return ArraySplit(images=images, labels=torch.from_numpy(labels.astype(np.int64)), name=name)


class TinyNet(nn.Module):
    """Conv -> BN -> ReLU -> GAP -> Linear: enough to exercise the loop in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x / 255.0))).mean(dim=(2, 3)))


class NaNAfter(ArraySplit):
    """A split whose images turn NaN once ``armed`` is set (a diverging run, on demand)."""

    armed = False

    def load(self, index, device="cpu"):
        x = super().load(index, device)
        return x * float("nan") if NaNAfter.armed else x


# --------------------------------------------------------------------------- GPU paths on the CPU


def _step_and_evaluation(net: nn.Module, split: ArraySplit, **options) -> tuple[dict, dict]:
    """One optimiser step over the whole split, then one evaluation, with ``options``."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    set_train_mode(net)
    trained = train_one_epoch(
        net,
        split,
        opt,
        batch_size=len(split),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        **options,
    )
    return trained, evaluate(net, split, batch_size=len(split), **options)


def _seen_by_conv(net: TinyNet) -> list[torch.Tensor]:
    """The first convolution's inputs and outputs of every forward pass, recorded."""
    seen: list[torch.Tensor] = []
    net.conv.register_forward_hook(lambda module, args, out: seen.extend([args[0], out]))
    return seen


@pytest.mark.parametrize("options", [{"channels_last": True}, {"precision": "bf16"}], ids=["channels_last", "bf16"])
def test_the_gpu_code_paths_train_and_evaluate_on_the_cpu(options):
    split = random_split(8, size=16)
    torch.manual_seed(0)
    reference, net = TinyNet(), TinyNet()
    net.load_state_dict(reference.state_dict())
    want_train, want_eval = _step_and_evaluation(reference, split)
    seen = _seen_by_conv(net)
    before = net.fc.weight.detach().clone()
    got_train, got_eval = _step_and_evaluation(net, split, **options)
    assert len(seen) == 4  # one training and one evaluation forward pass
    if "channels_last" in options:  # the layout changes, the numbers do not
        assert all(t.is_contiguous(memory_format=torch.channels_last) for t in seen[0::2])
        tolerance = 1e-5
    else:  # bf16 autocast ran the convolution in bf16, training and evaluation alike
        assert all(t.dtype == torch.bfloat16 for t in seen[1::2])
        tolerance = 5e-2
    assert got_train["train_loss"] == pytest.approx(want_train["train_loss"], rel=tolerance)
    assert got_eval["loss"] == pytest.approx(want_eval["loss"], rel=tolerance)
    assert not torch.equal(net.fc.weight, before)  # the step changed the weights


def test_a_compiled_model_trains_and_evaluates():
    # torch.compile with its default backend (inductor, C++ on the CPU); compiling takes
    # a minute or two, hence one tiny model only.
    split = random_split(8, size=16)
    torch.manual_seed(0)
    reference, net = TinyNet(), TinyNet()
    net.load_state_dict(reference.state_dict())
    want_train, want_eval = _step_and_evaluation(reference, split)
    got_train, got_eval = _step_and_evaluation(torch.compile(net), split)
    assert got_train["train_loss"] == pytest.approx(want_train["train_loss"], rel=1e-4)
    assert got_eval["loss"] == pytest.approx(want_eval["loss"], rel=1e-4)
    assert torch.allclose(net.fc.weight, reference.fc.weight, atol=1e-5)  # the compiled step updated the weights alike


# --------------------------------------------------------------------------- loop pieces


def test_early_stopping_follows_keras_semantics():
    # Keras: improvement = strictly greater (ties keep the earlier epoch); stop when
    # `patience` epochs in a row did not improve.
    es = EarlyStopping(patience=2)
    values = [0.5, 0.6, 0.6, 0.55, 0.7]
    stopped_at = None
    for epoch, v in enumerate(values, start=1):
        es.update(v, epoch)
        if es.should_stop:
            stopped_at = epoch
            break
    assert stopped_at == 4 and es.best_epoch == 2 and es.best == 0.6
    restored = EarlyStopping(patience=2)
    restored.load_state_dict(es.state_dict())
    assert restored == es
    # Keras checks `wait >= patience and epoch > 0` after resetting wait on improvement:
    # patience 0 never stops after the first epoch and always after the second.
    zero = EarlyStopping(patience=0)
    zero.update(0.1, 1)
    assert not zero.should_stop
    zero.update(0.2, 2)
    assert zero.should_stop and zero.best_epoch == 2


def test_optimisers_are_keras_faithful():
    p = [nn.Parameter(torch.zeros(2))]
    adam = make_optimizer(p, StageConfig(optimizer="adam", lr=1e-4, eps=1e-7))
    assert isinstance(adam, torch.optim.Adam)
    group = adam.param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-7 and group["lr"] == 1e-4
    sgd = make_optimizer(p, StageConfig(optimizer="sgd", lr=0.01))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.0


def test_frozen_batchnorm_runs_in_inference_mode():
    net = TinyNet()
    for p in net.bn.parameters():
        p.requires_grad_(False)
    set_train_mode(net)
    assert net.training and net.conv.training and not net.bn.training
    for p in net.bn.parameters():
        p.requires_grad_(True)
    set_train_mode(net)
    assert net.bn.training


def test_epoch_loss_is_the_sample_weighted_mean_and_order_follows_the_seed():
    torch.manual_seed(0)
    net = TinyNet()
    split = random_split(10)
    # lr 0: the weights stay put, so the epoch loss must equal the loss of all images at once
    # (BN in train mode normalises per batch, so use one batch... and two unequal batches below).
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    set_train_mode(net)
    out = train_one_epoch(
        net, split, opt, batch_size=10, device=torch.device("cpu"), generator=torch.Generator().manual_seed(1)
    )
    x = split.load(torch.arange(10))
    expected = F.cross_entropy(net(x), split.labels).item()
    assert out["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert out["images"] == 10

    seen = []

    class Spy(ArraySplit):
        def load(self, index, device="cpu"):
            seen.append(index.tolist())
            return super().load(index, device)

    spy = Spy(images=split.images, labels=split.labels)
    for seed in (3, 3, 4):
        train_one_epoch(
            net, spy, opt, batch_size=4, device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed)
        )
    first, second, third = seen[0:3], seen[3:6], seen[6:9]
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(10))
    assert first == second and first != third


def test_non_finite_loss_stops_before_touching_the_weights():
    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    split = NaNAfter(images=random_split(8).images, labels=random_split(8).labels)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    NaNAfter.armed = True
    try:
        with pytest.raises(NonFiniteLossError):
            train_one_epoch(net, split, opt, batch_size=4, device=torch.device("cpu"), generator=torch.Generator())
    finally:
        NaNAfter.armed = False
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked") or "running" in k:
            continue  # the forward pass in train mode updated the BN statistics, as in Keras
        assert torch.equal(v, before[k]), k


def test_evaluate_is_the_clipped_cross_entropy_of_the_softmax():
    torch.manual_seed(0)
    net = TinyNet().eval()
    split = random_split(9)
    out = evaluate(net, split, batch_size=4)
    with torch.no_grad():
        probs = torch.softmax(net(split.load(torch.arange(9))), dim=1).double()
    p = probs[torch.arange(9), split.labels].clamp(1e-7, 1 - 1e-7)
    assert out["loss"] == pytest.approx(float(-p.log().mean()), rel=1e-5)
    assert out["accuracy"] == pytest.approx(float((probs.argmax(1) == split.labels).double().mean()))


def test_plot_curves_writes_a_png(tmp_path):
    rows = [
        {"epoch": e, "train_loss": 2 / e, "val_loss": 2.5 / e, "train_accuracy": 0.1 * e, "val_accuracy": 0.08 * e}
        for e in range(1, 6)
    ]
    path = plot_curves(rows, tmp_path / "curves.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("epochs", [1, 3])
def test_curves_of_a_short_stage_have_whole_epoch_ticks_and_the_best_in_the_legend(tmp_path, monkeypatch, epochs):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at its axes
    rows = [
        {"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "train_accuracy": 0.5, "val_accuracy": [0.2, 0.4, 0.3][e - 1]}
        for e in range(1, epochs + 1)
    ]
    plot_curves(rows, tmp_path / "curves.png")
    for ax in figures[0].axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    best = 1 if epochs == 1 else 2
    legend = [t.get_text() for t in figures[0].axes[1].get_legend().get_texts()]
    assert any(f"@ epoch {best}" in t for t in legend), legend
    assert not figures[0].axes[1].texts  # no annotation drawn over the curves
    plt.close(figures[0])


# --------------------------------------------------------------------------- stages


@pytest.fixture(scope="module")
def data():
    return random_split(14, name="Training", seed=1), random_split(7, name="PublicTest", seed=2)


def _state(path):
    return load_checkpoint(path)["state_dict"]


def test_interrupted_and_resumed_stage_ends_bit_identical(tmp_path, data):
    train, val = data
    recipe = tiny_recipe(max_epochs=3, patience=5, optimizer="adam")  # Adam: optimiser state must resume too
    full = train_stage(recipe, "1", tmp_path / "a", seed=5, train_data=train, val_data=val)
    assert full["status"] == "finished" and full["epochs"] == 3

    def interrupt(done, total, **fields):
        if fields.get("phase") == "train" and fields.get("epoch") == 2 and fields.get("batch") == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_stage(recipe, "1", tmp_path / "b", seed=5, train_data=train, val_data=val, progress=interrupt)
    summary = json.loads((tmp_path / "b/stage1/summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs"] == 1
    assert load_checkpoint(tmp_path / "b/stage1/last.pt")["epoch"] == 1
    with pytest.raises(TrainingError, match="--resume"):
        train_stage(recipe, "1", tmp_path / "b", seed=5, train_data=train, val_data=val)
    resumed = train_stage(recipe, "1", tmp_path / "b", seed=5, resume=True, train_data=train, val_data=val)
    assert resumed["status"] == "finished" and resumed["epochs"] == 3

    for name in ("last.pt", "best.pt"):
        a, b = _state(tmp_path / "a/stage1" / name), _state(tmp_path / "b/stage1" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    rows_a = read_jsonl(tmp_path / "a/stage1/metrics.jsonl")
    rows_b = read_jsonl(tmp_path / "b/stage1/metrics.jsonl")
    assert [r["epoch"] for r in rows_b] == [1, 2, 3]
    assert [(r["train_loss"], r["val_accuracy"]) for r in rows_a] == [
        (r["train_loss"], r["val_accuracy"]) for r in rows_b
    ]
    assert (tmp_path / "a/stage1/curves.png").is_file() and (tmp_path / "a/stage1/recipe.yaml").is_file()

    # best.pt is the first epoch with the highest validation accuracy, and its weights give it.
    accs = [r["val_accuracy"] for r in rows_a]
    best = load_checkpoint(tmp_path / "a/stage1/best.pt")
    assert full["best_epoch"] == best["epoch"] == accs.index(max(accs)) + 1
    from fertool.surgery import model_from_checkpoint

    assert evaluate(model_from_checkpoint(best), val)["accuracy"] == pytest.approx(max(accs))

    # A finished stage is refused, and reported as done with --resume.
    with pytest.raises(TrainingError, match="already done"):
        train_stage(recipe, "1", tmp_path / "a", seed=5, train_data=train, val_data=val)
    notes = []
    again = train_stage(
        recipe, "1", tmp_path / "a", seed=5, resume=True, train_data=train, val_data=val, log=notes.append
    )
    assert again == full and any("already done" in n for n in notes)


@pytest.mark.parametrize("redraw_s, drawings", [(0.0, 3), (3600.0, 1)])
def test_curves_are_redrawn_at_most_every_redraw_s_and_once_at_the_end(tmp_path, data, monkeypatch, redraw_s, drawings):
    from fertool.engine import callbacks, plots

    drawn = []
    real = plots.plot_curves
    monkeypatch.setattr(
        plots,
        "plot_curves",
        lambda metrics, out, **kw: drawn.append(len(read_jsonl(metrics))) or real(metrics, out, **kw),
    )
    monkeypatch.setattr(callbacks.MetricsFile, "redraw_s", redraw_s)
    train, val = data
    train_stage(tiny_recipe(max_epochs=3, patience=5), "1", tmp_path, seed=5, train_data=train, val_data=val)
    # every epoch when the interval is 0 (the end adds nothing new); once, with all 3 epochs, otherwise
    assert drawn == ([1, 2, 3] if drawings == 3 else [3])
    assert (tmp_path / "stage1/curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_keep_best_drops_last_pt_once_the_stage_is_done(tmp_path, data):
    train, val = data
    recipe = dataclasses.replace(
        tiny_recipe(max_epochs=2, patience=5), train=dataclasses.replace(tiny_recipe().train, keep="best")
    )
    seen_last = []

    def watch(done, total, **fields):  # during training last.pt exists, so Ctrl-C can still resume
        if fields.get("phase") == "val" and fields.get("epoch") == 2:
            seen_last.append((tmp_path / "stage1/last.pt").is_file())

    summary = train_stage(recipe, "1", tmp_path, seed=5, train_data=train, val_data=val, progress=watch)
    assert summary["status"] == "finished" and seen_last and all(seen_last)
    assert (tmp_path / "stage1/best.pt").is_file() and not (tmp_path / "stage1/last.pt").exists()
    with pytest.raises(RecipeError, match=r"train\.keep: must be one of best, best\+last"):
        load_recipe({"train": {"keep": "last"}})


def test_divergence_stops_with_best_intact(tmp_path, data):
    train, val = data
    recipe = tiny_recipe(max_epochs=3, patience=5)
    nan_train = NaNAfter(images=train.images, labels=train.labels, name="Training")

    def arm(done, total, **fields):
        if fields.get("phase") == "val" and fields.get("epoch") == 1:
            NaNAfter.armed = True

    try:
        with pytest.raises(TrainingError, match="epoch 2, batch 1.*best.pt"):
            train_stage(recipe, "1", tmp_path, train_data=nan_train, val_data=val, progress=arm)
    finally:
        NaNAfter.armed = False
    summary = json.loads((tmp_path / "stage1/summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at"]["epoch"] == 2
    best = load_checkpoint(tmp_path / "stage1/best.pt")
    assert best["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in best["state_dict"].values() if v.is_floating_point()
    )


def test_stage_needs_its_predecessor_and_refuses_test_selection(tmp_path, data):
    train, val = data
    with pytest.raises(TrainingError, match="train stage 1 first"):
        train_stage(tiny_recipe(), "2", tmp_path, train_data=train, val_data=val)
    cheat = load_recipe({"data": {"val_split": "PrivateTest"}})
    with pytest.raises(RecipeError, match="allow-test-selection"):
        train_stage(cheat, "1", tmp_path, train_data=train, val_data=val)
    assert not (tmp_path / "stage1").exists()


@pytest.fixture(scope="module")
def stage3_run(tmp_path_factory):
    """A run folder whose stage3/best.pt is a (random) backbone with a recorded train loss."""
    from fertool.models import arch_from_recipe, build_model

    run = tmp_path_factory.mktemp("run")
    recipe = tiny_recipe()
    arch, args = arch_from_recipe(recipe.model, "backbone")
    torch.manual_seed(0)
    model = build_model(arch, **args)
    ckpt = make_checkpoint(
        arch=arch,
        arch_args=args,
        state_dict=model.state_dict(),
        stage="3",
        epoch=4,
        metrics={"train_loss": 1.75, "val_accuracy": 0.3},
    )
    save_checkpoint(run / "stage3" / "best.pt", ckpt)
    return run


def _inference_train_loss(checkpoint, split) -> float:
    """The authors' ``model.evaluate`` on the training split, written out: eval mode, every
    image once, no augmentation, Keras' clipped categorical cross-entropy, float32 model."""
    from fertool.surgery import model_from_checkpoint

    model = model_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        probs = torch.softmax(model(split.load(torch.arange(len(split)))), dim=1).double()  # (N, C)
    picked = probs[torch.arange(len(split)), split.labels].clamp(1e-7, 1 - 1e-7)
    return float(-picked.log().mean())


def test_stage4_adds_lhc_and_records_the_selection_rule(stage3_run, data):
    train, val = data
    recipe = tiny_recipe(max_epochs=1)
    notes = []
    summary = train_stage(
        recipe, "4", stage3_run, seed=5, init_seed=7, train_data=train, val_data=val, log=notes.append
    )
    assert any("added LHC modules" in n for n in notes)
    assert summary["seed"] == 5 and summary["init_seed"] == 7  # data seed and init seed kept apart
    init = load_checkpoint(stage3_run / "stage4/init.pt")
    assert init["arch"] == "lhc_net" and init["extra"]["lhc_seed"] == 7
    parent = _state(stage3_run / "stage3/best.pt")
    assert all(torch.equal(init["state_dict"][k], v) for k, v in parent.items())  # backbone copied as is
    best = load_checkpoint(stage3_run / "stage4/best.pt")
    assert best["extra"]["lhc_seed"] == 7 and best["stage"] == "4"
    # The rule compares losses measured as the authors did, not the running training average.
    sel = summary["selection"]
    assert sel["method"] == "inference mode, whole training split, no augmentation"
    assert sel["train_loss"] == pytest.approx(_inference_train_loss(best, train), rel=1e-5)
    resnet = load_checkpoint(stage3_run / "stage3/best.pt")
    assert sel["reference_train_loss"] == pytest.approx(_inference_train_loss(resnet, train), rel=1e-5)
    assert sel["reference_is_resnet"] and sel["reference_source"].endswith("stage3/best.pt")
    assert sel["running_train_loss"] == summary["best_train_loss"] and sel["reference_running_train_loss"] == 1.75
    assert sel["ratio"] == pytest.approx(sel["train_loss"] / sel["reference_train_loss"])
    assert sel["accepted"] == (sel["ratio"] < 1.1) and sel["factor"] == 1.1


def test_controller_stage_trains_only_the_controllers(stage3_run, data):
    train, val = data
    if not (stage3_run / "stage4/best.pt").is_file():
        pytest.skip("needs the stage-4 test's run")
    recipe = tiny_recipe(max_epochs=1, optimizer="adam", lr=0.05)
    summary = train_stage(recipe, "controller", stage3_run, seed=5, init_seed=9, train_data=train, val_data=val)
    assert summary["arch"] == "lhc_netc"
    start = load_checkpoint(stage3_run / "controller/init.pt")
    end = load_checkpoint(stage3_run / "controller/last.pt")
    assert start["extra"]["lhc_seed"] == 7  # the LHC modules keep stage 4's init seed
    changed = {k for k in start["state_dict"] if not torch.equal(start["state_dict"][k], end["state_dict"][k])}
    # Only controller scalars move: weights are frozen and the frozen BatchNorms run in inference
    # mode (Keras), so even their moving statistics stay put.
    assert changed and all(k.endswith(".controller") for k in changed), sorted(changed)[:5]
    assert [float(start["state_dict"][f"lhc.lhc{i}.controller"]) for i in range(1, 6)] == [0.0, 0.0, 0.0, -1.0, -0.5]


def test_stage1_starts_from_keras_imagenet_style_weights(tmp_path, data):
    from fertool.models.keras import import_keras

    h5 = reference_file("keras_resnet34_notop.h5.gz")
    train, val = data
    # Full width: the Keras file holds ResNet34's channels.
    recipe = load_recipe(
        {
            **_raw(tiny_recipe(max_epochs=1, lr=1e-12)),
            "model": {
                **_raw(tiny_recipe())["model"],
                "channels": [64, 128, 256, 512],
                "stem_width": 64,
                "pretrained": str(h5),
            },
        }
    )
    notes = []
    train_stage(recipe, "1", tmp_path, train_data=train, val_data=val, log=notes.append)
    assert any("pre-trained weights" in n and "newly initialised" in n for n in notes)
    imported = import_keras(h5)["state_dict"]
    trained = _state(tmp_path / "stage1/best.pt")
    # lr 1e-12: one epoch leaves the convolutions where the Keras file put them.
    for key in ("stem.conv0.weight", "units.stage4_unit3.conv2.weight"):
        assert torch.allclose(trained[key], imported[key], atol=1e-6), key
    assert load_checkpoint(tmp_path / "stage1/best.pt")["lineage"][0]["path"] == str(h5)


def test_missing_pretrained_file_names_the_recipe_key(tmp_path, data):
    from fertool.errors import CheckpointError

    train, val = data
    recipe = load_recipe({"model": {"input_size": 32, "hidden": [8, 8], "pretrained": str(tmp_path / "nope.h5")}})
    with pytest.raises(CheckpointError, match="model.pretrained: .*nope.h5: no such file"):
        train_stage(recipe, "1", tmp_path, train_data=train, val_data=val)


def _raw(recipe):
    from fertool.recipe import to_dict

    return to_dict(recipe)


def test_resume_refuses_a_changed_recipe_and_records_safe_changes(tmp_path, data):
    train, val = data
    recipe = tiny_recipe(max_epochs=4)

    def interrupt(done, total, **fields):
        if fields.get("phase") == "train" and fields.get("epoch") == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_stage(recipe, "1", tmp_path, seed=5, train_data=train, val_data=val, progress=interrupt)
    changed = load_recipe(to_dict(recipe), ["train.stages.1.max_epochs=1", "train.stages.1.lr=0.5"])
    with pytest.raises(RecipeError) as info:
        train_stage(changed, "1", tmp_path, seed=5, resume=True, train_data=train, val_data=val)
    lines = str(info.value).splitlines()
    assert "stage 1 was started with another recipe" in lines[0] and "recipe.yaml" in lines[0]
    assert [line.strip() for line in lines[1:]] == [
        "train.stages.1.lr: 0.0001 -> 0.5",
        "train.stages.1.max_epochs: 4 -> 1 (2 epochs already trained)",
    ]
    assert load_checkpoint(tmp_path / "stage1" / "last.pt")["epoch"] == 2  # untouched by the refusal
    safe = load_recipe(
        to_dict(recipe), ["train.eval_batch_size=5", "train.stages.1.max_epochs=3", "train.stages.2.lr=0.5"]
    )
    summary = train_stage(safe, "1", tmp_path, seed=5, resume=True, train_data=train, val_data=val)
    assert summary["status"] == "finished" and summary["epochs"] == 3
    assert summary["warnings"] == [
        "resumed with a changed recipe: train.eval_batch_size: 16 -> 5",
        "resumed with a changed recipe: train.stages.1.max_epochs: 4 -> 3",
    ]


def test_a_stage_in_use_by_another_process_is_refused(tmp_path, data):
    import signal
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    from fertool.errors import InUseError

    code = textwrap.dedent(f"""
        import time
        from fertool.locks import folder_lock
        with folder_lock({str(tmp_path / "stage1")!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InUseError, match=rf"stage1 is in use by another fertool process \(pid {holder.pid} on "):
            train_stage(tiny_recipe(), "1", tmp_path, seed=5, train_data=data[0], val_data=data[1])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not (tmp_path / "stage1").exists()  # nothing written by the refused call
    old = os.umask(0o022)
    try:
        summary = train_stage(tiny_recipe(max_epochs=1), "1", tmp_path, seed=5, train_data=data[0], val_data=data[1])
    finally:
        os.umask(old)
    assert summary["status"] == "finished"  # the dead holder's lock was taken over
    for name in ("best.pt", "last.pt", "summary.json", "recipe.yaml", "curves.png", "metrics.jsonl"):
        assert (tmp_path / "stage1" / name).stat().st_mode & 0o777 == 0o644, name  # the umask's, not 0600
