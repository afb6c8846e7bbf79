"""The command line answers before it imports the heavy libraries: ``--version`` and a
missing input file never load torch, OpenCV, onnxruntime or matplotlib (issue 25; the
seconds themselves are measured by benchmarks/cli.py, not here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "cv2", "onnxruntime", "matplotlib")

#: Runs the command in this interpreter, then reports which heavy modules it loaded.
PROBE = """
import json, sys
sys.argv = ["fertool"] + json.loads(sys.argv[1])
from fertool.cli import app
try:
    app()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "loaded": [m for m in HEAVY if m in sys.modules]}), file=sys.stderr)
""".replace("HEAVY", repr(HEAVY))


def run_probe(args: list[str], cwd) -> tuple[int, list[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )
    *lines, last = done.stderr.strip().splitlines()
    report = json.loads(last)
    return report["code"], report["loaded"], done.stdout + "\n".join(lines)


def test_the_probe_sees_torch_when_a_command_loads_it(tmp_path):
    """The check itself can fail: building a model from a recipe must load torch."""
    code, loaded, _ = run_probe(["info", "-r", "demo"], tmp_path)
    assert code == 0 and "torch" in loaded


def test_version_loads_no_heavy_library(tmp_path):
    code, loaded, output = run_probe(["--version"], tmp_path)
    assert code == 0 and output.startswith("fertool ")
    assert loaded == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "face.jpg", "-c", "missing.pt"], "missing.pt: no such checkpoint file"),
        (["evaluate", "-c", "missing.pt"], "missing.pt: no such checkpoint file"),
        (["ablate", "-c", "missing.pt"], "missing.pt: no such checkpoint file"),
        (["export", "-c", "missing.pt", "-f", "onnx", "-o", "m.onnx"], "missing.pt: no such checkpoint file"),
        (["augment-lhc", "-c", "missing.pt", "-o", "out.pt"], "missing.pt: no such checkpoint file"),
        (["info", "-c", "missing.pt"], "missing.pt: no such checkpoint file"),
        (["evaluate", "-c", "x.pt", "--csv", "no.csv"], "no.csv: CSV file not found"),
        (["train", "-s", "1", "--run", "run", "--csv", "no.csv"], "no.csv: CSV file not found"),
        (["prepare", "--csv", "no.csv", "--out", "prep"], "no.csv: CSV file not found"),
        (["pipeline", "--csv", "no.csv", "--run", "run"], "no.csv: CSV file not found"),
        (["import", "no.h5", "-o", "out.pt"], "no.h5: no such file or folder"),
        (["report", "no-run"], "no-run: no such run folder"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_a_missing_file_is_reported_before_heavy_imports(tmp_path, args, message):
    (tmp_path / "face.jpg").write_bytes(b"")
    (tmp_path / "x.pt").write_bytes(b"")
    code, loaded, output = run_probe(args, tmp_path)
    assert code == 1, output
    assert f"error: {message}" in output
    assert "Traceback" not in output
    assert loaded == [], f"{args[0]} imported {loaded} before saying the file is missing"


def test_deterministic_mode_does_not_load_inductor_and_compile_still_sees_it():
    """Deterministic seeding switches torch's flag without importing Inductor (1.5 s of a
    training process); a later ``torch.compile`` finds Inductor's flag set all the same."""
    code = """
import json, sys, torch
from fertool.utils import seed_everything
seed_everything(0, deterministic=True)
before = "torch._inductor" in sys.modules
import torch._inductor.config as inductor
print(json.dumps([before, torch.are_deterministic_algorithms_enabled(),
                  torch.is_deterministic_algorithms_warn_only_enabled(), inductor.deterministic]))
"""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_DETERMINISTIC"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [False, True, True, True]
