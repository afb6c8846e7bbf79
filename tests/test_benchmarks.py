"""The benchmark scripts start: each one's imports resolve and its arguments parse (--help).

They are not run for their numbers here (that is what they are for, on a quiet machine), but a
rename inside fertool must not leave one broken until someone next measures.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


def test_there_are_benchmarks():
    assert {"infer.py", "model.py", "precision.py", "gpu_check.py"} <= {p.name for p in BENCHMARKS}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_starts(script, monkeypatch, capsys):
    # In this process (the imports a script shares with fertool are loaded once, not per
    # script): run it as __main__ with --help, as `python benchmarks/X.py --help` would.
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.setattr(sys, "path", [str(script.parent), *sys.path])
    monkeypatch.chdir(script.parent.parent)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code in (0, None), capsys.readouterr().err[-2000:]
    assert "usage:" in capsys.readouterr().out


def test_gpu_check_says_so_without_a_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: gpu_check.py would run the real checks")
    script = next(p for p in BENCHMARKS if p.name == "gpu_check.py")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=script.parent.parent
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CUDA" in done.stdout + done.stderr
