"""CLI of the models: augment-lhc, import (Keras files; TensorFlow in test_tf_checkpoint), info."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch

from fertool.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from fertool.cli import app
from fertool.models import build_model
from tests.conftest import TINY_WIDTH, reference_file

SMALL = {
    "input_size": 112,
    "num_classes": 7,
    "hidden": [16],
    "dropout": 0.4,
    "bn_eps": 2e-5,
    "bn_momentum": 0.99,
    **TINY_WIDTH,
}
RECIPE_112 = ["--set", "model.input_size=112"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with a stage-3 backbone checkpoint."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = build_model("resnet34v2", **SMALL)
    ckpt = make_checkpoint(arch="resnet34v2", arch_args=SMALL, state_dict=model.state_dict(), stage="3", epoch=2)
    save_checkpoint(root / "stage3" / "best.pt", ckpt)
    return root


def test_augment_lhc_run_then_controller(cli_runner, run_dir):
    result = cli_runner.invoke(app, ["augment-lhc", "--run", str(run_dir), "--seed", "4", *RECIPE_112])
    assert result.exit_code == 0, result.output
    init = load_checkpoint(run_dir / "stage4" / "init.pt")
    assert init["arch"] == "lhc_net" and init["extra"]["lhc_seed"] == 4
    assert (run_dir / "stage4" / "init.recipe.yaml").is_file()
    parent = load_checkpoint(run_dir / "stage3" / "best.pt")
    assert all(torch.equal(init["state_dict"][k], v) for k, v in parent["state_dict"].items())
    assert "lhc_net" in result.stdout
    # refuses to overwrite, and a second LHC augmentation of an LHC-Net
    again = cli_runner.invoke(app, ["augment-lhc", "--run", str(run_dir), *RECIPE_112])
    assert again.exit_code == 1 and "already exists (pass --overwrite" in again.output
    for flag, seed in (("--overwrite", "5"), ("--force", "6")):  # --force: the old, hidden name
        replaced = cli_runner.invoke(app, ["augment-lhc", "--run", str(run_dir), "--seed", seed, flag, *RECIPE_112])
        assert replaced.exit_code == 0, replaced.output
        assert load_checkpoint(run_dir / "stage4" / "init.pt")["extra"]["lhc_seed"] == int(seed)
    help_text = cli_runner.invoke(app, ["augment-lhc", "--help"]).output
    assert "--overwrite" in help_text and "--force" not in help_text
    init = load_checkpoint(run_dir / "stage4" / "init.pt")
    bad = cli_runner.invoke(
        app, ["augment-lhc", "-c", str(run_dir / "stage4" / "init.pt"), "--out", str(run_dir / "x.pt"), *RECIPE_112]
    )
    assert bad.exit_code == 1 and "already has LHC modules" in bad.output
    assert not (run_dir / "x.pt").exists()
    # controller step: stage4/best.pt -> controller/init.pt
    save_checkpoint(run_dir / "stage4" / "best.pt", init)
    ctrl = cli_runner.invoke(app, ["augment-lhc", "--run", str(run_dir), "--controller", *RECIPE_112])
    assert ctrl.exit_code == 0, ctrl.output
    netc = load_checkpoint(run_dir / "controller" / "init.pt")
    assert netc["arch"] == "lhc_netc" and netc["arch_args"]["controller_init"] == [0.0, 0.0, 0.0, -1.0, -0.5]


def test_augment_lhc_errors(cli_runner, tmp_path):
    missing = cli_runner.invoke(app, ["augment-lhc", "--run", str(tmp_path)])
    assert missing.exit_code == 1 and "stage3/best.pt: not found" in missing.output
    neither = cli_runner.invoke(app, ["augment-lhc"])
    assert neither.exit_code == 1 and "--run DIR" in neither.output
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    res = cli_runner.invoke(app, ["augment-lhc", "-c", str(junk), "--out", str(tmp_path / "o.pt")])
    assert res.exit_code == 1 and "is a text file (it begins 'junk'), not a fertool checkpoint" in res.output


def test_augment_lhc_size_mismatch(cli_runner, run_dir, tmp_path):
    # Table 2 at the recipe's 224 does not fit a 112 px checkpoint: say so instead of guessing
    res = cli_runner.invoke(
        app, ["augment-lhc", "-c", str(run_dir / "stage3" / "best.pt"), "--out", str(tmp_path / "o.pt")]
    )
    assert res.exit_code == 1 and "takes 112x112 images but model.input_size is 224" in res.output


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if len(cells) >= 3:
            rows[cells[0]] = cells[1:]
    return rows


def test_info_recipe(cli_runner):
    result = cli_runner.invoke(app, ["info", "--recipe", "lhc"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = _table_rows(result.stdout)
    assert rows["lhc1 (after stem)"][:2] == ["657,312", "64 x 56 x 56"]
    assert rows["lhc5 (after stage4_unit3)"][:2] == ["2,623,714", "512 x 7 x 7"]
    assert rows["stage4_unit3"][1] == "512 x 7 x 7"
    assert rows["total"][0] == "32,396,302"
    assert "32,411,668 in Keras counting" in result.stdout
    assert "14.8% of the Keras total" in result.stdout
    backbone = cli_runner.invoke(app, ["info", "--recipe", "lhc", "--kind", "backbone"], env={"COLUMNS": "200"})
    assert "27,606,224 in Keras counting" in backbone.stdout and "LHC modules: none" in backbone.stdout
    assert "width: stem 64, stages 64-128-256-512 (the paper's)" in result.stdout
    narrow = cli_runner.invoke(
        app,
        [
            "info",
            "--recipe",
            "lhc",
            "--kind",
            "backbone",
            "--set",
            "model.channels=[8,16,32,64]",
            "--set",
            "model.stem_width=8",
        ],
        env={"COLUMNS": "200"},
    )
    assert narrow.exit_code == 0, narrow.output
    assert "width: stem 8, stages 8-16-32-64\n" in narrow.stdout
    assert _table_rows(narrow.stdout)["stage4_unit3"][1] == "64 x 7 x 7"


def test_info_checkpoint_and_errors(cli_runner, run_dir):
    result = cli_runner.invoke(
        app, ["info", "--checkpoint", str(run_dir / "stage3" / "best.pt")], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    rows = _table_rows(result.stdout)
    assert rows["stem"][1] == "8 x 28 x 28"  # 112 px input, stem width 8 (TINY_WIDTH)
    assert "stage 3, epoch 2" in result.stdout
    both = cli_runner.invoke(app, ["info"])
    assert both.exit_code == 1 and "exactly one of" in both.output


def test_import_keras_cli(cli_runner, tmp_path):
    src = reference_file("keras_resnet34_notop.h5.gz")
    out = tmp_path / "imagenet.pt"
    result = cli_runner.invoke(app, ["import", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert ckpt["arch"] == "resnet34v2" and ckpt["lineage"][0]["path"] == str(src)
    assert "21,302,473 backbone values" in result.stdout.replace("\n", " ")
    again = cli_runner.invoke(app, ["import", str(src), "--out", str(out)])
    assert again.exit_code == 1 and "already exists (pass --overwrite" in again.output
    # the former command name and flag still work
    alias = cli_runner.invoke(app, ["import-keras", str(src), "--out", str(out), "--force", "-q"])
    assert alias.exit_code == 0, alias.output
    (source,) = load_checkpoint(out)["extra"]["source_files"]
    assert source["name"] == src.name and source["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"nope")
    res = cli_runner.invoke(app, ["import-keras", str(bad), "--out", str(tmp_path / "b.pt")])
    assert res.exit_code == 1 and "not a readable Keras HDF5 weight file" in res.output
    assert not (tmp_path / "b.pt").exists()
