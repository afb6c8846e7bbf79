"""``fertool evaluate``: accuracy and more of a checkpoint, plain and with the paper's TTA."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import typer

from ..errors import printable
from ._common import (
    EngineOption,
    QuietOption,
    RecipeOption,
    SetOption,
    err,
    number_table,
    out,
    progress_callback,
    shown,
)


def evaluate_cli(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="fertool checkpoint (.pt) to evaluate."),
    csv: Path | None = typer.Option(
        None, "--csv", help="FER2013 CSV: images made the reference way (docs/protocol.md §1)."
    ),
    images: Path | None = typer.Option(
        None, "--images", help="Prepared image folder (fertool prepare) or a folder of class subfolders."
    ),
    split: str = typer.Option("PrivateTest", "--split", help="Split to evaluate: Training, PublicTest, PrivateTest."),
    tta: bool = typer.Option(False, "--tta", help="Also evaluate with test-time augmentation (docs/protocol.md §5)."),
    tta_preset: str | None = typer.Option(
        None,
        "--tta-preset",
        metavar="PRESET",
        help="TTA preset from the recipe's tta.presets (paper, flip, ...); implies --tta. "
        "Default: the recipe's tta.preset (paper).",
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default: <checkpoint dir>/eval-<split>/)."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into an existing folder that is not this "
        "command's own output (fertool's files are replaced; nothing else is removed).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout and nothing else."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    engine: str = EngineOption,
    precision: str | None = typer.Option(
        None,
        "--precision",
        help="fp32, tf32 or bf16 for the forward passes [default: recipe train.eval_precision, fp32].",
    ),
    recipe: str | None = RecipeOption,
    sets: list[str] | None = SetOption,
    quiet: bool = QuietOption,
) -> None:
    """Evaluate a checkpoint on one split, plain and with the paper's TTA.

    Reports accuracy, loss, balanced accuracy, macro-F1, per-class scores, confusion matrix, bootstrap 95% interval and tied predictions; with --tta, plain and TTA side by side. Writes metrics.json, probs.npz, confusion.png and recipe.yaml.
    """
    from ..precheck import existing_folder
    from ._artifacts import checkpoint_file, existing_file

    checkpoint_file(checkpoint)  # before the imports of torch and OpenCV (seconds)
    existing_file(csv, "CSV file")
    existing_folder(images, "image folder")
    from ..evaluation.evaluate import evaluate_checkpoint
    from ._artifacts import resolve_checkpoint, resolve_csv

    checkpoint = resolve_checkpoint(checkpoint, quiet=quiet or as_json)
    csv = resolve_csv(csv, quiet=quiet or as_json)

    with ExitStack() as stack:
        bar = None

        def cb(done: int, total: int | None = None) -> None:
            nonlocal bar  # the bar appears when inference starts, not before input errors
            if bar is None:
                description = f"evaluate {split}" + (" + TTA" if tta or tta_preset else "")
                bar = stack.enter_context(progress_callback(description, quiet=quiet or as_json))
            bar(done, total)

        report = evaluate_checkpoint(
            checkpoint,
            csv=csv,
            images=images,
            split=split,
            tta=tta_preset if tta_preset is not None else (True if tta else None),
            out_dir=out_dir,
            overwrite=overwrite,
            recipe=recipe,
            overrides=sets or (),
            batch_size=batch_size,
            device=device,
            engine=engine,
            precision=precision,
            progress=cb,
        )
    if as_json:
        typer.echo((Path(report["out_dir"]) / "metrics.json").read_text(encoding="utf-8"), nl=False)
        return
    render_report(report)
    for note in provenance_notes(report):
        err.print(f"note: {printable(note)}", highlight=False, markup=False, soft_wrap=True)
    if not quiet:
        err.print(f"wrote {shown(report['out_dir'])}/ (metrics.json, probs.npz, confusion.png, recipe.yaml)")


def provenance_notes(report: dict) -> list[str]:
    """What the figures are about when the model or the data is synthetic."""
    from ..data.provenance import describe, is_synthetic

    notes = []
    if is_synthetic(report.get("model_data")):
        notes.append(f"the model was trained on {describe(report['model_data'])}, not on real faces")
    if is_synthetic(report.get("data")):
        notes.append(
            f"evaluated on {describe(report['data'])}: these figures are about synthetic cartoon faces, not FER2013"
        )
    return notes


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def render_report(report: dict) -> None:
    """Rich tables of a metrics.json dict: summary, per-class scores, confusion matrices.

    Sized for 80 columns: per-class scores in percent with one decimal, confusion cells as
    count over row percentage, classes abbreviated in the header (full names on the rows).
    """
    tta = report.get("tta")
    variants = [("plain", report)] + ([(f"TTA ({tta['preset']})", tta)] if tta else [])
    title = f"{report.get('arch')} stage {report.get('stage')} on {report['split']} ({report['n']:,} images)"
    rows = [
        ("accuracy", lambda m: _pct(m["accuracy"])),
        ("95% interval", lambda m: f"{_pct(m['accuracy_ci']['low'])} - {_pct(m['accuracy_ci']['high'])}"),
        ("loss", lambda m: f"{m['loss']:.4f}"),
        ("balanced accuracy", lambda m: _pct(m["balanced_accuracy"])),
        ("macro-F1", lambda m: _pct(m["macro_f1"])),
        ("tied top predictions", lambda m: str(m["ties"])),
    ]
    out.print(
        number_table(
            title,
            ["metric"] + [name for name, _ in variants],
            [[label] + [fmt(m) for _, m in variants] for label, fmt in rows],
        )
    )

    header = ["class", "n"]
    for name, _ in variants:
        header += [col + ("" if name == "plain" else " TTA") for col in ("P", "R", "F1")]
    rows = []
    for cls in report["class_names"]:
        cells = [cls, str(report["per_class"][cls]["support"])]
        for _, m in variants:
            s = m["per_class"][cls]
            cells += [f"{100 * s[key]:.1f}" for key in ("precision", "recall", "f1")]
        rows.append(cells)
    out.print(number_table("per class, % (P precision, R recall, n images)", header, rows))

    short = [cls[:3] for cls in report["class_names"]]
    for name, m in variants:
        rows = [
            [cls] + [f"{c}\n{100 * r:.0f}%" for c, r in zip(counts, rates)]
            for cls, counts, rates in zip(report["class_names"], m["confusion"], m["confusion_normalised"])
        ]
        out.print(
            number_table(
                f"confusion, {name}: rows true class, columns predicted, count and % of row",
                ["true"] + short,
                rows,
                show_lines=True,
            )
        )


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cli)
