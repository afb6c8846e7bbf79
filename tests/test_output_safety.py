"""Output folders: fertool replaces only what it wrote (issue 26).

A user file planted in the target of every writing command survives; a folder that is
not the command's own output is refused unless overwrite, and even then nothing fertool
did not write is removed.
"""

from __future__ import annotations

import json

import pytest
import yaml

from fertool.cli import app
from fertool.errors import FertoolError
from fertool.files import OUTPUT_MARKER, atomic_dir
from tests.test_cli_train import TINY
from tests.test_report import _five_runs


def _plant(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "important.txt").write_text("precious")
    return folder / "important.txt"


def test_atomic_dir_refuses_a_user_folder_and_never_removes_user_files(tmp_path):
    out = tmp_path / "out"
    precious = _plant(out)
    with pytest.raises(FertoolError, match="a folder fertool did not write"):
        with atomic_dir(out, "report"):
            pass
    with atomic_dir(out, "report", overwrite=True) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("2")
    assert precious.read_text() == "precious" and (out / "sub" / "b.txt").read_text() == "2"
    assert json.loads((out / OUTPUT_MARKER).read_text()) == {"kind": "report", "files": ["a.txt", "sub/b.txt"]}
    # its own kind again, no overwrite needed: files it no longer writes go, the user's stay
    with atomic_dir(out, "report") as tmp:
        (tmp / "a.txt").write_text("3")
    assert (out / "a.txt").read_text() == "3" and not (out / "sub").exists()
    assert precious.read_text() == "precious"
    # another kind's folder is refused, and a failure leaves everything as it was
    with pytest.raises(FertoolError, match="a fertool report folder"):
        with atomic_dir(out, "ablation"):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(out, "report") as tmp:
            (tmp / "a.txt").write_text("4")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries left


def test_atomic_dir_ignores_a_tampered_marker_naming_outside_files(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / OUTPUT_MARKER).write_text(json.dumps({"kind": "report", "files": ["../victim.txt", str(victim)]}))
    with atomic_dir(out, "report") as tmp:
        (tmp / "r.md").write_text("x")
    assert victim.read_text() == "keep"


def test_report_keeps_user_files(tmp_path, cli_runner):
    _five_runs(tmp_path / "runs")
    out = tmp_path / "u"
    precious = _plant(out)
    res = cli_runner.invoke(app, ["report", str(tmp_path / "runs"), "-o", str(out)])
    assert res.exit_code == 1 and "did not write" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in out.iterdir()) == ["important.txt"]
    res = cli_runner.invoke(app, ["report", str(tmp_path / "runs"), "-o", str(out), "--overwrite", "--html"])
    assert res.exit_code == 0, res.output
    assert precious.read_text() == "precious" and (out / "report.md").is_file() and (out / "index.html").is_file()
    res = cli_runner.invoke(app, ["report", str(tmp_path / "runs"), "-o", str(out)])  # now ours: no flag needed
    assert res.exit_code == 0, res.output
    assert precious.read_text() == "precious" and not (out / "index.html").exists()


def test_report_into_a_run_folder_is_refused(tmp_path, cli_runner):
    _five_runs(tmp_path / "runs")
    run = tmp_path / "runs" / "run0"
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    res = cli_runner.invoke(app, ["report", str(tmp_path / "runs"), "-o", str(run)])
    assert res.exit_code == 1 and "did not write" in res.output
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_report_into_the_current_folder(tmp_path, cli_runner, monkeypatch):
    _five_runs(tmp_path / "runs")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for _ in range(2):  # a new folder, then its own report again
        res = cli_runner.invoke(app, ["report", str(tmp_path / "runs"), "-o", "."])
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in here.iterdir()) == [OUTPUT_MARKER, "report.json", "report.md", "runs.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "runs"]  # no hidden leftovers


@pytest.mark.parametrize("command", ["ablate", "evaluate"])
def test_ablate_and_evaluate_refuse_a_user_folder_before_any_work(tmp_path, cli_runner, command):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"not read: the output folder is checked first")
    res = cli_runner.invoke(app, [command, "-c", str(ckpt), "-o", str(tmp_path), "--csv", str(ckpt)])
    assert res.exit_code == 1 and "did not write" in res.output and "Traceback" not in res.output
    assert ckpt.read_bytes().startswith(b"not read")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_pipeline_refuses_a_user_report_folder_before_training(tmp_path, cli_runner):
    run = tmp_path / "run"
    notes = _plant(run / "report")
    res = cli_runner.invoke(app, ["pipeline", "--run", str(run), "--seeds", "0", "-q"])
    assert res.exit_code == 1 and "did not write" in res.output, res.output
    assert notes.read_text() == "precious"
    assert not (run / "data").exists()


def test_train_keeps_the_users_recipe_in_the_run_folder(tmp_path, cli_runner):
    from fertool.data.sample import generate_sample

    csv = generate_sample(tmp_path / "sample.csv", per_class=2, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    recipe = run / "recipe.yaml"  # the -r file itself lives where train keeps its resolved recipe
    text = "# mine\n" + yaml.safe_dump(TINY)
    recipe.write_text(text)
    res = cli_runner.invoke(
        app, ["train", "-r", str(recipe), "--stage", "1", "--run", str(run), "--csv", str(csv), "--device", "cpu", "-q"]
    )
    assert res.exit_code == 0, res.output
    assert recipe.read_text() == text
    assert "left as it is" in res.output
    assert (run / "stage1" / "recipe.yaml").is_file()


def test_a_moved_run_folder_still_matches_its_own_csv(tmp_path):
    """prepare.json records the CSV's absolute path; a moved run compares the bytes."""
    from fertool.files import sha256_file, write_json
    from fertool.pipeline import _check_same_csv

    run = tmp_path / "moved"
    csv = run / "data" / "sample.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("emotion,pixels,Usage\n")
    summary = run / "data" / "prepared" / "prepare.json"
    summary.parent.mkdir()
    write_json(summary, {"source": {"csv": str(tmp_path / "old" / "data" / "sample.csv"), "sha256": sha256_file(csv)}})
    _check_same_csv(summary, csv, run)  # accepted
    csv.write_text("emotion,pixels,Usage\n0,1 2,Training\n")
    with pytest.raises(FertoolError, match="was started with the CSV"):
        _check_same_csv(summary, csv, run)


def test_predict_refuses_a_user_folder_and_keeps_user_files(tmp_path, cli_runner):
    import cv2
    import numpy as np

    from tests.test_predict import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt")
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    cv2.imwrite(str(photo), np.full((64, 64, 3), 120, np.uint8))
    out = tmp_path / "out"
    precious = _plant(out)
    args = ["predict", str(photo), "-c", str(ckpt), "-o", str(out), "-q"]
    res = cli_runner.invoke(app, args)
    assert res.exit_code == 1 and "did not write" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["important.txt"]
    for extra in (["--overwrite"], []):  # then it is fertool's own folder
        res = cli_runner.invoke(app, args + extra)
        assert "did not write" not in res.output, res.output
        assert (out / "predictions.jsonl").is_file() and precious.read_text() == "precious"
