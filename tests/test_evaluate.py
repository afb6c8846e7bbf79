"""predict_probs (plain and TTA) and the ``fertool evaluate`` command."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fertool.data.datasets import ArraySplit
from fertool.evaluation.inference import predict_probs
from fertool.recipe import TTAPass, TTAPreset
from tests.conftest import TINY_WIDTH


class TinyNet(nn.Module):
    """A stand-in classifier that is not flip-invariant: logits from a 4x4 pooled image."""

    def __init__(self, num_classes: int = 7, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * 16, num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(num_classes, 48, generator=gen) * 0.05)
            self.fc.bias.copy_(torch.randn(num_classes, generator=gen))
        self.drop = nn.Dropout(0.5)  # must be inactive at inference

    def forward(self, x):  # (B, 3, S, S) 0..255
        pooled = nn.functional.adaptive_avg_pool2d(x / 255.0, 4).flatten(1)  # (B, 48)
        return self.fc(self.drop(pooled))


def _split(n=10, size=16, seed=1, classes=7):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    labels = torch.from_numpy(rng.integers(0, classes, size=n).astype(np.int64))
    return ArraySplit(images=images, labels=labels, name="PrivateTest")


def _direct_probs(model, x):
    with torch.no_grad():
        return torch.softmax(model.eval()(x), dim=-1)


def test_predict_probs_plain_matches_direct_forward():
    split = _split()
    model = TinyNet()
    model.train()
    calls = []
    out = predict_probs(model, split, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    x = torch.from_numpy(split.images).float()[:, None].expand(-1, 3, -1, -1)
    expected = _direct_probs(model, x).numpy()
    assert out["probs"].dtype == np.float32 and out["probs"].shape == (10, 7)
    np.testing.assert_allclose(out["probs"], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-6)
    assert out["tta_probs"] is None
    np.testing.assert_array_equal(out["labels"], split.labels.numpy())
    assert calls[0] == (0, 10) and calls[-1] == (10, 10) and [d for d, _ in calls] == [0, 4, 8, 10]
    model.train()
    assert model.training  # mode restored


def test_predict_probs_tta_is_weighted_mean_of_views():
    split = _split(n=5)
    model = TinyNet()
    preset = TTAPreset(identity_weight=2.0, passes=(TTAPass(flip=(False, True), shift_h=(0.0, 16.0)),))
    out = predict_probs(model, split, batch_size=2, tta=preset)
    x = torch.from_numpy(split.images).float()[:, None].expand(-1, 3, -1, -1)
    # views at size 16 (reference 224): flip; shift right by 16*16/224 px; both
    shift = 16.0 * 16 / 224
    from fertool.evaluation.tta import View, apply_view

    p = lambda v: _direct_probs(model, apply_view(x, v))  # noqa: E731
    expected = (
        2 * _direct_probs(model, x) + p(View(flip=True)) + p(View(shift_h=shift)) + p(View(shift_h=shift, flip=True))
    ) / 5
    np.testing.assert_allclose(out["tta_probs"], expected.numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(out["tta_probs"], out["probs"])  # the views do change the result
    np.testing.assert_allclose(out["probs"], _direct_probs(model, x).numpy(), rtol=1e-6, atol=1e-7)


def test_predict_probs_paper_preset():
    from fertool.evaluation.tta import apply_view, tta_plan
    from fertool.recipe import load_recipe

    paper = load_recipe(None, ()).tta.presets["paper"]
    split = _split(n=3, size=24)
    model = TinyNet()
    out = predict_probs(model, split, batch_size=2, tta=paper)
    x = torch.from_numpy(split.images).float()[:, None].expand(-1, 3, -1, -1)
    views = tta_plan(paper, 24)
    assert len(views) == 59
    total = 3 * _direct_probs(model, x) + sum(_direct_probs(model, apply_view(x, v)) for v in views)
    np.testing.assert_allclose(out["tta_probs"], (total / 62).numpy(), rtol=1e-5, atol=1e-7)


def test_predict_probs_empty_split():
    split = _split(n=0)
    out = predict_probs(TinyNet(), split, tta=TTAPreset(passes=(TTAPass(flip=(False, True)),)))
    assert out["probs"].shape == (0, 7) and out["tta_probs"].shape == (0, 7)


# --------------------------------------------------------------------------- fertool evaluate

SPLIT_ROWS = ["Training"] * 4 + ["PrivateTest"] * 9 + ["PublicTest"] * 3 + ["PrivateTest"] * 3


def _write_csv(path, usages, seed=0, labels=None):
    rng = np.random.default_rng(seed)
    lines = ["emotion,pixels,Usage"]
    for i, usage in enumerate(usages):
        label = int(rng.integers(0, 7)) if labels is None else labels[i]
        lines.append(f"{label},{' '.join(map(str, rng.integers(0, 256, 48 * 48)))},{usage}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _small_checkpoint(path, num_classes=7):
    """A real resnet34v2 at 32 px with a tiny head; bn_data set so that raw pixels normalise."""
    from fertool import CLASS_NAMES
    from fertool.checkpoint import make_checkpoint, save_checkpoint
    from fertool.models import build_model

    torch.manual_seed(0)
    args = {"input_size": 32, "num_classes": num_classes, "hidden": [16, 16], **TINY_WIDTH}
    model = build_model("resnet34v2", **args)
    with torch.no_grad():
        model.stem.bn_data.running_mean.fill_(128.0)
        model.stem.bn_data.running_var.fill_(75.0**2)
        model.head.fc3.weight.mul_(0.05)  # keep the softmax away from 0/1 (no loss clipping)
    ckpt = make_checkpoint(
        arch="resnet34v2",
        arch_args=args,
        state_dict=model.state_dict(),
        stage="3",
        class_names=CLASS_NAMES[:num_classes],
        extra={"seed": 7},
    )
    save_checkpoint(path, ckpt)
    return model.eval()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    model = _small_checkpoint(root / "run" / "best.pt")
    csv = _write_csv(root / "fer.csv", SPLIT_ROWS)
    return {"root": root, "ckpt": root / "run" / "best.pt", "csv": csv, "model": model}


def _csv_split(csv, split):
    """The CSV's rows of ``split`` read independently of fertool: (rows, labels, 48x48 images)."""
    rows, labels, images = [], [], []
    for row, line in enumerate(csv.read_text().splitlines()[1:]):
        label, pixels, usage = line.split(",")
        if usage == split:
            rows.append(row)
            labels.append(int(label))
            images.append(np.array(pixels.split(), dtype=np.float32).reshape(48, 48))
    return np.array(rows), np.array(labels), np.stack(images)


def test_cli_evaluate_with_tta(workdir, cli_runner):
    import json

    from fertool.cli import app

    result = cli_runner.invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(workdir["ckpt"]),
            "--csv",
            str(workdir["csv"]),
            "--tta",
            "--set",
            "tta.preset=flip",
            "--quiet",
            "--device",
            "cpu",
            "--batch-size",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    out = workdir["root"] / "run" / "eval-PrivateTest"
    assert {p.name for p in out.iterdir()} == {
        "metrics.json",
        "probs.npz",
        "confusion.png",
        "recipe.yaml",
        ".fertool-output.json",
    }  # the marker: fertool wrote this folder
    assert "accuracy" in result.stdout and "TTA (flip)" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    npz = np.load(out / "probs.npz")

    rows, labels, images = _csv_split(workdir["csv"], "PrivateTest")
    np.testing.assert_array_equal(npz["rows"], rows)
    np.testing.assert_array_equal(npz["labels"], labels)
    # independent inference path: F.interpolate matches TF's resize to ~1e-4
    x = torch.nn.functional.interpolate(
        torch.from_numpy(images)[:, None], size=32, mode="bilinear", align_corners=False
    ).expand(-1, 3, -1, -1)
    with torch.no_grad():
        direct = torch.softmax(workdir["model"](x), -1).numpy()
    np.testing.assert_allclose(npz["probs"], direct, atol=1e-4)
    pred = direct.argmax(1)
    assert metrics["n"] == 12 and metrics["split"] == "PrivateTest"
    assert metrics["accuracy"] == pytest.approx((pred == labels).mean())
    assert metrics["loss"] == pytest.approx(-np.log(direct[np.arange(12), labels]).mean(), rel=1e-4)
    assert np.asarray(metrics["confusion"]).sum() == 12
    assert [metrics["per_class"][c]["support"] for c in metrics["class_names"]] == np.bincount(
        labels, minlength=7
    ).tolist()
    assert metrics["arch"] == "resnet34v2" and metrics["stage"] == "3" and metrics["seed"] == 7

    tta = metrics["tta"]
    assert tta["preset"] == "flip" and tta["views"] == 1 and tta["divisor"] == 2.0
    flipped = torch.softmax(workdir["model"](x.flip(-1)), -1).detach().numpy()
    np.testing.assert_allclose(npz["tta_probs"], (direct + flipped) / 2, atol=1e-4)
    assert npz["tta_probs"].shape == (12, 7)
    np.testing.assert_allclose(npz["tta_probs"].sum(1), 1.0, atol=1e-5)
    assert tta["accuracy"] == pytest.approx((npz["tta_probs"].argmax(1) == labels).mean())
    assert not np.allclose(npz["tta_probs"], npz["probs"], atol=1e-4)


def test_cli_evaluate_json_stdout_only(workdir, cli_runner, tmp_path):
    import json

    from fertool.cli import app

    out = tmp_path / "ev"
    result = cli_runner.invoke(
        app,
        [
            "evaluate",
            "-c",
            str(workdir["ckpt"]),
            "--csv",
            str(workdir["csv"]),
            "--split",
            "PublicTest",
            "--json",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)  # nothing else on stdout
    assert parsed == json.loads((out / "metrics.json").read_text())
    assert parsed["n"] == 3 and parsed["tta"] is None
    assert "tta_probs" not in np.load(out / "probs.npz").files


@pytest.mark.parametrize(
    "case",
    ["split", "empty", "labels", "foreign", "preset", "nodata"],
)
def test_cli_evaluate_bad_input(workdir, cli_runner, tmp_path, case):
    from fertool.cli import app

    ckpt, csv = workdir["ckpt"], workdir["csv"]
    args = ["--split", "PrivateTest"]
    if case == "split":
        args = ["--split", "Validation"]
        expected = "unknown split"
    elif case == "empty":
        csv = _write_csv(tmp_path / "train_only.csv", ["Training"] * 3)
        expected = "PrivateTest"
    elif case == "labels":
        csv = _write_csv(tmp_path / "labels.csv", ["PrivateTest"] * 3, labels=[0, 5, 1])
        ckpt = tmp_path / "three.pt"
        _small_checkpoint(ckpt, num_classes=3)  # a 3-class model on FER2013's 7: another class set
        expected = "are not the 3 classes of"
    elif case == "foreign":
        ckpt = tmp_path / "foreign.pt"
        ckpt.write_bytes(b"not a checkpoint at all")
        expected = "is a text file (it begins 'not a checkpoint at all'), not a fertool checkpoint"
    elif case == "preset":
        args += ["--tta-preset", "sideways"]
        expected = "unknown TTA preset 'sideways'"
    else:
        expected = "--csv or --images"
    data = [] if case == "nodata" else ["--csv", str(csv)]
    out = tmp_path / "out"
    result = cli_runner.invoke(app, ["evaluate", "-c", str(ckpt), *data, "--out", str(out), *args, "-q"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not out.exists()


def test_evaluate_image_folder(workdir, tmp_path):
    """A folder of class subfolders (users' own data) through fertool.data.cache."""
    import cv2

    from fertool.evaluation.evaluate import evaluate_checkpoint

    rng = np.random.default_rng(3)
    root = tmp_path / "faces"
    expected_labels = []
    for label, cls in [(0, "angry"), (3, "happy"), (6, "neutral")]:
        folder = root / "test" / cls
        folder.mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (32, 32), dtype=np.uint8))
            expected_labels.append(label)
    report = evaluate_checkpoint(
        workdir["ckpt"], images=root, split="PrivateTest", out_dir=tmp_path / "ev", resamples=100
    )
    assert report["n"] == 6 and report["images"] == str(root)
    npz = np.load(tmp_path / "ev" / "probs.npz")
    assert sorted(npz["labels"].tolist()) == sorted(expected_labels)
    # wrong size for the checkpoint: refused before anything is written
    big = tmp_path / "big" / "test" / "sad"
    big.mkdir(parents=True)
    cv2.imwrite(str(big / "0.png"), np.zeros((48, 48), np.uint8))
    from fertool.errors import DataError

    with pytest.raises(DataError, match="48x48"):
        evaluate_checkpoint(workdir["ckpt"], images=tmp_path / "big", split="PrivateTest", out_dir=tmp_path / "ev2")
    assert not (tmp_path / "ev2").exists()
