"""``fertool train``: a stage from a CSV end to end, and its one-line refusals."""

from __future__ import annotations

import json

import pytest
import yaml

from fertool.cli import app
from tests.conftest import TINY_WIDTH

TINY = {
    "model": {
        "input_size": 32,
        "hidden": [8, 8],
        "bn_momentum": 0.9,
        **TINY_WIDTH,
        "lhc": [{"after": "stem", "heads": 4, "dim": 8}],
        "controller_init": [0.0],
    },
    "train": {"eval_batch_size": 16, "stages": {"1": {"optimizer": "sgd", "max_epochs": 1, "batch_size": 7}}},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from fertool.data.sample import generate_sample

    folder = tmp_path_factory.mktemp("cli-train")
    csv = generate_sample(folder / "sample.csv", per_class=2, seed=0)  # 14 / 7 / 7 images
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    return folder, csv, recipe


def test_help_lists_the_options(cli_runner):
    result = cli_runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for option in (
        "--stage",
        "--run",
        "--csv",
        "--images",
        "--init",
        "--seed",
        "--resume",
        "--overwrite",
        "--device",
        "--set",
        "--allow-test-selection",
        "--quiet",
    ):
        assert option in result.output


def test_train_stage_from_csv_then_refuse_to_redo_it(cli_runner, tiny):
    folder, csv, recipe = tiny
    run = folder / "run"
    args = ["train", "-r", str(recipe), "--stage", "1", "--run", str(run), "--csv", str(csv), "--device", "cpu", "-q"]
    result = cli_runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "made in memory" in result.output  # the prepare-free fallback says so
    assert "model.pretrained is not set" in result.output  # from scratch, with a warning
    for name in ("best.pt", "last.pt", "metrics.jsonl", "curves.png", "summary.json", "recipe.yaml"):
        assert (run / "stage1" / name).is_file(), name
    assert (run / "recipe.yaml").is_file()
    summary = json.loads((run / "stage1/summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 1 and summary["best_epoch"] == 1

    again = cli_runner.invoke(app, args)
    assert again.exit_code == 1
    assert "already done" in again.output and "--overwrite" in again.output
    assert json.loads((run / "stage1/summary.json").read_text()) == summary  # nothing lost

    # --overwrite trains it again (here with the Rich progress display, not -q).
    redo = cli_runner.invoke(app, [a for a in args if a != "-q"] + ["--overwrite", "--seed", "1"])
    assert redo.exit_code == 0, redo.output
    assert "val acc" in redo.output and "stage 1: finished" in redo.output  # epoch table header, summary
    assert json.loads((run / "stage1/summary.json").read_text())["seed"] == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--stage", "7"], "unknown stage"),
        (["--stage", "1", "--set", "data.val_split=PrivateTest"], "allow-test-selection"),
        (["--stage", "2", "--csv", "{csv}"], "train stage 1 first"),
        (["--stage", "1"], "no training data"),
        (["--stage", "1", "--csv", "{folder}/missing.csv"], "missing.csv: CSV file not found"),
    ],
)
def test_one_line_errors(cli_runner, tiny, extra, message):
    folder, csv, recipe = tiny
    extra = [e.format(csv=csv, folder=folder) for e in extra]
    result = cli_runner.invoke(app, ["train", "-r", str(recipe), "--run", str(folder / "bad-run"), "-q", *extra])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not (folder / "bad-run").exists()  # a failed run leaves no empty run folder (issue 26)
