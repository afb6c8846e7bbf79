"""``fertool sample-data``: write the embedded synthetic sample as a FER2013-format CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import err, out


def sample_data_cli(
    out_csv: Path = typer.Option(..., "--out", help="CSV file to write (emotion,pixels,Usage)."),
    per_class: int = typer.Option(60, "--per-class", min=1, help="Training images per class (PublicTest and "
                                  "PrivateTest get about a quarter of that)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
) -> None:
    """Generate deterministic SYNTHETIC 48x48 faces of the 7 FER2013 classes (not real FER2013 data)."""
    from ..data.sample import generate_sample, split_sizes

    path = generate_sample(out_csv, per_class=per_class, seed=seed, overwrite=overwrite)
    sizes = split_sizes(per_class)
    total = 7 * sum(sizes.values())
    detail = ", ".join(f"{split} {7 * n:,}" for split, n in sizes.items())
    out.print(f"wrote {path}: {total:,} synthetic faces ({detail}), seed {seed}", highlight=False, soft_wrap=True)
    err.print("note: synthetic cartoon faces for demos and tests, not FER2013", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("sample-data")(sample_data_cli)
