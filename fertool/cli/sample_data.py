"""``fertool sample-data``: write the embedded synthetic sample in one of the data set layouts."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import printable
from ._common import QuietOption, err, out


def sample_data_cli(
    out_path: Path = typer.Option(..., "--out", help="CSV file to write (--format csv), else the folder to create."),
    fmt: str = typer.Option(
        "csv",
        "--format",
        help="csv: a FER2013 CSV; ferplus: fer2013.csv + fer2013new.csv "
        "(FER+ votes, 8 classes); folder: train/test class folders (5 classes, colour, "
        "non-square); rafdb: RAF-DB basic's label file and aligned images.",
    ),
    per_class: int = typer.Option(
        60, "--per-class", min=1, help="Training images per class (the test splits get about a quarter of that)."
    ),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file or folder."),
    quiet: bool = QuietOption,
) -> None:
    """Generate deterministic SYNTHETIC faces (not real data) in the layout of FER2013, FER+, class folders or RAF-DB."""
    from ..data import sample
    from ..errors import DataError

    if fmt not in sample.SAMPLE_FORMATS:
        raise DataError(f"--format {fmt}: unknown format (expected {', '.join(sample.SAMPLE_FORMATS)})")
    if fmt == "csv":
        path = sample.generate_sample(out_path, per_class=per_class, seed=seed, overwrite=overwrite)
        sizes = sample.split_sizes(per_class)
        total = 7 * sum(sizes.values())
        detail = ", ".join(f"{split} {7 * n:,}" for split, n in sizes.items())
        what = f"{total:,} synthetic faces ({detail})"
    else:
        make = {
            "ferplus": sample.generate_ferplus_sample,
            "folder": sample.generate_folder_sample,
            "rafdb": sample.generate_rafdb_sample,
        }[fmt]
        path = make(out_path, per_class=per_class, seed=seed, overwrite=overwrite)
        files = sum(1 for p in path.rglob("*") if p.is_file())
        what = f"the {fmt} layout ({files:,} files)"
    out.print(f"{printable(path)}: {what}, seed {seed}", highlight=False, markup=False, soft_wrap=True)
    if not quiet:
        err.print(f"wrote {printable(path)}", highlight=False, markup=False, soft_wrap=True)
        err.print("note: synthetic cartoon faces for demos and tests, not real data", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("sample-data")(sample_data_cli)
