"""fertool ablate: LHC modules switched off / de-trained without retraining (docs/protocol.md §6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fertool.analysis.ablation import ablate, ablated, ablation_sets, smallest_kept
from fertool.checkpoint import make_checkpoint, save_checkpoint
from fertool.models import build_model
from fertool.surgery import augment_lhc, model_from_checkpoint
from tests.conftest import TINY_WIDTH

SIZE = 32  # positions: stem/stage1 8x8, stage2 4x4, stage3 2x2, stage4 1x1 (channels: TINY_WIDTH)
TINY_LHC = [
    {"after": "stem", "heads": 8, "dim": 4},
    {"after": "stage1_unit3", "heads": 4, "dim": 4},
    {"after": "stage2_unit4", "heads": 4, "dim": 3},
    {"after": "stage3_unit6", "heads": 2, "dim": 2},
    {"after": "stage4_unit3", "heads": 1, "dim": 2},
]
ARGS = {"input_size": SIZE, "num_classes": 7, "hidden": [16], **TINY_WIDTH}
SEED = 7


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (10x slower on a busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A backbone checkpoint, its augment-lhc init, and a 'trained' LHC-Net (init + noise)."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    backbone = build_model("resnet34v2", **ARGS)
    with torch.no_grad():  # non-trivial BN statistics so features are not all alike
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.num_features != 3:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    base = make_checkpoint(arch="resnet34v2", arch_args=ARGS, state_dict=backbone.state_dict(), stage="3")
    init = augment_lhc(base, lhc=TINY_LHC, controller_init=None, seed=SEED)
    trained_sd = {k: v.clone() for k, v in init["state_dict"].items()}
    gen = torch.Generator().manual_seed(1)
    for k, v in trained_sd.items():
        if k.startswith("lhc.") and v.is_floating_point():
            trained_sd[k] = v + 0.05 * torch.randn(v.shape, generator=gen)
    trained = dict(init, state_dict=trained_sd, stage="4")
    paths = {"backbone": folder / "backbone.pt", "init": folder / "init.pt", "trained": folder / "run" / "best.pt"}
    save_checkpoint(paths["backbone"], base)
    save_checkpoint(paths["init"], init)
    save_checkpoint(paths["trained"], trained)
    no_seed = dict(trained, extra={})
    paths["no_seed"] = folder / "noseed.pt"
    save_checkpoint(paths["no_seed"], no_seed)
    return {"paths": paths, "init": init, "trained": trained, "base": base}


def _write_csv(path, counts=(("Training", 3), ("PrivateTest", 12)), seed=0):
    rng = np.random.default_rng(seed)
    lines = ["emotion,pixels,Usage"]
    for usage, n in counts:
        for i in range(n):
            pixels = rng.integers(0, 256, size=48 * 48)
            lines.append(f"{i % 7},{' '.join(map(str, pixels))},{usage}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sets_single_cumulative_all():
    names = [f"lhc{i}" for i in range(1, 6)]
    sets = dict(ablation_sets(names, ["single", "cumulative"]))
    # 5 singles + 4 new prefixes + 3 new suffixes ({lhc5} and the full set already there)
    assert len(sets) == 12
    assert sets[("lhc1",)] == ["single", "first"] and sets[("lhc5",)] == ["single", "last"]
    assert sets[("lhc1", "lhc2", "lhc3", "lhc4", "lhc5")] == ["first", "last"]
    assert ("lhc3", "lhc4", "lhc5") in sets and ("lhc1", "lhc2", "lhc3") in sets
    every = ablation_sets(names, ["all"])
    assert len(every) == 31 == 2**5 - 1
    assert len({s for s, _ in every}) == 31
    assert all(list(s) == sorted(s) for s, _ in every)  # network order


def test_smallest_kept_prefers_fewest_modules_then_heads():
    names = ["lhc1", "lhc2", "lhc3"]
    heads = {"lhc1": 8, "lhc2": 8, "lhc3": 1}
    rows = [
        {"mode": "off", "kept": ["lhc2", "lhc3"], "accuracy": 0.70},
        {"mode": "off", "kept": ["lhc1", "lhc3"], "accuracy": 0.698},
        {"mode": "off", "kept": ["lhc1", "lhc2"], "accuracy": 0.699},
        {"mode": "off", "kept": ["lhc1"], "accuracy": 0.60},
        {"mode": "detrain", "kept": ["lhc3"], "accuracy": 0.70},
    ]
    k = smallest_kept(rows, mode="off", names=names, heads=heads, full=0.70, tolerance=0.005)
    # three 2-module sets qualify; fewest heads: lhc2+lhc3 and lhc1+lhc3 (9); higher accuracy wins
    assert k["modules"] == ["lhc2", "lhc3"] and k["heads"] == 9 and k["total_heads"] == 17
    k = smallest_kept(rows, mode="off", names=names, heads=heads, full=0.70, tolerance=0.0)
    assert k["modules"] == ["lhc2", "lhc3"]
    k = smallest_kept(rows, mode="off", names=names, heads=heads, full=0.75, tolerance=0.01)
    assert k["modules"] == names  # nothing qualifies but the full model
    k = smallest_kept(rows, mode="detrain", names=names, heads=heads, full=0.70, tolerance=0.0)
    assert k["modules"] == ["lhc3"]


def test_off_on_all_modules_equals_the_backbone(ckpts):
    model = model_from_checkpoint(ckpts["trained"]).eval()
    backbone = build_model("resnet34v2", **ARGS).eval()
    sd = {k: v for k, v in ckpts["trained"]["state_dict"].items() if not k.startswith("lhc.")}
    backbone.load_state_dict(sd)
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 255
    with torch.no_grad():
        full = model(x)
        with ablated(model, "off", list(model.lhc_modules())):
            off = model(x)
        plain = backbone(x)
        again = model(x)
    assert torch.equal(off, plain)
    assert not torch.allclose(full, plain)  # the modules do matter
    assert torch.equal(again, full)  # restored
    assert all(m.enabled for m in model.lhc_modules().values())


def test_detrain_reproduces_augment_lhc_init_bit_exactly(ckpts):
    model = model_from_checkpoint(ckpts["trained"])
    init_sd, trained_sd = ckpts["init"]["state_dict"], ckpts["trained"]["state_dict"]
    with ablated(model, "detrain", ["lhc2", "lhc4"], seed=SEED):
        now = model.state_dict()
        for k, v in now.items():
            expected = init_sd[k] if k.startswith(("lhc.lhc2.", "lhc.lhc4.")) else trained_sd[k]
            assert torch.equal(v, expected), k
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained_sd[k]), k


def test_ablate_end_to_end(ckpts, tmp_path):
    n = 6
    csv = _write_csv(tmp_path / "fer.csv", counts=(("Training", 2), ("PrivateTest", n)))
    out = tmp_path / "abl"
    calls = []
    report = ablate(
        ckpts["paths"]["trained"],
        csv=csv,
        modes=["off", "detrain"],
        sets=["single"],
        out_dir=out,
        batch_size=n,
        pictures=1,
        progress=lambda d, t, **fields: calls.append((d, t, fields.get("description"))),
    )
    assert report["n"] == n and report["total_heads"] == 19
    assert [r["set"] for r in report["results"][:5]] == [[f"lhc{i}"] for i in range(1, 6)]
    assert len(report["results"]) == 2 * 5
    # independent expectations: the full model, and "detrain lhc3" = the trained weights with lhc3 from the init
    from fertool.data.datasets import reference_split
    from fertool.evaluation.inference import predict_probs

    split = reference_split(csv, "PrivateTest", SIZE)
    labels = split.labels.numpy()
    full = predict_probs(model_from_checkpoint(ckpts["trained"]), split)["probs"]
    assert report["full"]["accuracy"] == pytest.approx(float((full.argmax(1) == labels).mean()))
    mixed = dict(ckpts["trained"]["state_dict"])
    mixed.update({k: v for k, v in ckpts["init"]["state_dict"].items() if k.startswith("lhc.lhc3.")})
    mixed_model = model_from_checkpoint(dict(ckpts["trained"], state_dict=mixed))
    expected = predict_probs(mixed_model, split)["probs"]
    row = next(r for r in report["results"] if r["mode"] == "detrain" and r["set"] == ["lhc3"])
    assert row["accuracy"] == pytest.approx(float((expected.argmax(1) == labels).mean()))
    assert row["kept"] == ["lhc1", "lhc2", "lhc4", "lhc5"] and row["heads_kept"] == 19 - 4
    assert row["delta"] == pytest.approx(row["accuracy"] - report["full"]["accuracy"])
    assert row["tta_accuracy"] is None and report["tta"] is None
    for mode in ("off", "detrain"):
        k = report["smallest_kept"][mode]["accuracy"]
        assert k["accuracy"] >= report["full"]["accuracy"] - 0.005 - 1e-12
        assert k["searched"] == "evaluated sets"
    # heads: one-head module n/a, others have matrices; no controller in LHC-Net
    hd = report["heads"]
    assert hd["modules"]["lhc5"]["mean_abs_offdiag"] is None
    assert len(hd["modules"]["lhc1"]["correlation"]) == 8
    assert (
        hd["modules"]["lhc1"]["samples"] == n * TINY_WIDTH["stem_width"] * 8
    )  # images x C (the stem's width) x r (64 positions / 8 heads)
    assert 0 <= hd["overall_mean_abs_offdiag"] <= 1
    assert hd["controller"] is None
    # files
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    for name in ("ablation.png", "recipe.yaml", "heads-lhc1.png", "heads-lhc4.png"):
        assert (out / name).is_file(), name
    assert not (out / "heads-lhc5.png").exists()
    assert len(list((out / "pictures").glob("*.png"))) == 5  # one image x five modules
    from fertool.recipe import load_recipe

    assert load_recipe(out / "recipe.yaml").ablate.sets == ("single",)
    passes = [c for c in calls if c[2] is None]
    assert passes[-1][0] == passes[-1][1] == n * (1 + 10)  # full model + 10 ablated sets
    assert calls[-1][0] == calls[-1][1] and calls[-1][2] == "figures"  # then the figures, as a phase of their own


def test_all_subsets_and_default_out(ckpts, tmp_path):
    csv = _write_csv(tmp_path / "fer.csv", counts=(("PrivateTest", 4),))
    report = ablate(ckpts["paths"]["trained"], csv=csv, modes="off", sets="all", heads=False, pictures=0, max_images=2)
    assert report["n"] == 2
    assert len(report["results"]) == 31
    assert report["smallest_kept"]["off"]["accuracy"]["searched"] == "all subsets"
    out = ckpts["paths"]["trained"].parent / "ablate-PrivateTest"
    assert report["out_dir"] == str(out) and (out / "ablation.json").is_file()
    assert "heads" not in report and not (out / "pictures").exists()


def test_lhc_netc_controller_weights(ckpts, tmp_path):
    netc = augment_lhc(ckpts["trained"], lhc=None, controller_init=[0.0, 0.5, 0.0, -1.0, -0.5], seed=SEED)
    path = tmp_path / "netc.pt"
    save_checkpoint(path, netc)
    csv = _write_csv(tmp_path / "fer.csv", counts=(("PrivateTest", 3),))
    report = ablate(path, csv=csv, modes="off", sets="single", pictures=0, tta="flip", out_dir=tmp_path / "o")
    assert report["tta"] == "flip" and all(r["tta_accuracy"] is not None for r in report["results"])
    assert "tta_accuracy" in report["smallest_kept"]["off"]
    ctrl = report["heads"]["controller"]
    assert ctrl["lhc2"]["w"] == 0.5 and ctrl["lhc2"]["gain"] == pytest.approx(1 + np.tanh(0.5))


def test_without_a_seed_the_default_modes_leave_detrain_out(ckpts, tmp_path):
    """Imported weights record no LHC seed: 'off' only, with a note; 'detrain' by name is refused."""
    from fertool.errors import CheckpointError
    from fertool.recipe import load_recipe

    csv = _write_csv(tmp_path / "fer.csv", counts=(("PrivateTest", 2),))
    common = dict(csv=csv, sets="single", heads=False, pictures=0)
    out = tmp_path / "noseed"
    report = ablate(ckpts["paths"]["no_seed"], out_dir=out, **common)
    assert report["modes"] == ["off"] and [r["mode"] for r in report["results"]] == ["off"] * 5
    assert report["notes"] == [
        "detrain skipped: the checkpoint records no LHC initialisation seed "
        "(extra.lhc_seed, written by augment-lhc; imported weights have none)"
    ]
    assert json.loads((out / "ablation.json").read_text())["notes"] == report["notes"]
    assert load_recipe(out / "recipe.yaml").ablate.modes == ("off",)  # what was run
    with_seed = ablate(ckpts["paths"]["trained"], out_dir=tmp_path / "seed", max_images=1, **common)
    assert with_seed["modes"] == ["off", "detrain"] and with_seed["notes"] == []
    for asked in (dict(modes="off,detrain"), dict(modes=["detrain"]), dict(overrides=["ablate.modes=[detrain]"])):
        with pytest.raises(CheckpointError, match="no LHC initialisation seed .*, which 'detrain' needs"):
            ablate(ckpts["paths"]["no_seed"], out_dir=tmp_path / "refused", **common, **asked)
    assert not (tmp_path / "refused").exists()


# --------------------------------------------------------------------------- bad input (CLI)


def test_cli_backbone_checkpoint_is_refused(ckpts, tmp_path, cli_runner):
    from fertool.cli import app

    csv = _write_csv(tmp_path / "fer.csv", counts=(("PrivateTest", 2),))
    out = tmp_path / "o"
    res = cli_runner.invoke(
        app, ["ablate", "-c", str(ckpts["paths"]["backbone"]), "--csv", str(csv), "--out", str(out)]
    )
    assert res.exit_code == 1
    assert "has no LHC modules; ablate needs an LHC-Net or LHC-NetC checkpoint" in res.output
    assert not out.exists()


def test_cli_bad_inputs(ckpts, tmp_path, cli_runner):
    from fertool.cli import app

    trained = str(ckpts["paths"]["trained"])
    out = tmp_path / "o"
    csv = _write_csv(tmp_path / "fer.csv", counts=(("Training", 2),))  # no PrivateTest rows
    res = cli_runner.invoke(app, ["ablate", "-c", trained, "--csv", str(csv), "--out", str(out)])
    assert res.exit_code == 1 and "PrivateTest" in res.output and "absent or empty" in res.output
    res = cli_runner.invoke(app, ["ablate", "-c", trained, "--csv", str(csv), "--split", "Nope", "--out", str(out)])
    assert res.exit_code == 1 and "unknown split" in res.output
    res = cli_runner.invoke(
        app,
        [
            "ablate",
            "-c",
            str(ckpts["paths"]["no_seed"]),
            "--csv",
            str(csv),
            "--modes",
            "off,detrain",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 1 and "extra.lhc_seed" in res.output and "use --modes off" in res.output
    res = cli_runner.invoke(
        app, ["ablate", "-c", trained, "--csv", str(csv), "--modes", "off,sideways", "--out", str(out)]
    )
    assert res.exit_code == 1 and "--modes" in res.output
    # images of another size than the checkpoint's input (40 vs 32)
    import cv2

    folder = tmp_path / "imgs" / "test" / "happy"
    folder.mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((40, 40), 100 + i, np.uint8))
    res = cli_runner.invoke(app, ["ablate", "-c", trained, "--images", str(tmp_path / "imgs"), "--out", str(out)])
    assert res.exit_code == 1 and "40x40" in res.output and "32x32" in res.output
    assert not out.exists()


def test_cli_runs_and_prints_tables(ckpts, tmp_path, cli_runner):
    from fertool.cli import app

    csv = _write_csv(tmp_path / "fer.csv", counts=(("PrivateTest", 3),))
    out = tmp_path / "o"
    (out).mkdir()
    (out / "old.txt").write_text("old")  # a user's file: refused without --overwrite, kept with it (issue 26)
    args = [
        "ablate",
        "-c",
        str(ckpts["paths"]["trained"]),
        "--csv",
        str(csv),
        "--out",
        str(out),
        "--modes",
        "off",
        "--subsets",
        "single",
        "--pictures",
        "0",
        "--quiet",
        "--device",
        "cpu",
    ]
    res = cli_runner.invoke(app, args)
    assert res.exit_code == 1 and "did not write" in res.output
    res = cli_runner.invoke(app, args + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert "smallest kept set" in res.output and "head redundancy" in res.output
    assert (out / "ablation.json").is_file() and (out / "old.txt").read_text() == "old"


def test_attention_pictures_state_their_scale_and_what_a_row_means(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from fertool.analysis.plots import plot_attention

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    channels = 8
    weights = np.full((2, channels, channels), 1.0 / channels)  # head 1: uniform attention
    weights[1] = np.eye(channels) * 0.5 + 0.5 / channels  # head 2: each channel attends itself
    plot_attention(np.zeros((16, 16, 3)), weights, np.ones((4, 4)), 2.0, tmp_path / "a.png")
    fig = figures[0]
    heads = [ax for ax in fig.axes if ax.get_title().startswith("head ")]
    uniform, diagonal = (ax.images[0].get_array() for ax in heads)
    assert np.allclose(uniform, 0.0)  # log2(W x C) = 0: white, the centre of the scale
    assert np.allclose(np.diag(diagonal), np.log2(0.5 * channels + 0.5))
    # The colour range comes from the data (2-98% quantiles): the off-diagonal -1 (56 of 128
    # values) to the diagonal log2(4.5) (8 of 128, more than 2%), nothing clipped; 0 stays white.
    assert heads[0].images[0].get_clim() == pytest.approx((-1.0, np.log2(4.5)))
    assert heads[0].images[0].norm.vcenter == 0.0
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "log2(W x C); 0 = uniform" in labels
    caption = next(
        t.get_text() for t in fig.texts if t.get_text().startswith("Row i of W: the weights with which query channel i")
    )
    assert "Colour range -1.0 to +2.2" in caption and "0% lie outside" in caption
    plt.close(fig)


def test_attention_pictures_run_in_the_requested_precision(ckpts, tmp_path, monkeypatch):
    """The pictures' forward pass runs under the precision context (TF32 switched off for
    fp32 even when it was on), as the accuracies' passes do.  Only the forward pass is looked
    at: the drawing (tested with the pipeline and in test_figures_readable) is skipped."""
    from fertool import CLASS_NAMES
    from fertool.analysis import plots
    from fertool.analysis.ablation import _pictures

    drawn = []
    monkeypatch.setattr(plots, "plot_attention", lambda *a, **k: drawn.append(a))

    class Faces:  # two random images: all _pictures reads of a split
        class_names, labels = CLASS_NAMES, torch.tensor([0, 1])

        def __len__(self):
            return 2

        def load(self, index, device):
            return torch.rand(len(index), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 255

    model = model_from_checkpoint(ckpts["trained"])
    data = Faces()
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a: seen.append(torch.backends.cuda.matmul.allow_tf32))
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        _pictures(model, data, 1, tmp_path / "fp32", torch.device("cpu"), "fp32")
        _pictures(model, data, 1, tmp_path / "tf32", torch.device("cpu"), "tf32")
        after = torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
        hook.remove()
    assert seen == [False, True] and after is True and len(drawn) == 2 * 5  # a picture per LHC module


def test_an_interrupted_ablate_does_not_say_done(ckpts, tmp_path, cli_runner, monkeypatch):
    """Ctrl-C in a pass or while drawing the figures (after every pass is done): the last
    progress line ends '(interrupted)', the passes' line '(done)' only when they all ran."""
    import fertool.analysis.plots as plots
    import fertool.evaluation.inference as inference
    from fertool.cli import app

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    csv = _write_csv(tmp_path / "fer.csv", counts=(("PrivateTest", 3),))
    args = ["ablate", "-c", str(ckpts["paths"]["trained"]), "--csv", str(csv), "--out", str(tmp_path / "o")]
    args += ["--modes", "off", "--subsets", "single", "--pictures", "0", "--device", "cpu", "--engine", "torch"]
    monkeypatch.setattr(plots, "plot_ablation", interrupt)
    res = cli_runner.invoke(app, args)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 130 and lines[-1] == "error: interrupted", res.stderr
    assert lines[-3].startswith("ablate PrivateTest: 18/18 img") and lines[-3].endswith("(done)"), res.stderr
    assert lines[-2] == "ablate PrivateTest: figures: 0/5 img, <1s (interrupted)", res.stderr
    assert not (tmp_path / "o").exists()

    real, calls = inference.predict_probs, [0]

    def predict_probs(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # the second pass, after the first reported its images
            kwargs["progress"](1)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "predict_probs", predict_probs)
    res = cli_runner.invoke(app, args)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 130 and lines[-1] == "error: interrupted", res.stderr
    assert lines[-2].startswith("ablate PrivateTest: 4/18 img") and lines[-2].endswith("(interrupted)"), res.stderr
    assert "(done)" not in res.stderr
