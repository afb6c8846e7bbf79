"""Start-up of the command line: wall time from launching ``python -m fertool ...`` to its
first line of output (stdout or stderr), and to its exit.

Goals (an idle machine): ``--help``, ``--version`` and an argument error (a missing
file) answer in under 1 s, because the commands check their arguments and paths before
importing torch, OpenCV, onnxruntime or matplotlib.  ``info -r demo`` builds a model, so
it must import torch: its time shows what that costs.

    python benchmarks/cli.py               # every case, best of 3
    python benchmarks/cli.py --repeat 5

Each case runs in a fresh interpreter (no warm import cache inside Python; the operating
system's file cache is warm after the first run, so the best of ``--repeat`` is reported
with the slowest beside it).  The load average is printed: on a busy machine the times
grow with it.
"""

from __future__ import annotations

import argparse
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 1.0


def cases(tmp: Path) -> list[tuple[str, list[str], float | None]]:
    """(name, arguments after ``python -m fertool``, goal in seconds or None)."""
    photo = tmp / "face.jpg"
    photo.write_bytes(b"")
    missing = str(tmp / "missing.pt")
    return [
        ("--help", ["--help"], GOAL_S),
        ("--version", ["--version"], GOAL_S),
        ("predict --help", ["predict", "--help"], GOAL_S),
        ("predict: missing checkpoint", ["predict", str(photo), "-c", missing], GOAL_S),
        ("evaluate: missing checkpoint", ["evaluate", "-c", missing], GOAL_S),
        ("ablate: missing checkpoint", ["ablate", "-c", missing], GOAL_S),
        ("export: missing checkpoint", ["export", "-c", missing, "-f", "onnx", "-o", str(tmp / "m.onnx")], GOAL_S),
        ("augment-lhc: missing checkpoint", ["augment-lhc", "-c", missing, "-o", str(tmp / "out.pt")], GOAL_S),
        ("info: missing checkpoint", ["info", "-c", missing], GOAL_S),
        ("train: missing CSV", ["train", "-s", "1", "--run", str(tmp / "run"), "--csv", str(tmp / "no.csv")], GOAL_S),
        ("prepare: missing CSV", ["prepare", "--csv", str(tmp / "no.csv"), "--out", str(tmp / "prep")], GOAL_S),
        ("pipeline: missing CSV", ["pipeline", "--csv", str(tmp / "no.csv"), "--run", str(tmp / "run")], GOAL_S),
        ("import: missing file", ["import", str(tmp / "no.h5"), "-o", str(tmp / "out.pt")], GOAL_S),
        ("report: missing run folder", ["report", str(tmp / "no-run")], GOAL_S),
        ("info -r demo (builds a model)", ["info", "-r", "demo"], None),
    ]


def first_output(args: list[str]) -> tuple[float, float, int]:
    """(seconds to the first byte on stdout or stderr, seconds to exit, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fertool", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "80"},
    )
    first = None
    selector = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        selector.register(stream, selectors.EVENT_READ)
    open_streams = 2
    while open_streams:
        for key, _ in selector.select():
            chunk = os.read(key.fileobj.fileno(), 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                open_streams -= 1
            elif first is None:
                first = time.perf_counter() - start
    code = proc.wait()
    end = time.perf_counter() - start
    return (first if first is not None else end), end, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (the best is reported)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f} (1 min), best of {args.repeat}")
    print(f"{'case':<34} {'first line':>10} {'slowest':>8} {'exit at':>6} {'code':>4}  goal")
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv, goal in cases(Path(tmp)):
            runs = [first_output(argv) for _ in range(args.repeat)]
            best = min(r[0] for r in runs)
            slowest = max(r[0] for r in runs)
            end = min(r[1] for r in runs)
            verdict = "" if goal is None else (f"< {goal:g} s " + ("met" if best < goal else "MISSED"))
            print(f"{name:<34} {best:>9.2f}s {slowest:>7.2f}s {end:>5.2f}s {runs[0][2]:>4}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
