"""FER+, class folders and RAF-DB end to end through the CLI: sample-data -> prepare -> train
(a tiny stage 1) -> evaluate -> predict -> export, with the data's class names in every output;
a checkpoint of one class set is refused on data of another."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import yaml

from fertool import CLASS_NAMES
from fertool.cli import app
from fertool.data.ferplus import FERPLUS_CLASSES
from fertool.data.folders import RAFDB_CLASSES
from fertool.data.sample import FOLDER_CLASSES
from fertool.deploy.export import read_export_metadata
from fertool.deploy.predict import FaceClassifier
from tests.conftest import TINY_WIDTH

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the astronaut photograph")

SIZE = 32
TINY = {
    "prepare": {"size": SIZE},
    "data": {"eval_source": "prepared"},
    "model": {"input_size": SIZE, "hidden": [8], "bn_momentum": 0.9, **TINY_WIDTH},
    "train": {"eval_batch_size": 32, "stages": {"1": {"optimizer": "sgd", "max_epochs": 1, "batch_size": 16}}},
}
# case -> (sample-data format, prepare arguments given the sample folder, the classes)
CASES = {
    "ferplus-majority": (
        "ferplus",
        lambda d: ["--csv", d / "fer2013.csv", "--ferplus", d / "fer2013new.csv", "--label-mode", "majority"],
        FERPLUS_CLASSES,
    ),
    "ferplus-crossentropy": (
        "ferplus",
        lambda d: ["--csv", d / "fer2013.csv", "--ferplus", d / "fer2013new.csv", "--label-mode", "crossentropy"],
        FERPLUS_CLASSES,
    ),
    "folder": ("folder", lambda d: ["--folder", d], FOLDER_CLASSES),
    "rafdb": ("rafdb", lambda d: ["--rafdb", d], RAFDB_CLASSES),
}


def invoke(runner, *args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("datasets")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    photo = root / "astronaut.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    return root, recipe, photo, CliRunner()


@pytest.fixture(scope="module")
def prepared(workspace):
    """Each case's prepared folder, made once (samples shared between the two FER+ modes)."""
    root, recipe, _, runner = workspace
    out = {}
    for name, (fmt, args, _) in CASES.items():
        sample = root / f"sample-{fmt}"
        if not sample.exists():
            invoke(runner, "sample-data", "--format", fmt, "--out", sample, "--per-class", 6)
        out[name] = root / f"prepared-{name}"
        invoke(runner, "prepare", *args(sample), "--out", out[name], "-r", recipe, "-q")
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_prepare_train_evaluate_predict_export(workspace, prepared, case):
    root, recipe, photo, runner = workspace
    classes = list(CASES[case][2])
    images = prepared[case]
    assert json.loads((images / "prepare.json").read_text())["classes"] == classes

    run = root / f"run-{case}"
    result = invoke(
        runner, "train", "-r", recipe, "--stage", 1, "--run", run, "--images", images, "--device", "cpu", "-q"
    )
    best = run / "stage1" / "best.pt"
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["class_names"] == classes and ckpt["arch_args"]["num_classes"] == len(classes)
    assert ckpt["extra"]["data"]["dataset"] == case.split("-")[0]
    assert ckpt["extra"]["data"]["label_mode"] == ("crossentropy" if case.endswith("crossentropy") else "majority")
    if len(classes) != 7:
        assert f"model.num_classes: {len(classes)} (was 7)" in result.output

    result = invoke(
        runner, "evaluate", "-c", best, "--images", images, "--split", "PrivateTest", "--device", "cpu", "-q", "--json"
    )
    metrics = json.loads(result.stdout)
    assert metrics["class_names"] == classes
    assert list(metrics["per_class"]) == classes
    assert sum(c["support"] for c in metrics["per_class"].values()) == metrics["n"]
    assert np.asarray(metrics["confusion"]).shape == (len(classes), len(classes))
    with np.load(run / "stage1" / "eval-PrivateTest" / "probs.npz") as probs:
        assert probs["class_names"].tolist() == classes and probs["probs"].shape[1] == len(classes)

    result = invoke(runner, "info", "--checkpoint", best)
    assert f"{len(classes)}: {', '.join(classes)}" in " ".join(result.stdout.split())

    photo_model = FaceClassifier.from_checkpoint(best).photo  # faces cropped in colour and fitted, or FER2013's path
    assert (photo_model is not None) == (case in ("folder", "rafdb"))
    result = invoke(runner, "predict", photo, "-c", best, "--json", "--device", "cpu", "-q")
    faces = [json.loads(line) for line in result.stdout.splitlines()]
    assert faces and list(faces[0]["probs"]) == classes and faces[0]["label"] in classes

    out = root / f"export-{case}.pt"
    result = invoke(runner, "export", "-c", best, "--format", "torchscript", "--out", out, "-q")
    assert ", ".join(classes) in " ".join(result.stdout.split())  # Rich wraps long lines
    meta = read_export_metadata(out)
    assert meta["class_names"] == classes and meta["output"]["shape"] == ["batch", len(classes)]
    if case in ("folder", "rafdb"):  # colour photos, kept in colour
        assert meta["input"]["channels"] == "RGB" and "colour" in meta["preparation"]


def test_crossentropy_mode_trains_against_the_vote_distribution(workspace, prepared):
    """Same images, labels, seed and start: only the targets differ, and so do the weights after one epoch."""
    root = workspace[0]
    a = torch.load(root / "run-ferplus-majority" / "stage1" / "best.pt", weights_only=True)
    b = torch.load(root / "run-ferplus-crossentropy" / "stage1" / "best.pt", weights_only=True)
    assert a["class_names"] == b["class_names"] and a["state_dict"].keys() == b["state_dict"].keys()
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_fer2013_checkpoint_refused_on_ferplus_data_with_both_class_lists(workspace, prepared):
    root, recipe, _, runner = workspace
    sample = root / "fer2013.csv"
    invoke(runner, "sample-data", "--out", sample, "--per-class", 3)
    run = root / "run-fer2013"
    invoke(
        runner,
        "train",
        "-r",
        recipe,
        "--stage",
        1,
        "--run",
        run,
        "--csv",
        sample,
        "--device",
        "cpu",
        "-q",
        "--set",
        "data.eval_source=reference",
    )
    best = run / "stage1" / "best.pt"
    assert torch.load(best, weights_only=True)["class_names"] == list(CLASS_NAMES)
    result = runner.invoke(
        app, ["evaluate", "-c", str(best), "--images", str(prepared["ferplus-majority"]), "--device", "cpu", "-q"]
    )
    assert result.exit_code == 1
    message = result.stderr
    assert "the data's 8 classes (" + ", ".join(FERPLUS_CLASSES) + ")" in message
    assert "the 7 classes of " + str(best) + " (" + ", ".join(CLASS_NAMES) + ")" in message
    assert not (run / "stage1" / "eval-PrivateTest").exists()
    # nor trained on further there
    result = runner.invoke(
        app,
        [
            "train",
            "-r",
            str(recipe),
            "--stage",
            "2",
            "--run",
            str(root / "run-refused"),
            "--init",
            str(best),
            "--images",
            str(prepared["ferplus-majority"]),
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert result.exit_code == 1 and "cannot be trained or evaluated on data of another" in result.stderr
    assert not (root / "run-refused" / "stage2" / "best.pt").exists()
