"""``fertool pipeline --jobs N``: the seeds of a run as processes of their own, N at a time.

fertool does not schedule work across machines (SLURM, Kubernetes and a shell loop do that:
docs/clusters.md); this is the one-machine case.  :func:`run_jobs`

1. trains the shared stages (prepare, stages 1-3) once, in this process;
2. starts ``python -m fertool pipeline --seeds S --run RUN --recipe RUN/recipe.yaml`` for
   each seed, at most ``jobs`` at a time, each on one device (``CUDA_VISIBLE_DEVICES``; on
   the CPU each with one thread), its output in ``RUN/seed-S/pipeline.log``;
3. reports each seed as it ends (its accuracies, or the error of a seed that failed: the
   others go on);
4. runs the pipeline once more over the seeds that finished, in this process: every step
   is found done except the ablation of the best LHC-Net and the final table and report over
   all of them.

The seed processes cooperate through the run folder's locks (:func:`fertool.locks.cooperating`),
exactly as processes started by a cluster scheduler do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import FertoolError, os_error_message
from .files import read_json

__all__ = ["SeedJob", "job_env", "seed_command", "seed_summary", "run_jobs", "LOG_NAME"]

Log = Callable[[str], None]

#: Each seed process's output, in its seed folder.
LOG_NAME = "pipeline.log"
#: The folders whose evaluation a seed's summary line shows, per model.
SEED_MODELS = {"LHC-Net": "stage4", "LHC-NetC": "controller", "ResNet34v2": "resnet/stage4"}


@dataclass
class SeedJob:
    """One seed's process, and how it ended."""

    seed: int
    device: str | None  # the CUDA device it sees (CUDA_VISIBLE_DEVICES), None on the CPU
    log: Path
    process: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    returncode: int | None = None
    error: str | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def seed_command(
    run_dir: Path, seed: int, *, csv: Path | None, device: str, wait: bool, wait_timeout: float | None
) -> list[str]:
    """The command line of one seed's process (the recipe: the one saved in the run folder)."""
    command = [
        sys.executable,
        "-m",
        "fertool",
        "pipeline",
        "--recipe",
        str(run_dir / "recipe.yaml"),
        "--run",
        str(run_dir),
        "--seeds",
        str(seed),
        "--device",
        device,
        "--wait" if wait else "--no-wait",
    ]
    if csv is not None:
        command += ["--csv", str(csv)]
    if wait_timeout is not None:
        command += ["--wait-timeout", f"{wait_timeout:g}"]
    return command


def job_env(device: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """A seed process's environment: one GPU visible (``device``), or on the CPU one thread."""
    env = dict(os.environ if base is None else base)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    else:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _gpu_devices(devices: Sequence[str] | None, device: str) -> list[str] | None:
    """The devices the seeds are spread over, or None to run them on the CPU."""
    if device == "cpu":
        if devices:
            raise FertoolError("pipeline: devices were given with device 'cpu'; give one or the other")
        return None
    if devices:
        return list(devices)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()] or None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0 and device.startswith("cuda"):
        raise FertoolError(f"pipeline: device {device!r} asked for, but no CUDA device is available")
    return [str(i) for i in range(count)] or None


def seed_summary(run_dir: Path, seed: int, split: str) -> str:
    """``LHC-Net 71.20%, LHC-NetC 71.50%, ResNet34v2 70.90%``: a finished seed's test accuracies."""
    parts = []
    for model, folder in SEED_MODELS.items():
        metrics = read_json(run_dir / f"seed-{seed}" / folder / f"eval-{split}" / "metrics.json") or {}
        if isinstance(metrics.get("accuracy"), (int, float)):
            parts.append(f"{model} {100 * metrics['accuracy']:.2f}%")
    return ", ".join(parts) or "no evaluation found"


def _last_error(log: Path) -> str:
    """The last ``error:`` line of a seed's log (the CLI writes one per failure), or its last line."""
    try:
        lines = [
            line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
        ]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["empty log"])[-1]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


def run_jobs(
    recipe: Any,
    run_dir: str | os.PathLike,
    *,
    jobs: int,
    seeds: Sequence[int] | None = None,
    csv: str | os.PathLike | None = None,
    devices: Sequence[str] | None = None,
    device: str = "auto",
    wait: bool = True,
    wait_timeout: float | None = None,
    log: Log | None = None,
    progress_factory: Callable[[str], Any] | None = None,
    poll: float = 0.5,
) -> dict:
    """Run the pipeline's seeds ``jobs`` at a time as separate processes (module docstring).

    Returns the final pipeline result over the seeds that finished, with ``"jobs"``: one
    entry per seed (seed, device, log, returncode, seconds, error).  Raises
    :class:`FertoolError` when no seed finished.
    """
    from .pipeline import run_pipeline

    log = log or (lambda message: None)
    if jobs < 1:
        raise FertoolError(f"pipeline: jobs must be at least 1, got {jobs}")
    run_dir = Path(run_dir)
    seeds = list(seeds or recipe.pipeline.seeds)
    if not seeds:
        raise FertoolError("pipeline: needs at least one seed (--seeds or pipeline.seeds)")
    if len(set(seeds)) != len(seeds):
        raise FertoolError(f"pipeline: seeds repeat: {', '.join(map(str, seeds))}")
    gpus = _gpu_devices(devices, device)
    child_device = "cpu" if gpus is None else ("cuda" if device == "auto" else device)
    if gpus is not None and child_device.startswith("cuda:"):
        child_device = "cuda"  # each process sees its one GPU as cuda:0

    common = dict(
        csv=csv, device=device, wait=wait, wait_timeout=wait_timeout, log=log, progress_factory=progress_factory
    )
    shared = run_pipeline(recipe, run_dir, seeds=seeds, shared_only=True, **common)
    csv_path = None if csv is None else Path(shared["csv"])

    pending = list(seeds)
    running: list[SeedJob] = []
    done: list[SeedJob] = []
    slots = list(range(jobs))  # free slots; slot i runs on gpus[i % len(gpus)]
    slot_of: dict[int, int] = {}
    log(
        f"{len(seeds)} seed(s), {jobs} at a time"
        + (f" on devices {', '.join(gpus)}" if gpus else " on the CPU, one thread each")
    )
    try:
        while pending or running:
            while pending and slots:
                slot = slots.pop(0)
                seed = pending.pop(0)
                job = SeedJob(
                    seed, None if gpus is None else gpus[slot % len(gpus)], run_dir / f"seed-{seed}" / LOG_NAME
                )
                command = seed_command(
                    run_dir, seed, csv=csv_path, device=child_device, wait=wait, wait_timeout=wait_timeout
                )
                job.started = time.monotonic()
                try:
                    job.log.parent.mkdir(parents=True, exist_ok=True)
                    job._log_file = open(job.log, "ab")
                    job._log_file.write(f"$ {' '.join(command)}\n".encode())
                    job._log_file.flush()
                    job.process = subprocess.Popen(
                        command,
                        stdout=job._log_file,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=job_env(job.device),
                    )
                except OSError as exc:  # this seed cannot start (its folder or log): the others go on
                    if job._log_file is not None:
                        job._log_file.close()
                    job.returncode, job.error = -1, f"cannot start: {os_error_message(exc)}"
                    log(f"seed {seed}: FAILED: {job.error}")
                    done.append(job)
                    slots.append(slot)
                    slots.sort()
                    continue
                slot_of[id(job)] = slot
                running.append(job)
                where = f"device {job.device}" if job.device is not None else "the CPU"
                log(f"seed {seed}: started on {where} (pid {job.process.pid}), log {job.log}")
            time.sleep(poll)
            for job in list(running):
                code = job.process.poll()
                if code is None:
                    continue
                running.remove(job)
                slots.append(slot_of.pop(id(job)))
                slots.sort()
                job._log_file.close()
                job.returncode, job.seconds = code, time.monotonic() - job.started
                if job.ok:
                    log(
                        f"seed {job.seed}: finished in {_duration(job.seconds)}: "
                        f"{seed_summary(run_dir, job.seed, recipe.data.test_split)}"
                    )
                else:
                    job.error = _last_error(job.log)
                    log(
                        f"seed {job.seed}: FAILED (exit {code}) after {_duration(job.seconds)}: {job.error} "
                        f"(log: {job.log})"
                    )
                done.append(job)
    except BaseException:  # Ctrl-C, SIGTERM: stop the seeds the same way (they keep last.pt to resume)
        for job in running:
            job.process.terminate()
        for job in running:
            try:
                job.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()
            job._log_file.close()
        raise

    finished = [job.seed for job in sorted(done, key=lambda j: seeds.index(j.seed)) if job.ok]
    failed = [job for job in done if not job.ok]
    summary = [
        {
            "seed": j.seed,
            "device": j.device,
            "log": str(j.log),
            "returncode": j.returncode,
            "seconds": round(j.seconds, 1),
            "error": j.error,
        }
        for j in sorted(done, key=lambda j: seeds.index(j.seed))
    ]
    if not finished:
        raise FertoolError(f"pipeline: every seed failed ({', '.join(f'seed {j.seed}: {j.error}' for j in failed)})")
    log(f"the report over the {len(finished)} finished seed(s)")
    result = run_pipeline(recipe, run_dir, seeds=finished, **common)
    result["jobs"] = summary
    result["failed"] = [j.seed for j in failed]
    return result
