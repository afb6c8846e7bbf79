"""``fertool report``: Table 7 of the paper from evaluated runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import err, out


def report_cli(
    run_dirs: List[Path] = typer.Argument(..., help="Run folders (RUN/<stage>/eval-<split>/metrics.json, "
                                          "or a pipeline folder with seed-<S>/ runs); searched recursively."),
    group_by: str = typer.Option("model", "--group-by", help="Group runs by model, stage or recipe."),
    split: str = typer.Option("PrivateTest", "--split", help="Which evaluation to summarise (eval-<split>)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="Output folder [default: report/ in the runs' common parent]."),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta",
                                       help="Include TTA statistics [default: when every run has them]."),
) -> None:
    """Run statistics (Table 7): top 40% / 25% (with and without the best), best, mean, std per group.

    Writes report.md, report.json and runs.png (a strip plot). Runs rejected by the stage-4
    selection rule are listed apart and left out of the statistics.
    """
    from rich.table import Table

    from ..analysis.report import STAT_COLUMNS, report

    data = report(run_dirs, group_by=group_by, split=split, tta=tta, out_dir=out_dir)

    def cell(key: str, stats: dict) -> str:
        value = stats.get(key)
        if key == "n":
            return str(value)
        return "n/a" if value is None else f"{100 * value:.2f}"

    for kind, title in (("plain", "without TTA"), ("tta", "with TTA")):
        rows = [(g, e[kind]) for g, e in data["groups"].items() if e[kind] is not None]
        if not rows:
            continue
        table = Table(title=f"{split} accuracy (%) across runs, {title}")
        table.add_column(data["group_by"], no_wrap=True)
        for col in ("runs", "top40%", "w/o best", "top25%", "w/o best", "best", "mean", "std"):
            table.add_column(col, justify="right")
        for group, stats in rows:
            table.add_row(group, *(cell(k, stats) for k, _ in STAT_COLUMNS))
        out.print(table)
    rejected = [r for r in data["runs"] if r["status"] == "rejected"]
    if rejected:
        out.print(f"rejected by the selection rule ({len(rejected)}): "
                  + ", ".join(f"{r['run']} ({r['stage']})" for r in rejected), soft_wrap=True)
    err.print(f"wrote {data['out_dir']}/report.md, report.json, runs.png")


def register(app: typer.Typer) -> None:
    app.command("report")(report_cli)
