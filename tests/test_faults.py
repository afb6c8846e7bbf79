"""Fault injection: ``kill -9`` of ``fertool prepare`` and ``fertool train`` at exact points.

Each kill happens where ``fertool.faults.pause_point`` parks the process (inside an epoch,
with a checkpoint's temporary file written but not renamed, between the renames that
install a prepared folder...).  After every kill: no process of the killed command is left
(workers, fork server, resource tracker), nothing that looks complete is left half-written,
and re-running (``--resume`` for a stage) ends bit-identical to an uninterrupted run.  The
killed commands run in processes of their own; the uninterrupted references and the re-runs
run in the test's process.

Run alone with ``pytest -m faults``; Linux only (processes are found through /proc).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY_WIDTH

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes through /proc (Linux)"),
]

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- running and killing


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag`` (children inherit it)."""
    pids = []
    needle = f"FERTOOL_FAULT_TAG={tag}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    with open(f"/proc/{entry.name}/stat", "rb") as st:
                        if st.read().rsplit(b")", 1)[1].split()[0] != b"Z":  # zombies are dead
                            pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _env(tag: str, pause_at: str | None, pause_file: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FERTOOL_FAULT_TAG": tag, "FERTOOL_PAUSE_FILE": str(pause_file)}
    env.pop("FERTOOL_PAUSE_AT", None)
    if pause_at:
        env["FERTOOL_PAUSE_AT"] = pause_at
    return env


def run_fertool(args: list[str]) -> None:
    """Run the CLI to the end in this process; fail on a non-zero exit or a traceback.

    Only the killed runs need a process of their own; the reference and the re-runs read and
    write the same files in here, without a second interpreter start (torch's import alone
    is a few seconds of CPU).
    """
    from typer.testing import CliRunner

    from fertool.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and result.exception is None


def kill_at(args: list[str], point: str, tmp: Path, *, timeout: float = 240) -> None:
    """Start the CLI, wait until it parks at ``point``, kill -9 it; assert nothing of it survives."""
    tag = uuid.uuid4().hex
    pause_file = tmp / f"paused-{tag}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fertool", *args],
        env=_env(tag, point, pause_file),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    while not pause_file.exists():
        if proc.poll() is not None:
            raise AssertionError(f"ended before reaching {point}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never reached {point}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    deadline = time.monotonic() + 10
    while (left := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left after kill -9 at {point}: {left}"


def hidden_siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


# --------------------------------------------------------------------------- prepare


def _prepared_files(folder: Path) -> dict[str, bytes]:
    """Every file of a prepared folder; prepare.json without its time stamp and paths."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    summary = json.loads(files.pop("prepare.json"))
    for key in ("created", "output"):
        summary.pop(key)
    summary["source"].pop("csv")
    files["prepare.json"] = json.dumps(summary, sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def prepare_case(tmp_path_factory):
    from fertool.data.sample import generate_sample

    root = tmp_path_factory.mktemp("faults-prepare")
    csv = generate_sample(root / "sample.csv", per_class=40, seed=1)  # 490 rows: 8 chunks of 64
    run_fertool(["prepare", "--csv", str(csv), "--out", str(root / "reference"), "--workers", "2", "-q"])
    return root, csv, _prepared_files(root / "reference")


@pytest.mark.parametrize(
    "point,existing",
    [
        ("prepare-chunk:2", False),  # workers busy, two chunks written
        ("prepare-chunk:6", False),
        ("prepare-install:1", False),  # complete, not yet renamed into place
        ("prepare-install:1", True),  # --overwrite: the old prepare.json removed, the new files not yet moved in
    ],
)
def test_kill_prepare(prepare_case, tmp_path, point, existing):
    root, csv, reference = prepare_case
    out = tmp_path / "prepared"
    args = ["prepare", "--csv", str(csv), "--out", str(out), "--workers", "2", "-q"]
    if existing:
        shutil.copytree(root / "reference", out)
        (out / "Training" / "notes.txt").write_text("the user's")  # survives the kill and the rerun
        args.append("--overwrite")
    kill_at(args, point, tmp_path)
    notes = (out / "Training" / "notes.txt").read_text() if existing else None
    (out / "Training" / "notes.txt").unlink(missing_ok=True)
    assert not (out / "prepare.json").exists() or _prepared_files(out) == reference  # nothing half-made looks done
    if existing:
        (out / "Training" / "notes.txt").write_text(notes)
    run_fertool(args + ([] if "--overwrite" in args or not out.exists() else ["--overwrite"]))
    if existing:
        assert notes == (out / "Training" / "notes.txt").read_text() == "the user's"
        (out / "Training" / "notes.txt").unlink()
    assert _prepared_files(out) == reference  # bit-identical images, manifest, recipe
    assert hidden_siblings(out) == []  # the killed run's temporaries and lock were cleaned up


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_prepare_workers_exit_with_their_parent_on_every_start_method(tmp_path, method):
    """The worker initialiser of ``prepare`` ends a worker whose parent died, whatever started it."""
    code = textwrap.dedent(f"""
        import concurrent.futures, multiprocessing, os, time
        from fertool.data.prepare import _init_worker_process
        pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context({method!r}),
                                                      initializer=_init_worker_process, initargs=(os.getpid(),))
        list(pool.map(time.sleep, [0.2, 0.2]))  # both workers up
        print(*pool._processes, flush=True)
        time.sleep(120)
    """)
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=_env(tag, None, tmp_path / "unused"), stdout=subprocess.PIPE, text=True
    )
    workers = [int(pid) for pid in proc.stdout.readline().split()]
    assert len(workers) == 2 and set(workers) <= set(_tagged(tag))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while (left := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{method}: left after the parent's kill -9: {left}"


# --------------------------------------------------------------------------- train

TINY = {
    "model": {"input_size": 32, "hidden": [8, 8], "bn_momentum": 0.9, **TINY_WIDTH},
    "train": {
        "deterministic": True,
        "eval_batch_size": 16,
        "stages": {"1": {"optimizer": "adam", "lr": 0.001, "max_epochs": 3, "batch_size": 7, "patience": 5}},
    },
}
COMPARED = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "best")


def _stage_state(stage: Path) -> dict:
    """What a finished stage must hold: weights, optimiser-free epoch rows, summary figures."""
    state = {name: torch.load(stage / name, weights_only=True) for name in ("best.pt", "last.pt")}
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((stage / "summary.json").read_text())
    return {
        "weights": {name: ckpt["state_dict"] for name, ckpt in state.items()},
        "optimizer": state["last.pt"]["optimizer_state"]["state"],
        "epochs": {name: ckpt["epoch"] for name, ckpt in state.items()},
        "rows": [{k: r[k] for k in COMPARED} for r in rows],
        "summary": {k: summary[k] for k in ("status", "epochs", "best_epoch", "best_val_accuracy", "best_train_loss")},
    }


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def train_case(tmp_path_factory):
    from fertool.data.sample import generate_sample

    root = tmp_path_factory.mktemp("faults-train")
    csv = generate_sample(root / "sample.csv", per_class=2, seed=0)  # 14 / 7 / 7 images
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    args = ["train", "--stage", "1", "--csv", str(csv), "-r", str(recipe), "--seed", "3", "--device", "cpu", "-q"]
    run_fertool(args + ["--run", str(root / "reference")])
    return args, _stage_state(root / "reference" / "stage1")


@pytest.mark.parametrize(
    "point",
    [
        "epoch:2",  # inside epoch 2: trained, not yet validated or saved
        "write:best.pt:1",  # epoch 1's best.pt written to its temporary file, not renamed
        "write:last.pt:3",  # epoch 2's last.pt likewise (epoch 0 and 1 came before)
        "write:summary.json:1",  # the final summary: every epoch done, status not yet recorded
    ],
)
def test_kill_train(train_case, tmp_path, point):
    args, reference = train_case
    run = tmp_path / "run"
    stage = run / "stage1"
    kill_at(args + ["--run", str(run)], point, tmp_path)
    summary = stage / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["status"] not in ("finished", "early_stopped")
    resume = ["--resume"] if (stage / "last.pt").exists() else []
    run_fertool(args + ["--run", str(run), *resume])
    assert _same(_stage_state(stage), reference)  # bit-identical to the uninterrupted run
    assert [p.name for p in stage.iterdir() if p.name.startswith(".")] == []  # the killed run's temporaries
    assert hidden_siblings(stage) == []  # and its lock are gone


def test_sigterm_during_train_records_interrupted_and_resumes(train_case, tmp_path):
    args, reference = train_case
    run = tmp_path / "run"
    tag = uuid.uuid4().hex
    pause_file = tmp_path / "paused"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fertool", *args, "--run", str(run)],
        env=_env(tag, "epoch:2", pause_file),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not pause_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "error: interrupted", stderr
    assert "Traceback" not in stderr
    summary = json.loads((run / "stage1" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs"] == 1
    run_fertool(args + ["--run", str(run), "--resume"])
    assert _same(_stage_state(run / "stage1"), reference)
