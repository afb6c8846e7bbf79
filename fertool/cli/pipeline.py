"""``fertool pipeline``: the whole protocol in one command."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import printable
from ._common import (
    QuietOption,
    SetOption,
    err,
    load_recipe_from_options,
    log_line,
    number_table,
    out,
    progress_callback,
)


def pipeline_cli(
    recipe: str | None = typer.Option(
        None,
        "--recipe",
        "-r",
        help="Recipe file or name. Default: 'paper' with --csv, 'demo' (synthetic sample data) without.",
    ),
    csv: Path | None = typer.Option(None, "--csv", help="FER2013 CSV. Without it the synthetic sample is generated."),
    run: Path | None = typer.Option(None, "--run", help="Run directory (default: runs/<recipe name>)."),
    seeds: str | None = typer.Option(
        None, "--seeds", help="Comma-separated data-order seeds; stage 4 (and the ResNet control) is repeated per seed."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        "-j",
        min=1,
        metavar="N",
        help="Run the seeds as separate processes, this many at a time, one device each (after the shared "
        "stages); each seed's output goes to RUN/seed-S/pipeline.log. On the CPU each process uses one thread.",
    ),
    devices: str | None = typer.Option(
        None,
        "--devices",
        metavar="0,1,2,3",
        help="With --jobs: the GPUs to spread the seeds over (CUDA_VISIBLE_DEVICES of each process). "
        "Default: every visible GPU.",
    ),
    wait: bool = typer.Option(
        True,
        "--wait/--no-wait",
        help="When another fertool process is doing a step of this run (stages 1-3, a seed), wait for it "
        "and go on (default), or stop at once.",
    ),
    wait_timeout: float | None = typer.Option(
        None,
        "--wait-timeout",
        metavar="SECONDS",
        min=0,
        help="Give up waiting for another process after this many seconds (default: no limit).",
    ),
    sets: list[str] | None = SetOption,
    quiet: bool = QuietOption,
) -> None:
    """Run the whole protocol, resumably, and compare with the paper.

    Runs prepare -> stages 1-3 -> augment-lhc -> stage 4 -> controller -> evaluate (plain and TTA) -> ablate -> report, and print the final table beside the paper's numbers.

    Re-running skips finished steps and resumes an interrupted stage. Several processes may share one --run (one seed each: --seeds 3 on one GPU, --seeds 4 on another, or --jobs N): stages 1-3 are trained by the first and waited for by the others (docs/clusters.md).
    """
    from rich.markup import escape

    from ..errors import FertoolError
    from ._artifacts import existing_file, resolve_csv

    name = recipe or ("paper" if csv is not None else "demo")
    resolved = load_recipe_from_options(name, sets)  # light (YAML): recipe errors come first
    existing_file(csv, "CSV file")  # before the import of torch (seconds)
    csv = resolve_csv(csv, quiet=quiet)
    from ..jobs import run_jobs
    from ..pipeline import run_pipeline

    seed_list = None
    if seeds:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise FertoolError(f"--seeds {seeds}: expected comma-separated integers, e.g. 1,2,3") from None
    run_dir = run or Path("runs") / Path(name).stem
    if devices is not None and jobs is None:
        raise FertoolError("--devices: goes with --jobs N (one seed process per device)")
    device_list = None if devices is None else [d.strip() for d in devices.split(",") if d.strip()]

    common = dict(
        csv=csv,
        seeds=seed_list,
        device=device,
        log=log_line,
        wait=wait,
        wait_timeout=wait_timeout,
        progress_factory=lambda description: progress_callback(description, quiet=quiet),
    )
    try:
        if jobs is None:
            result = run_pipeline(resolved, run_dir, **common)
        else:
            result = run_jobs(resolved, run_dir, jobs=jobs, devices=device_list, **common)
    except KeyboardInterrupt:
        log_line(
            "to continue: run the same command again; finished steps are skipped and the interrupted "
            "stage resumes from its last.pt"
        )
        raise

    rows = [
        [
            row["model"],
            row["runs"],
            row.get("rejected", 0),
            "-" if row["accuracy"] is None else f"{row['accuracy']:.2f}%",
            "-" if row["tta_accuracy"] is None else f"{row['tta_accuracy']:.2f}%",
            "-" if row["params"] is None else f"{row['params'] / 1e6:.1f}M",
            f"{row['paper_accuracy']:.2f}%",
            f"{row['paper_tta_accuracy']:.2f}%",
            row["paper_params"],
        ]
        for row in result["table"]
    ]
    table = number_table(
        f"{result['csv']}: test split",
        ["model", "runs", "left out", "acc", "TTA", "params", "paper", "paper TTA", "paper params"],
        rows,
    )
    out.print(table)
    report_dir = Path(result["run"]) / "report"
    err.print(f"run directory: {printable(result['run'])}", highlight=False, markup=False, soft_wrap=True)
    err.print(
        f"report: {report_dir / 'index.html'} (one page), {report_dir / 'report.md'}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for note in result["notes"]:
        err.print(f"[yellow]note:[/yellow] {escape(printable(note))}", highlight=False, soft_wrap=True)
    failed = [job for job in result.get("jobs", []) if job["returncode"] != 0]
    if failed:  # the others' results are above; the command still fails
        raise FertoolError(
            f"{len(failed)} seed(s) failed: "
            + "; ".join(f"seed {j['seed']}: {j['error']} (log: {j['log']})" for j in failed)
        )


def register(app: typer.Typer) -> None:
    app.command("pipeline")(pipeline_cli)
