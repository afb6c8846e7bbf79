"""Benchmark ``fertool import`` of a TensorFlow checkpoint: wall time and peak memory.

Runs ``python -m fertool import SOURCE --out <tmp>/model.pt -q`` as a subprocess ``--repeat``
times and prints each run's wall time and peak resident memory
(``ru_maxrss`` of that process, from ``os.wait4``), next to the same for a process that
only imports the CLI (``python -c "import fertool.cli, torch"``), so that the share of
the import itself can be read off.

SOURCE is anything ``fertool import`` accepts (a checkpoint folder, prefix or ``.index``).
A folder whose data files are stored xz-compressed (``*.data-*-of-*.xz``) is first
unpacked into a temporary folder (not timed).

    python benchmarks/import_tf.py path/to/LHC_Net [--repeat 3]
"""

from __future__ import annotations

import argparse
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def unpack(folder: Path, dest: Path) -> Path:
    """Copy ``folder`` into ``dest``, decompressing ``.xz`` data files."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.suffix == ".xz":
            with lzma.open(f) as src, open(dest / f.stem, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        elif f.is_file():
            shutil.copyfile(f, dest / f.name)
    return dest


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child process (its own rusage, from wait4)."""
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            raise SystemExit(f"{' '.join(cmd)}: exit code {proc.returncode}\n{log.read().decode(errors='replace')}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = args.source
        if source.is_dir() and any(source.glob("*.data-*-of-*.xz")):
            source = unpack(source, tmp / source.name)
        sizes = {f.name: f.stat().st_size for f in (source if source.is_dir() else source.parent).iterdir()}
        print(f"source: {args.source}  files: " + ", ".join(f"{n} {s / 2**20:.1f} MiB" for n, s in sizes.items()))
        out = tmp / "model.pt"
        cmd = [sys.executable, "-m", "fertool", "import", str(source), "--out", str(out), "-q", "--overwrite"]
        for i in range(args.repeat):
            wall, peak = run(cmd)
            print(f"import run {i + 1}: {wall:6.2f} s wall, peak RSS {peak:7.1f} MiB")
        print(f"output: {out.stat().st_size / 2**20:.1f} MiB")
        wall, peak = run([sys.executable, "-c", "import fertool.cli, torch"])
        print(f"baseline (python + torch + fertool.cli, no import): {wall:6.2f} s wall, peak RSS {peak:7.1f} MiB")


if __name__ == "__main__":
    main()
