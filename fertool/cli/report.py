"""``fertool report``: Table 7 of the paper from evaluated runs."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import printable
from ._common import QuietOption, err, number_table, out, shown


def report_cli(
    run_dirs: list[Path] = typer.Argument(
        ...,
        metavar="RUN",
        help="Run folders (RUN/<stage>/eval-<split>/metrics.json, "
        "or a pipeline folder with seed-<S>/ runs); searched recursively.",
    ),
    group_by: str = typer.Option("model", "--group-by", help="Group runs by model, stage or recipe."),
    split: str = typer.Option("PrivateTest", "--split", help="Which evaluation to summarise (eval-<split>)."),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default: report/ in the runs' common parent)."
    ),
    tta: bool | None = typer.Option(
        None, "--tta/--no-tta", help="Include TTA statistics (default: when every run has them)."
    ),
    html: bool = typer.Option(
        False,
        "--html",
        help="Also write index.html: every result of the runs on one "
        "self-contained page (pictures embedded; no JavaScript).",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into an existing folder that is not this "
        "command's own output (fertool's files are replaced; nothing else is removed).",
    ),
    quiet: bool = QuietOption,
) -> None:
    """Run statistics (Table 7): top 40% / 25% (with and without the best), best, mean, std per group.

    Writes report.md, report.json and runs.png (a strip plot). Runs rejected by the stage-4 selection rule are listed apart and left out of the statistics.
    """
    from ..analysis.report import report
    from ..analysis.stats import STAT_COLUMNS, stat_text, table_rows

    data = report(run_dirs, group_by=group_by, split=split, tta=tta, out_dir=out_dir, html=html, overwrite=overwrite)

    for kind, title in (("plain", "without TTA"), ("tta", "with TTA")):
        rows = [[g] + [stat_text(k, s) for k, _ in STAT_COLUMNS] for g, _, s in table_rows(data["groups"], kind)]
        if rows:
            header = [data["group_by"], "runs", "top 40%", "w/o best", "top 25%", "w/o best", "best", "mean", "std"]
            out.print(number_table(f"{split} accuracy (%) across runs, {title}", header, rows))
    from ..analysis.report import seed_line

    seeds = seed_line(data["seeds"])
    if seeds:  # results of seeds still running or failed are not the run's final numbers
        out.print(printable(seeds), highlight=False, markup=False, soft_wrap=True)
    rejected = [r for r in data["runs"] if r["status"] == "rejected"]
    if rejected:
        out.print(
            f"rejected by the selection rule ({len(rejected)}): "
            + printable(", ".join(f"{r['run']} ({r['stage']})" for r in rejected)),
            markup=False,
            soft_wrap=True,
        )
    if not quiet:
        err.print(
            f"wrote {shown(data['out_dir'])}/report.md, report.json, runs.png" + (", index.html" if html else ""),
            highlight=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.command("report")(report_cli)
