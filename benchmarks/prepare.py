"""Benchmark ``fertool prepare`` on a full-size FER2013-format CSV: images/s and peak memory.

Makes a CSV with the canonical FER2013 shape (35,887 rows; 28,709 / 3,589 / 3,589;
Training classes 3995, 436, 4097, 7215, 4830, 3171, 4965) in a temporary folder, runs
``python -m fertool prepare`` on it as a subprocess and prints wall time, images/s, CPU
time, and peak memory of the whole process tree (parent + workers), sampled from
``/proc`` every 20 ms:

* ``tree RSS``: the sum of the resident set sizes (counts shared pages once per process,
  so it over-states real use when workers share pages with the parent);
* ``tree PSS``: the sum of proportional set sizes (shared pages split between sharers);
* ``max RSS``: the largest single process (``getrusage(RUSAGE_CHILDREN).ru_maxrss``).

``--scales 0.25 0.5 1`` repeats the run on the first quarter / half / all of the rows,
to show that memory stays flat as the CSV grows.

Pixels: ``faces`` (default) cycles through a pool of synthetic faces from
``fertool.data.sample`` (JPEG sizes like real faces); ``random`` uses uniform noise, the
worst case for the JPEG encoder.

    python benchmarks/prepare.py [--pixels faces|random] [--workers N] [--scales 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fertool.data.csv import SPLITS
from fertool.data.prepare import CANONICAL_FER2013

# Canonical split sizes; the class mix of PublicTest/PrivateTest only needs to be plausible.
_EVAL_CLASSES = (467, 56, 496, 895, 653, 415, 607)
_TEST_CLASSES = (491, 55, 528, 879, 594, 416, 626)


def canonical_labels(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels and split codes in FER2013 file order (Training, PublicTest, PrivateTest)."""
    labels, splits = [], []
    for code, counts in enumerate((CANONICAL_FER2013["training_classes"], _EVAL_CLASSES, _TEST_CLASSES)):
        split_labels = rng.permutation(np.repeat(np.arange(7), counts))
        labels.append(split_labels)
        splits.append(np.full(len(split_labels), code))
    return np.concatenate(labels), np.concatenate(splits)


def make_csv(path: Path, pixels: str, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    labels, splits = canonical_labels(rng)
    assert len(labels) == CANONICAL_FER2013["rows"]
    if pixels == "faces":
        from fertool.data.sample import draw_face

        pool = [draw_face(rng, c % 7) for c in range(2000)]
    else:
        pool = [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(2000)]
    numbers = np.array([str(v) for v in range(256)], dtype=object)
    texts = [" ".join(numbers[p.ravel()]) for p in pool]
    with open(path, "w", newline="\n") as fh:
        fh.write("emotion,pixels,Usage\n")
        per_class = len(texts) // 7
        for i, (label, code) in enumerate(zip(labels.tolist(), splits.tolist())):
            # pool[7k + c] is a face of class c
            index = 7 * (i % per_class) + label if pixels == "faces" else i % len(texts)
            fh.write(f"{label},{texts[index]},{SPLITS[code]}\n")
    return len(labels)


def head(src: Path, dst: Path, rows: int) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for i, line in enumerate(fin):
            if i > rows:
                break
            fout.write(line)


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return pids


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


class TreeMemory(threading.Thread):
    """Samples the summed RSS and PSS of a process tree, and each process's CPU time."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.cpu: dict[int, float] = {}  # last CPU seconds seen per process
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids = _tree(self.pid)
            rss = sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids)
            pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            for p in pids:
                self.cpu[p] = max(self.cpu.get(p, 0.0), _cpu_seconds(p))
            time.sleep(self.interval)


def run_prepare(csv_path: Path, out: Path, workers: int | None) -> dict:
    cmd = [sys.executable, "-m", "fertool", "prepare", "--csv", str(csv_path), "--out", str(out), "--quiet"]
    if workers:
        cmd += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    monitor = TreeMemory(proc.pid)
    monitor.start()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - start
    monitor.stop.set()
    monitor.join()
    if proc.returncode != 0:
        raise SystemExit(f"fertool prepare failed ({proc.returncode}):\n{stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall": wall,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "tree_rss_mb": monitor.peak_rss / 1024,
        "tree_pss_mb": monitor.peak_pss / 1024,
        "max_rss_mb": after.ru_maxrss / 1024,
        "parent_cpu": monitor.cpu.get(proc.pid, 0.0),  # as last sampled (the final ~20 ms are missed)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pixels", choices=("faces", "random"), default="faces")
    parser.add_argument("--workers", type=int, default=None, help="default: fertool's (one per core)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="fractions of the 35,887 rows")
    parser.add_argument("--tmp", default=None, help="folder for the CSV and outputs (default: system temp)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="fertool-bench-") as tmp:
        tmp = Path(tmp)
        full = tmp / "fer2013.csv"
        t0 = time.perf_counter()
        n = make_csv(full, args.pixels)
        print(
            f"made {full.name}: {n:,} rows, {full.stat().st_size / 1e6:.0f} MB, {args.pixels} pixels "
            f"({time.perf_counter() - t0:.1f} s); {os.cpu_count()} CPUs"
        )
        print(
            f"{'rows':>8} {'wall s':>7} {'img/s':>7} {'CPU s':>6} {'tree RSS MB':>12} {'tree PSS MB':>12} "
            f"{'max RSS MB':>11} {'output MB':>10} {'parent CPU s':>13}"
        )
        for scale in args.scales:
            rows = int(round(n * scale))
            csv_path = full if rows == n else tmp / f"head{rows}.csv"
            if rows != n:
                head(full, csv_path, rows)
            out = tmp / f"out{rows}"
            r = run_prepare(csv_path, out, args.workers)
            size = sum(p.stat().st_size for p in out.rglob("*.jpg")) / 1e6
            print(
                f"{rows:>8,} {r['wall']:>7.1f} {rows / r['wall']:>7,.0f} {r['cpu']:>6.1f} {r['tree_rss_mb']:>12.0f} "
                f"{r['tree_pss_mb']:>12.0f} {r['max_rss_mb']:>11.0f} {size:>10.0f} {r['parent_cpu']:>13.1f}"
            )
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
