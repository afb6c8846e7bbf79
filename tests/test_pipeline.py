"""``fertool pipeline``: the whole protocol on a tiny recipe, re-runs that skip or resume,
the final table, and the command's refusals."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser

import pytest
import torch
import yaml

from fertool.checkpoint import load_checkpoint
from fertool.cli import app
from fertool.errors import FertoolError
from fertool.pipeline import TTA_HURTS, final_table, run_pipeline, table_notes
from fertool.recipe import load_recipe
from tests.conftest import TINY_WIDTH

ONE_EPOCH = {"max_epochs": 1, "patience": 1}
TINY = {
    "prepare": {"size": 32},
    "model": {
        "input_size": 32,
        "hidden": [8, 8],
        "bn_momentum": 0.9,
        **TINY_WIDTH,
        "lhc": [{"after": "stem", "heads": 4, "dim": 8}, {"after": "stage1_unit3", "heads": 4, "dim": 8}],
        "controller_init": [0.0, -1.0],
    },
    # one epoch a stage at 1/8 width: whether an LHC-Net passes the 1.1x selection rule is
    # chance here; these tests are about the run's mechanics (the rule: test_pipeline_selection)
    "train": {
        "eval_batch_size": 16,
        "selection_factor": 1000.0,
        "stages": {
            "1": {**ONE_EPOCH, "optimizer": "sgd", "batch_size": 7},
            "2": {**ONE_EPOCH, "batch_size": 7},
            "3": {**ONE_EPOCH, "batch_size": 7},
            "4": {**ONE_EPOCH, "batch_size": 7},
            "controller": {**ONE_EPOCH, "batch_size": 7},
        },
    },
    "sample": {"per_class": 2, "seed": 0},  # 14 / 7 / 7 images
    "ablate": {"modes": ["off"], "sets": ["single"]},
    "pipeline": {"seeds": [1, 2]},
}

MODEL_DIRS = {  # what each model's checkpoints are, for two seeds
    "ResNet34v2": ["seed-1/resnet/stage4", "seed-2/resnet/stage4"],
    "LHC-Net": ["seed-1/stage4", "seed-2/stage4"],
    "LHC-NetC": ["seed-1/controller", "seed-2/controller"],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete two-seed pipeline run on the generated sample, with its log."""
    run = tmp_path_factory.mktemp("pipeline") / "run"
    messages: list[str] = []
    result = run_pipeline(load_recipe(TINY), run, device="cpu", log=messages.append)
    return run, result, messages


@pytest.fixture
def run_copy(finished, tmp_path):
    """A private copy of the finished run, for tests that change or re-run it (cheap at the tests' width)."""
    run, result, messages = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    # A run records the absolute path of the CSV it prepared (prepare.json), and the pipeline
    # refuses another CSV: the copy's record names the copy's own sample.csv.
    summary = copy / "data/prepared/prepare.json"
    recorded = json.loads(summary.read_text())
    assert recorded["source"]["csv"] == str(run / "data/sample.csv")
    recorded["source"]["csv"] = str(copy / "data/sample.csv")
    summary.write_text(json.dumps(recorded))
    return copy, result, messages


#: The paper's best single models (Table A2): no TTA, TTA, parameters.
PAPER = {"ResNet34v2": (72.81, 73.92, "27.6M"), "LHC-Net": (73.39, 74.42, "32.4M"), "LHC-NetC": (73.53, 74.28, "32.4M")}


def test_every_step_leaves_its_outputs(finished):
    run, result, messages = finished
    assert (run / "recipe.yaml").is_file() and (run / "data/sample.csv").is_file()
    assert any("synthetic sample" in m for m in messages)
    assert (run / "data/prepared/prepare.json").is_file()
    for dirs in MODEL_DIRS.values():
        for d in dirs:
            summary = json.loads((run / d / "summary.json").read_text())
            assert summary["status"] in ("finished", "early_stopped"), d
            metrics = json.loads((run / d / "eval-PrivateTest/metrics.json").read_text())
            assert metrics["n"] == 7 and metrics["tta"] is not None, d
    # Stage 4 started from the stage-3 weights with LHC modules added.
    assert (run / "seed-1/stage4/init.pt").is_file()
    ablated = [p.relative_to(run).parts[0] for p in run.glob("seed-*/stage4/ablate-PrivateTest/ablation.json")]
    assert len(ablated) == 1  # only the best LHC-Net is ablated
    assert (run / "report/report.md").is_file()
    assert json.loads((run / "pipeline.json").read_text())["table"] == result["table"]


def test_each_seed_draws_its_own_lhc_initialisation(finished):
    """Sets A (ResNet re-runs) and C (LHC-Nets): data seed S and init seed S in seed-S/, as the
    authors' seeded script derives both from one seed (pipeline.lhc_init: per_seed)."""
    run, result, _ = finished
    inits = [load_checkpoint(run / f"seed-{s}/stage4/init.pt")["state_dict"] for s in (1, 2)]
    lhc_keys = [k for k in inits[0] if k.startswith("lhc.")]
    assert lhc_keys and any(not torch.equal(inits[0][k], inits[1][k]) for k in lhc_keys)
    backbone = [k for k in inits[0] if not k.startswith("lhc.")]
    assert all(torch.equal(inits[0][k], inits[1][k]) for k in backbone)  # the same stage-3 ResNet
    for s in (1, 2):
        lhc = json.loads((run / f"seed-{s}/stage4/summary.json").read_text())
        control = json.loads((run / f"seed-{s}/resnet/stage4/summary.json").read_text())
        assert lhc["seed"] == control["seed"] == s and lhc["init_seed"] == control["init_seed"] == s
        assert lhc["arch"] == "lhc_net" and control["arch"] == "resnet34v2"
    assert [(r["seed"], r["init_seed"]) for r in result["seed_runs"]] == [(1, 1), (2, 2)]


@pytest.mark.parametrize("lhc_init, expected", [("per_seed", [7, 7, 7]), ("fixed", [5, 5, 5])])
def test_lhc_init_fixed_keeps_train_init_seed_for_every_seed(tmp_path, lhc_init, expected):
    from fertool.pipeline import _Run, _train_seed

    recipe = load_recipe({**TINY, "train": {**TINY["train"], "init_seed": 5}, "pipeline": {"lhc_init": lhc_init}})
    calls = []

    class Recorder(_Run):
        def train(self, stage, where, *, seed, init=None, init_seed=None, stage_recipe=None):
            calls.append((stage, seed, init_seed))
            return where / stage / "best.pt"

        def train_stage4(self, where, **kwargs):
            self.train("4", where, **kwargs)
            return where / "stage4" / "best.pt", {"status": "accepted", "reason": None}

    outcome = _train_seed(Recorder(recipe, tmp_path, "cpu", print, None), 7, tmp_path / "stage3/best.pt")
    assert [c[2] for c in calls] == expected and [c[1] for c in calls] == [7, 7, 7]
    assert outcome.record()["init_seed"] == expected[0]


def test_the_final_table_reports_the_best_run_of_each_model_beside_the_paper(finished):
    run, result, _ = finished
    assert [row["model"] for row in result["table"]] == ["ResNet34v2", "LHC-Net", "LHC-NetC"]
    for row in result["table"]:
        runs = [json.loads((run / d / "eval-PrivateTest/metrics.json").read_text()) for d in MODEL_DIRS[row["model"]]]
        best = max(runs, key=lambda m: m["accuracy"])
        assert row["runs"] == len(runs) and row["rejected"] == 0 and row["excluded"] == []
        assert row["accuracy"] == pytest.approx(100 * best["accuracy"])
        assert row["tta_accuracy"] == pytest.approx(100 * best["tta"]["accuracy"])
        assert (row["paper_accuracy"], row["paper_tta_accuracy"], row["paper_params"]) == PAPER[row["model"]]
    params = {row["model"]: row["params"] for row in result["table"]}
    assert params["LHC-Net"] > params["ResNet34v2"]  # the modules add parameters


def test_every_output_says_the_results_are_synthetic(finished):
    from fertool.checkpoint import load_checkpoint
    from fertool.files import sha256_file

    run, result, _ = finished
    sample = {
        "kind": "synthetic sample",
        "source": "sample.csv",
        "sha256": sha256_file(run / "data/sample.csv"),
        "rows": 28,
    }
    for folder in ("seed-1/resnet/stage4", "seed-1/stage4", "seed-2/controller"):
        assert load_checkpoint(run / folder / "best.pt")["extra"]["data"]["provenance"] == sample, folder
        metrics = json.loads((run / folder / "eval-PrivateTest/metrics.json").read_text())
        assert metrics["model_data"] == sample and metrics["data"] == sample
    assert result["synthetic"] is True and "SYNTHETIC" in result["notes"][0]
    report_md = (run / "report/report.md").read_text()
    assert "**Synthetic data.**" in report_md and "ours (synthetic)" in report_md


def test_the_final_table_explains_a_tta_that_hurts():
    rows = final_table(
        {
            "LHC-Net": [{"accuracy": 0.534, "tta": {"accuracy": 0.477}}],
            "LHC-NetC": [{"accuracy": 0.5, "tta": {"accuracy": 0.51}}],
        }
    )
    notes = table_notes(rows, synthetic=False)
    assert len(notes) == 1 and notes[0].startswith("TTA lowered the accuracy of LHC-Net 53.40% -> 47.70%.")
    assert TTA_HURTS in notes[0] and "LHC-NetC" not in notes[0]
    assert table_notes(final_table({"LHC-Net": [{"accuracy": 0.5, "tta": None}]}), synthetic=False) == []


class _Page(HTMLParser):
    """The <img> sources and the text of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        assert tag not in ("script", "iframe", "link"), tag  # static: no JavaScript, nothing fetched

    def handle_data(self, data):
        self.text.append(data)


def _parse_page(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _png_bytes(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,"), src[:40]
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data


def test_the_html_report_shows_every_picture_of_the_run_on_one_page(finished):
    run, result, _ = finished
    page = _parse_page(run / "report" / "index.html")
    shown = {_png_bytes(src) for src in page.images}
    # Every picture the steps wrote (curves per stage, confusion matrices, ablation, head
    # correlations, attention pictures, the strip plot) is embedded, so the file stands alone.
    written = {p.read_bytes() for p in run.rglob("*.png")}
    assert written and written <= shown
    text = " ".join(page.text)
    for model in ("ResNet34v2", "LHC-Net", "LHC-NetC"):
        assert model in text
    assert "74.42%" in text  # the paper's LHC-Net TTA figure beside ours
    assert "Synthetic data" in text
    for folder in ("stage1", "seed-1/stage4", "seed-2/controller", "seed-1/resnet/stage4"):
        assert folder in text, folder


def test_report_html_writes_the_page_where_it_says(finished, cli_runner, tmp_path):
    run, _, _ = finished
    out = tmp_path / "shared-report"
    result = cli_runner.invoke(app, ["report", str(run), "--html", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out / "report.md") in result.stderr.replace("\n", "")
    page = _parse_page(out / "index.html")
    assert len(page.images) >= len(list(run.rglob("*.png")))
    for src in page.images:
        _png_bytes(src)


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary: the headless screenshot is not taken")
def test_the_html_report_renders_in_a_headless_browser(finished, tmp_path):
    import subprocess

    import numpy as np
    from PIL import Image

    run, _, _ = finished
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            (run / "report" / "index.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("L"))
    # Drawn pictures put dark and mid-grey pixels on the white page; a page of broken-image
    # icons and text alone has far fewer non-white pixels.
    assert (pixels < 250).mean() > 0.05


def test_every_step_has_a_numbered_start_and_end_line_with_an_estimate(finished):
    _, _, messages = finished
    steps = [m for m in messages if m.startswith("step ")]
    # prepare, stages 1-3, 3 trainings and 3 evaluations per seed (2 seeds), ablate, report: 18
    numbers = [re.match(r"step (\d+)/(\d+) ", m).groups() for m in steps]
    assert {total for _, total in numbers} == {"18"}, steps  # the plan knew every step the pipeline ran
    started = [int(k) for (k, _), m in zip(numbers, steps) if ": started;" in m]
    finished_ = [int(k) for (k, _), m in zip(numbers, steps) if ": finished in " in m]
    assert started == finished_ == list(range(1, 19)), steps
    # from the first finished training on there is an estimate (a one-epoch cap: "at most")
    first_trained = next(m for m in steps if "stage 1 (ResNet34v2): finished in" in m)
    assert "(1 epoch)" in first_trained and " more" in first_trained, first_trained
    assert steps[-1].startswith("step 18/18 report") and "more" not in steps[-1]


def test_a_rerun_skips_every_finished_step(run_copy):
    run, result, _ = run_copy
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")}
    messages: list[str] = []
    again = run_pipeline(load_recipe(TINY), run, device="cpu", log=messages.append)
    assert again["table"] == result["table"]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")} == stamps
    assert not any(m.endswith(": training") or m.endswith(": resuming") for m in messages)
    # prepare, stages 1-3, per seed stage 4 + controller + control, 6 evaluations (2 per model), ablation
    assert sum("skipped" in m for m in messages) >= 1 + 3 + 3 * 2 + 6 + 1


def test_an_interrupted_stage_is_resumed_and_its_evaluation_redone(run_copy):
    run, _, _ = run_copy
    # A controller run killed after its first checkpoint: last.pt is there, no summary.
    (run / "seed-2/controller/summary.json").unlink()
    messages: list[str] = []
    run_pipeline(load_recipe(TINY), run, device="cpu", log=messages.append)
    assert any(m.endswith("seed-2/controller: resuming") for m in messages), messages
    assert not any(m.endswith(": training") for m in messages)
    assert json.loads((run / "seed-2/controller/summary.json").read_text())["status"] in ("finished", "early_stopped")
    # Its evaluation is redone because the checkpoint is newer than the old metrics.
    best = run / "seed-2/controller/best.pt"
    assert (run / "seed-2/controller/eval-PrivateTest/metrics.json").stat().st_mtime >= best.stat().st_mtime


def test_final_table_picks_the_best_run_and_converts_to_percent():
    results = {
        "ResNet34v2": [{"accuracy": 0.5, "tta": {"accuracy": 0.6}, "params": 10}],
        "LHC-Net": [{"accuracy": 0.25, "tta": None, "params": 12}, {"accuracy": 0.75, "tta": None, "params": 12}],
        "LHC-NetC": [],
    }
    rows = final_table(results)
    assert [r["model"] for r in rows] == ["ResNet34v2", "LHC-Net"]
    assert rows[0]["accuracy"] == 50 and rows[0]["tta_accuracy"] == pytest.approx(60)
    assert rows[1]["accuracy"] == 75 and rows[1]["runs"] == 2 and rows[1]["tta_accuracy"] is None


def test_final_table_chooses_among_the_runs_that_count_only():
    results = {
        "LHC-Net": [
            {
                "accuracy": 0.9,
                "tta": None,
                "seed": 1,
                "counts": False,
                "verdict": "rejected",
                "reason": "selection rule",
            },
            {
                "accuracy": None,
                "tta": None,
                "seed": 2,
                "counts": False,
                "verdict": "diverged",
                "reason": "diverged: nan",
            },
            {"accuracy": 0.5, "tta": None, "seed": 3, "counts": True, "verdict": "accepted", "reason": None},
        ]
    }
    (row,) = final_table(results)
    assert row["accuracy"] == 50 and row["seed"] == 3 and row["runs"] == 1 and row["rejected"] == 2
    assert [e["status"] for e in row["excluded"]] == ["rejected", "diverged"]
    (none,) = final_table({"LHC-Net": results["LHC-Net"][:2]})
    assert none["accuracy"] is None and none["runs"] == 0
    notes = table_notes([row, none], synthetic=False)
    assert notes[0] == "LHC-Net: best of 1 run; 2 left out (seed 1: selection rule; seed 2: diverged: nan)."


# --------------------------------------------------------------------------- the command


def test_cli_runs_a_recipe_and_prints_the_table(cli_runner, run_copy, tmp_path):
    # The command on a copy of the finished two-seed run, asked for one seed without the
    # ablation: every step is found done, the table counts the one seed, nothing is ablated.
    run, _, _ = run_copy
    for folder in run.glob("seed-*/stage4/ablate-*"):
        shutil.rmtree(folder)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "pipeline": {"seeds": [1], "ablate": False}}))
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")}
    result = cli_runner.invoke(app, ["pipeline", "-r", str(recipe), "--run", str(run), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    for text in ("LHC-NetC", "74.42%", "SYNTHETIC", "report:"):
        assert text in result.output, text
    table = json.loads((run / "pipeline.json").read_text())["table"]
    assert [row["runs"] for row in table] == [1, 1, 1]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")} == stamps  # nothing retrained
    assert not list(run.glob("seed-*/stage4/ablate-*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "1,x"], "--seeds 1,x: expected comma-separated integers"),
        (["--csv", "missing.csv"], "missing.csv: CSV file not found"),
        (["--set", "pipeline.seeds=[]"], "at least one seed"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(cli_runner, tmp_path, args, message):
    run = tmp_path / "run"
    result = cli_runner.invoke(app, ["pipeline", "-r", "demo", "--run", str(run)] + args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_run_started_with_another_recipe_is_refused_untouched(run_copy):
    run, _, _ = run_copy
    before = (run / "recipe.yaml").read_bytes()
    other = {**TINY, "train": {**TINY["train"], "eval_batch_size": 8}}
    with pytest.raises(FertoolError, match=r"different recipe \(sections differ: train\)"):
        run_pipeline(load_recipe(other), run, device="cpu")
    assert (run / "recipe.yaml").read_bytes() == before
    # The pipeline section (seeds, switches) may change, e.g. to add a seed later.
    messages: list[str] = []
    run_pipeline(
        load_recipe({**TINY, "pipeline": {"seeds": [2], "ablate": False}}), run, device="cpu", log=messages.append
    )
    assert not any(m.endswith(": training") or m.endswith(": resuming") for m in messages)
    # So may train.keep (it changes no result), and a recipe saved before a key existed is
    # read with that key's default.
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    del saved["train"]["keep"]
    (run / "recipe.yaml").write_text(yaml.safe_dump(saved))
    run_pipeline(load_recipe({**TINY, "train": {**TINY["train"], "keep": "best"}}), run, device="cpu")


def test_a_run_started_from_another_csv_is_refused(run_copy, tmp_path):
    run, _, _ = run_copy
    other = tmp_path / "other.csv"  # other bytes: the same bytes elsewhere are the same CSV (a moved run)
    other.write_bytes((run / "data/sample.csv").read_bytes() + b"\n")
    with pytest.raises(FertoolError, match=r"was started with the CSV .*sample\.csv, not .*other\.csv"):
        run_pipeline(load_recipe(TINY), run, csv=other, device="cpu")
