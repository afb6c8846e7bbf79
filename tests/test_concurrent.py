"""Several ``fertool pipeline`` processes on one run folder (docs/clusters.md): the shared
stages trained once while the others wait, one process per seed, ``--jobs``, a killed seed
resumed, the report's seed counts, and the shipped SLURM script.

The pipeline tests start real processes on the tiniest recipe the code allows (32 px, 14
training images, one epoch; no TTA, no ablation): minutes of CPU, hence ``slow``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from fertool.analysis.report import seed_states
from fertool.locks import HOST, lock_path
from tests.conftest import TINY_WIDTH

REPO = Path(__file__).resolve().parent.parent
SBATCH = REPO / "docs" / "slurm" / "pipeline.sbatch"
ONE_EPOCH = {"max_epochs": 1, "patience": 1}
TINY = {
    "prepare": {"size": 32},
    "model": {
        "input_size": 32,
        "hidden": [8, 8],
        "bn_momentum": 0.9,
        **TINY_WIDTH,
        "lhc": [{"after": "stem", "heads": 4, "dim": 8}],
        "controller_init": [0.0],
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
            # two epochs, so that a process killed in the second one leaves a last.pt to resume
            "controller": {"max_epochs": 2, "patience": 2, "batch_size": 7},
        },
    },
    "sample": {"per_class": 2, "seed": 0},  # 14 / 7 / 7 images
    "pipeline": {"seeds": [1], "tta": False, "ablate": False},
}
SHARED = ("stage1", "stage2", "stage3")


def slow(test):
    """Minutes of CPU in subprocesses (4-5 min each on a busy 2-core machine): beyond the suite's
    300 s per test."""
    return pytest.mark.slow(pytest.mark.timeout(1800)(test))


def _env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("FERTOOL_PAUSE_AT", None)
    return {**env, **extra}


def _script_commands() -> dict[str, list[str]]:
    """The fertool commands of the shipped SLURM script, by subcommand, as argument lists."""
    commands = {}
    for line in SBATCH.read_text().splitlines():
        if re.match(r"\s*(srun )?fertool ", line):
            words = shlex.split(line)
            words = words[1:] if words[0] == "srun" else words
            commands[words[1]] = words
    return commands


def _script_command(name: str, **values: object) -> list[str]:
    """The script's ``fertool <name>`` line with its variables filled in, run as ``python -m fertool``."""
    words = [re.sub(r"\$(\w+)", lambda m: str(values[m.group(1)]), w) for w in _script_commands()[name]]
    return [sys.executable, "-m", *words]


def _pipeline(setup, run: Path, seeds: str, *extra: str) -> list[str]:
    """The SLURM script's pipeline command (an array task's), for ``seeds``; the device is auto:
    the CPU here."""
    recipe, csv = setup
    return _script_command("pipeline", RECIPE=recipe, CSV=csv, RUN=run, SLURM_ARRAY_TASK_ID=seeds) + list(extra)


def _start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=_env(**env), cwd=REPO)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 1200) -> str:
    code = proc.wait(timeout=timeout)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text
    return text


def _report(run: Path) -> dict:
    result = subprocess.run(
        _script_command("report", RUN=run) + ["--quiet"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads((run / "report" / "report.json").read_text())


def _sets(report: dict) -> Counter:
    """(run set, model) of every result the report lists as a run (used, or rejected by the
    selection rule, which one-epoch training on 14 images may trip)."""
    return Counter(
        (r["paper_set"], r["arch"]) for r in report["runs"] if r["status"] in ("used", "rejected") and r["paper_set"]
    )


def _stage_files(run: Path) -> dict[str, tuple]:
    """Identity of the shared stages' files: replaced or rewritten files change it."""
    return {
        str(p.relative_to(run)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for stage in SHARED
        for p in sorted((run / stage).iterdir())
    }


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny recipe and a tiny CSV (the generated sample: 14 / 7 / 7 images)."""
    from fertool.data.sample import generate_sample

    folder = tmp_path_factory.mktemp("recipe")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    generate_sample(folder / "sample.csv", per_class=2, seed=0)
    return folder / "tiny.yaml", folder / "sample.csv"


@pytest.fixture(scope="module")
def three(recipe, tmp_path_factory):
    """Three ``pipeline --seeds k`` processes (k = 1, 2, 3) started at the same moment on one run."""
    base = tmp_path_factory.mktemp("three")
    run = base / "run"
    logs = [base / f"seed{k}.log" for k in (1, 2, 3)]
    started = time.monotonic()
    procs = [_start(_pipeline(recipe, run, str(k)), log) for k, log in zip((1, 2, 3), logs)]
    texts = [_finish(p, log) for p, log in zip(procs, logs)]
    print(f"\nthree processes: {time.monotonic() - started:.0f} s")
    return run, texts


@slow
def test_three_processes_train_the_shared_stages_once_and_one_seed_each(three):
    run, texts = three
    for stage in SHARED:
        trained = [t for t in texts if f"{run / stage}: training" in t]
        assert len(trained) == 1, stage  # one process trained it...
        others = [t for t in texts if t is not trained[0]]
        assert all(f"{run / stage}: already finished, skipped" in t for t in others), (
            stage
        )  # ...the others found it done
        summary = json.loads((run / stage / "summary.json").read_text())
        metrics = (run / stage / "metrics.jsonl").read_text().splitlines()
        assert summary["status"] == "finished" and len(metrics) == 1, stage  # one epoch, trained once
    # The other two waited for what the first was doing, and said for whom.
    trainer = next(i for i, t in enumerate(texts) if f"{run / 'stage1'}: training" in t)
    waits = [re.findall(rf"waiting for {re.escape(str(run))}/(\S+), held by pid (\d+) on (\S+)", t) for t in texts]
    assert not waits[trainer] or all(w[0] not in SHARED for w in waits[trainer])
    for i, found in enumerate(waits):
        if i != trainer:
            assert found, texts[i][-2000:]
            assert {host for _, _, host in found} == {HOST}
    for k in (1, 2, 3):
        for folder in ("stage4", "controller", "resnet/stage4"):
            assert json.loads((run / f"seed-{k}" / folder / "summary.json").read_text())["seed"] == k
        assert f"seed-{k}/stage4: training" in texts[k - 1]  # each process trained its own seed
        assert not any(f"seed-{k}/" in t for i, t in enumerate(texts) if i != k - 1)  # and no other
    assert not list(run.glob(".*.lock")) and not list(run.glob("seed-*/.*.lock"))  # every lock released
    report = _report(run)
    assert _sets(report) == {("A", "resnet34v2"): 3, ("B", "lhc_net"): 3}  # tiny modules: set B, not Table 2's C
    assert sorted(r["seed"] for r in report["runs"] if r["arch"] == "lhc_netc") == [1, 2, 3]
    assert report["seeds"] == {"finished": ["run/seed-1", "run/seed-2", "run/seed-3"], "running": [], "failed": []}


@slow
def test_a_killed_seed_is_resumed_by_its_own_command_alone(three, recipe, tmp_path):
    run, _ = three
    shared = _stage_files(run)
    others = {k: (run / f"seed-{k}/controller/best.pt").stat().st_mtime_ns for k in (1, 2, 3)}
    pause = tmp_path / "paused"
    command = _pipeline(recipe, run, "4")
    # Killed in its controller's second epoch (epoch points: stage 4, controller 1, controller 2).
    proc = _start(command, tmp_path / "killed.log", FERTOOL_PAUSE_AT="epoch:3", FERTOOL_PAUSE_FILE=str(pause))
    deadline = time.monotonic() + 900
    while not pause.exists():
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert seed_states([run])["running"] == [{"seed": "run/seed-4", "holder": f"pid {proc.pid} on {HOST}"}]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lock_path(run / "seed-4").exists()  # left by kill -9; the kernel released its flock
    states = seed_states([run])
    assert states["failed"] == [{"seed": "run/seed-4", "why": "controller interrupted"}]
    assert len(states["finished"]) == 3
    report = subprocess.run(
        _script_command("report", RUN=run) + ["--quiet"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    assert "seeds: 3 finished, 1 failed or interrupted (run/seed-4: controller interrupted)" in report.stdout

    text = _finish(_start(command, tmp_path / "again.log"), tmp_path / "again.log")  # the same command again
    assert f"{run / 'seed-4/stage4'}: already finished, skipped" in text
    assert f"{run / 'seed-4/controller'}: resuming" in text
    assert f"{run / 'seed-4/resnet/stage4'}: training" in text
    assert all(f"{run / s}: already finished, skipped" in text for s in SHARED)
    assert json.loads((run / "seed-4/controller/summary.json").read_text())["epochs"] == 2
    assert _stage_files(run) == shared  # nothing shared was rewritten
    assert {k: (run / f"seed-{k}/controller/best.pt").stat().st_mtime_ns for k in (1, 2, 3)} == others
    assert seed_states([run])["failed"] == []


@slow
def test_jobs_runs_the_seeds_as_processes_from_one_command(recipe, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "jobs.log"
    started = time.monotonic()
    text = _finish(_start(_pipeline(recipe, run, "1,2,3", "--jobs", "2"), log), log)
    print(f"\n--jobs 2: {time.monotonic() - started:.0f} s")
    assert "3 seed(s), 2 at a time on the CPU, one thread each" in text
    for stage in SHARED:
        assert text.count(f"{run / stage}: training") == 1
    for k in (1, 2, 3):
        seed_log = (run / f"seed-{k}" / "pipeline.log").read_text()
        assert f"--seeds {k}" in seed_log.splitlines()[0]
        assert f"{run / f'seed-{k}/stage4'}: training" in seed_log
        assert all(f"{run / s}: already finished, skipped" in seed_log for s in SHARED)  # trained by the parent
        assert re.search(
            rf"seed {k}: finished in \S+( \S+)?: LHC-Net \d+\.\d\d%, LHC-NetC \d+\.\d\d%, "
            rf"ResNet34v2 \d+\.\d\d%",
            text,
        )
    starts = [int(m) for m in re.findall(r"seed \d: started on the CPU \(pid (\d+)\)", text)]
    assert len(set(starts)) == 3
    result = json.loads((run / "pipeline.json").read_text())
    assert result["seeds"] == [1, 2, 3] and [row["runs"] for row in result["table"]] == [3, 3, 3]
    assert _sets(_report(run)) == {("A", "resnet34v2"): 3, ("B", "lhc_net"): 3}


@slow
def test_jobs_reports_a_failing_seed_and_finishes_the_others(recipe, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "jobs.log"
    # A file where seed 2's LHC-Net folder goes: its process fails at once; seed 1 goes on.
    (run / "seed-2").mkdir(parents=True)
    (run / "seed-2" / "stage4").write_text("in the way")
    proc = _start(_pipeline(recipe, run, "1,2", "--jobs", "2"), log)
    assert proc.wait(timeout=1200) == 1
    text = log.read_text()
    assert re.search(r"seed 2: FAILED \(exit 1\) after \S+: error: .*seed-2/stage4: exists and is not a folder", text)
    assert re.search(r"seed 1: finished in", text)
    assert "error: 1 seed(s) failed: seed 2:" in text
    assert json.loads((run / "pipeline.json").read_text())["seeds"] == [1]  # the report over the seeds that finished


# --------------------------------------------------------------------------- the shipped SLURM script


def test_the_slurm_script_parses_and_runs_the_commands_these_tests_run():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    directives = re.findall(r"^#SBATCH (\S+)", text, flags=re.M)
    assert "--array=1-20" in directives and "--gpus=1" in directives
    commands = _script_commands()  # the tests above run exactly these (_pipeline, _report)
    assert commands["pipeline"] == [
        "fertool",
        "pipeline",
        "--recipe",
        "$RECIPE",
        "--csv",
        "$CSV",
        "--run",
        "$RUN",
        "--seeds",
        "$SLURM_ARRAY_TASK_ID",
        "--wait",
    ]
    assert commands["report"] == ["fertool", "report", "$RUN", "--html"]
    assert re.search(r"sbatch .*--dependency=afterany:\$SLURM_ARRAY_JOB_ID", text)  # the report after every task


# --------------------------------------------------------------------------- fast checks


def _stage(folder: Path, status: str, *, evaluated: bool = True) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"status": status}))
    if evaluated:
        (folder / "eval-PrivateTest").mkdir()
        (folder / "eval-PrivateTest" / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))


def test_the_report_counts_running_and_failed_seeds_apart_from_finished_ones(tmp_path):
    from fertool.analysis.report import seed_line

    run = tmp_path / "run"
    for k in (1, 2):
        for folder in ("stage4", "controller", "resnet/stage4"):
            _stage(run / f"seed-{k}" / folder, "finished" if folder != "controller" else "early_stopped")
    _stage(run / "seed-3/stage4", "finished", evaluated=False)
    (run / "seed-3/controller").mkdir(parents=True)
    (run / "seed-3/controller/last.pt").write_bytes(b"")  # killed: a last.pt and no summary
    _stage(run / "seed-4/stage4", "diverged", evaluated=False)
    _stage(run / "seed-5/stage4", "finished", evaluated=False)  # stopped between two stages
    (run / "seed-12").mkdir()
    lock_path(run / "seed-12").write_text("77 gpu-node-07\n")  # another machine's process
    (run / "seed-x").mkdir()  # not a seed folder
    states = seed_states([run])
    assert states == {
        "finished": ["run/seed-1", "run/seed-2"],
        "running": [{"seed": "run/seed-12", "holder": "pid 77 on gpu-node-07"}],
        "failed": [
            {"seed": "run/seed-3", "why": "controller interrupted"},
            {"seed": "run/seed-4", "why": "stage4 diverged"},
            {"seed": "run/seed-5", "why": "nothing evaluated"},
        ],
    }
    assert seed_line(states) == (
        "seeds: 2 finished, 1 running (run/seed-12: pid 77 on gpu-node-07), "
        "3 failed or interrupted (run/seed-3: controller interrupted, "
        "run/seed-4: stage4 diverged, run/seed-5: nothing evaluated)"
    )
    assert seed_line({"finished": ["run/seed-1"], "running": [], "failed": []}) is None


def test_each_seed_process_sees_one_gpu_or_uses_one_cpu_thread(tmp_path):
    from fertool.jobs import job_env, seed_command

    gpu = job_env("2", {"PATH": "/bin"})
    assert gpu["CUDA_VISIBLE_DEVICES"] == "2" and "OMP_NUM_THREADS" not in gpu
    cpu = job_env(None, {"PATH": "/bin", "OMP_NUM_THREADS": "8"})
    assert cpu["OMP_NUM_THREADS"] == cpu["MKL_NUM_THREADS"] == "1" and "CUDA_VISIBLE_DEVICES" not in cpu
    command = seed_command(tmp_path / "run", 7, csv=None, device="cuda", wait=False, wait_timeout=30)
    assert command[1:] == [
        "-m",
        "fertool",
        "pipeline",
        "--recipe",
        str(tmp_path / "run" / "recipe.yaml"),
        "--run",
        str(tmp_path / "run"),
        "--seeds",
        "7",
        "--device",
        "cuda",
        "--no-wait",
        "--wait-timeout",
        "30",
    ]


def test_devices_without_jobs_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fertool", "pipeline", "--run", str(tmp_path / "run"), "--devices", "0,1"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --devices: goes with --jobs N (one seed process per device)"
    assert not (tmp_path / "run").exists()
