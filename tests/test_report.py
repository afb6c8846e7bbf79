"""fertool report: Table-7 statistics across runs (docs/protocol.md §6, §7)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fertool.analysis.report import find_results, report, run_statistics, top_count


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _eval(
    run: Path, stage: str, acc: float, tta: float | None = None, arch: str | None = None, split: str = "PrivateTest"
) -> None:
    metrics = {"accuracy": acc, "loss": 1.0, "stage": stage}
    if arch:
        metrics["arch"] = arch
    if tta is not None:
        metrics["tta"] = {"accuracy": tta, "loss": 0.9}
    _write(run / stage / f"eval-{split}" / "metrics.json", metrics)


def _selection(run: Path, accepted: bool) -> None:
    _write(
        run / "stage4" / "summary.json",
        {
            "stage": "4",
            "status": "finished",
            "seed": 0,
            "selection": {
                "reference_train_loss": 0.5,
                "train_loss": 0.5 if accepted else 0.9,
                "ratio": 1.0 if accepted else 1.8,
                "factor": 1.1,
                "accepted": accepted,
            },
        },
    )


def test_top_count_is_round_half_up_with_minimum_one():
    # 20 runs: the paper's 8 and 5; 5 runs: 2.0 -> 2, 1.25 -> 1; 10 runs: 2.5 -> 3 (half up)
    assert (top_count(20, 40), top_count(20, 25)) == (8, 5)
    assert (top_count(5, 40), top_count(5, 25)) == (2, 1)
    assert top_count(10, 25) == 3
    assert top_count(1, 25) == 1 and top_count(2, 25) == 1
    assert top_count(0, 40) == 0


def test_statistics_of_five_runs_by_hand():
    accs = [0.70, 0.72, 0.71, 0.73, 0.69]
    s = run_statistics(accs)
    # sorted: .73 .72 .71 .70 .69; top 40% = 2 runs, top 25% = 1 run
    assert s["n"] == 5
    assert s["top40"] == pytest.approx((0.73 + 0.72) / 2)
    assert s["top40_wo_best"] == pytest.approx(0.72)
    assert s["top25"] == pytest.approx(0.73)
    assert s["top25_wo_best"] is None  # needs 2 runs
    assert s["best"] == pytest.approx(0.73)
    assert s["mean"] == pytest.approx(0.71)
    # sample std: deviations .02 .01 0 -.01 -.02 -> sum sq = .001 -> /4 -> sqrt
    assert s["std"] == pytest.approx(math.sqrt(0.001 / 4))


def test_statistics_of_twenty_runs_match_paper_counts():
    accs = [0.70 + 0.001 * i for i in range(20)]  # best = .719
    s = run_statistics(accs)
    top8 = [0.719 - 0.001 * i for i in range(8)]
    top5 = top8[:5]
    assert s["top40"] == pytest.approx(sum(top8) / 8)
    assert s["top40_wo_best"] == pytest.approx(sum(top8[1:]) / 7)
    assert s["top25"] == pytest.approx(sum(top5) / 5)
    assert s["top25_wo_best"] == pytest.approx(sum(top5[1:]) / 4)


def test_single_run_has_no_std_nor_without_best():
    s = run_statistics([0.7])
    assert s["top40"] == s["top25"] == s["best"] == s["mean"] == pytest.approx(0.7)
    assert s["std"] is None and s["top40_wo_best"] is None


def _five_runs(root: Path) -> None:
    """5 runs with backbone (stage 3, stage 1 too in run 0), LHC-Net and LHC-NetC; run 4 rejected."""
    backbone = [0.720, 0.725, 0.715, 0.728, 0.710]
    lhc = [0.730, 0.735, 0.725, 0.738, 0.600]
    ctrl = [0.732, 0.736, 0.728, 0.740, 0.610]
    for i in range(5):
        run = root / f"run{i}"
        _eval(run, "stage3", backbone[i], tta=backbone[i] + 0.01, arch="resnet34v2")
        _eval(run, "stage4", lhc[i], tta=lhc[i] + 0.01, arch="lhc_net")
        _eval(run, "controller", ctrl[i], tta=ctrl[i] + 0.01, arch="lhc_netc")
        _selection(run, accepted=(i != 4))
    _eval(root / "run0", "stage1", 0.65)  # superseded by stage 3 (arch from the folder)


def test_report_groups_excludes_rejected_and_writes_files(tmp_path):
    _five_runs(tmp_path / "runs")
    data = report([tmp_path / "runs"], out_dir=tmp_path / "out")
    g = data["groups"]
    assert list(g) == ["ResNet34v2", "LHC-Net", "LHC-NetC"]
    # backbone: 5 runs (stage 1 of run0 superseded) -> sorted .728 .725 .720 .715 .710
    assert g["ResNet34v2"]["plain"]["n"] == 5
    assert g["ResNet34v2"]["plain"]["top40"] == pytest.approx((0.728 + 0.725) / 2)
    assert g["ResNet34v2"]["plain"]["mean"] == pytest.approx(0.7196)
    # LHC-Net: run4 rejected -> 4 runs .738 .735 .730 .725; top 40% of 4 = round(1.6) = 2
    assert g["LHC-Net"]["plain"]["n"] == 4 and g["LHC-Net"]["rejected"] == 1
    assert g["LHC-Net"]["plain"]["top40"] == pytest.approx((0.738 + 0.735) / 2)
    assert g["LHC-Net"]["plain"]["best"] == pytest.approx(0.738)
    assert g["LHC-NetC"]["plain"]["n"] == 4
    assert g["LHC-NetC"]["tta"]["best"] == pytest.approx(0.750)
    statuses = {(Path(r["run"]).name, r["stage"]): r["status"] for r in data["runs"]}
    assert statuses[("run0", "stage1")] == "superseded"
    assert statuses[("run4", "stage4")] == statuses[("run4", "controller")] == "rejected"
    assert statuses[("run4", "stage3")] == "used"

    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Without TTA" in md and "## With TTA" in md
    assert "| ResNet34v2 | 5 | 72.65 (2) |" in md  # (72.8 + 72.5) / 2
    assert "72.69" in md and "73.53" in md and "74.42" in md  # the paper's numbers
    assert "Rejected by the selection rule" in md and "run4" in md.split("## Rejected")[1].split("##")[0]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["groups"]["LHC-Net"]["plain"]["n"] == 4
    assert (tmp_path / "out" / "runs.png").stat().st_size > 1000


def test_pipeline_layout_counts_every_seed(tmp_path):
    root = tmp_path / "pipeline"
    for seed, acc in ((1, 0.70), (2, 0.72), (3, 0.74)):
        _eval(root / f"seed-{seed}", "stage4", acc)  # no arch in metrics: from the folder
    data = report([root])  # default out: <root>/report
    assert data["groups"]["LHC-Net"]["plain"]["n"] == 3
    assert data["groups"]["LHC-Net"]["tta"] is None
    assert sorted(r["seed"] for r in data["runs"]) == [1, 2, 3]
    assert (root / "report" / "report.md").is_file()
    md = (root / "report" / "report.md").read_text()
    assert "## With TTA" not in md


def test_pipeline_resnet_reruns_supersede_the_shared_stage3(tmp_path, monkeypatch):
    """RUN/stage3 is shared; RUN/seed-S/resnet/stage4 continue from it (summary init, relative path)."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "pipe"
    _eval(root, "stage3", 0.70, arch="resnet34v2")
    for seed, (res, lhc) in {1: (0.71, 0.73), 2: (0.72, 0.74)}.items():
        seed_dir = root / f"seed-{seed}"
        _eval(seed_dir / "resnet", "stage4", res, arch="resnet34v2")
        _write(seed_dir / "resnet" / "stage4" / "summary.json", {"seed": seed, "init": "pipe/stage3/best.pt"})
        _eval(seed_dir, "stage4", lhc, arch="lhc_net")
        _write(
            seed_dir / "stage4" / "summary.json",
            {"seed": seed, "init": f"pipe/stage3/best.pt + lhc (seed {seed})", "selection": {"accepted": True}},
        )
    data = report([root])
    assert data["groups"]["ResNet34v2"]["plain"]["n"] == 2
    assert data["groups"]["ResNet34v2"]["plain"]["mean"] == pytest.approx(0.715)
    assert data["groups"]["LHC-Net"]["plain"]["n"] == 2  # another group: not superseded by its init
    shared = next(r for r in data["runs"] if r["stage"] == "stage3")
    assert shared["status"] == "superseded" and "continued by" in shared["note"]
    assert sorted(r["seed"] for r in data["runs"] if r["group"] == "LHC-Net") == [1, 2]
    # Labelled with the paper's run sets (Table 7): A = ResNet stage-4 re-runs, C = Table-2 LHC-Nets.
    assert data["groups"]["ResNet34v2"]["paper_set"] == "A" and data["groups"]["LHC-Net"]["paper_set"] == "C"
    md = (root / "report" / "report.md").read_text()
    assert "| ResNet34v2 (set A) |" in md and "| LHC-Net (set C) |" in md and "A = ResNet34v2: stage 4" in md


def test_group_by_stage_and_no_tta(tmp_path):
    _five_runs(tmp_path)
    data = report([tmp_path / f"run{i}" for i in range(5)], group_by="stage", tta=False, out_dir=tmp_path / "o")
    assert set(data["groups"]) == {
        "stage1 (ResNet34v2)",
        "stage3 (ResNet34v2)",
        "stage4 (LHC-Net)",
        "controller (LHC-NetC)",
    }
    assert data["groups"]["stage1 (ResNet34v2)"]["plain"]["n"] == 1
    assert data["groups"]["stage3 (ResNet34v2)"]["plain"]["n"] == 5
    assert all(e["tta"] is None for e in data["groups"].values())


def test_duplicate_folders_count_once(tmp_path):
    _five_runs(tmp_path / "runs")
    results = find_results([tmp_path / "runs", tmp_path / "runs" / "run0"])
    assert sum(r.status == "used" and r.group == "ResNet34v2" for r in results) == 5


def test_existing_report_kept_on_error(tmp_path, cli_runner):
    from fertool.cli import app

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("old")
    (out / "report.json").write_text("{}")  # a report written before output markers existed
    empty = tmp_path / "empty"
    empty.mkdir()
    res = cli_runner.invoke(app, ["report", str(empty), "--out", str(out)])
    assert res.exit_code == 1
    assert "no evaluation results" in res.output
    assert (out / "report.md").read_text() == "old"
    res = cli_runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "no such run folder" in res.output


def test_cli_report(tmp_path, cli_runner):
    from fertool.cli import app

    _five_runs(tmp_path / "runs")
    res = cli_runner.invoke(app, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "o"), "--no-tta"])
    assert res.exit_code == 0, res.output
    assert "LHC-NetC" in res.output
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["groups"]["LHC-Net"]["tta"] is None


def test_results_of_other_class_sets_are_never_pooled(tmp_path):
    from fertool import CLASS_NAMES

    ferplus = ["Neutral", "Happiness", "Surprise", "Sadness", "Anger", "Disgust", "Fear", "Contempt"]
    for i, (names, acc) in enumerate([(list(CLASS_NAMES), 0.7), (None, 0.72), (ferplus, 0.8), (ferplus, 0.84)]):
        metrics = {"accuracy": acc, "loss": 1.0, "stage": "stage4", "arch": "lhc_net"}
        if names is not None:
            metrics["class_names"] = names
        _write(tmp_path / f"run{i}" / "stage4" / "eval-PrivateTest" / "metrics.json", metrics)
    groups = {}
    for r in find_results([tmp_path]):
        groups.setdefault(r.group, []).append(r.accuracy)
    assert groups == {"LHC-Net": [0.7, 0.72], f"LHC-Net [{', '.join(ferplus)}]": [0.8, 0.84]}
