"""``fertool ablate``: LHC modules switched off / de-trained, head analysis, attention pictures."""

from __future__ import annotations

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


def ablate_cli(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="LHC-Net or LHC-NetC checkpoint (.pt)."),
    csv: Path | None = typer.Option(
        None, "--csv", help="FER2013 CSV: images made the reference way (docs/protocol.md §1)."
    ),
    images: Path | None = typer.Option(
        None, "--images", help="Prepared image folder (fertool prepare) or a folder of class subfolders."
    ),
    split: str = typer.Option("PrivateTest", "--split", help="Split to evaluate on."),
    modes: str | None = typer.Option(
        None,
        "--modes",
        help="Comma list: off (bypass), detrain (reset to the initial weights; needs the LHC "
        "seed, which imported checkpoints lack: skipped by default there) "
        "[default: recipe ablate.modes = off,detrain].",
    ),
    subsets: str | None = typer.Option(
        None,
        "--subsets",
        help="Comma list: single, cumulative (from the first and from the last module), "
        "all (every non-empty subset) [default: recipe ablate.sets = single,cumulative].",
    ),
    old_sets: str | None = typer.Option(None, "--sets", hidden=True, help="Old name of --subsets."),
    tta: bool = typer.Option(False, "--tta", help="Also measure every set with test-time augmentation."),
    tta_preset: str | None = typer.Option(
        None, "--tta-preset", help="TTA preset of the recipe's tta.presets (implies --tta) [default: tta.preset]."
    ),
    tolerance: float | None = typer.Option(
        None,
        "--tolerance",
        help="Accuracy drop (fraction, 0.005 = half a point) a kept set may lose [default: recipe ablate.tolerance].",
    ),
    heads: bool = typer.Option(True, "--heads/--no-heads", help="Head correlation analysis (no extra inference)."),
    pictures: int = typer.Option(4, "--pictures", min=0, help="Images with attention pictures (0: none)."),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default: <checkpoint dir>/ablate-<split>/)."
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    engine: str = EngineOption,
    precision: str | None = typer.Option(
        None,
        "--precision",
        help="fp32, tf32 or bf16 for the forward passes [default: recipe train.eval_precision, fp32].",
    ),
    max_images: int | None = typer.Option(None, "--max-images", min=1, help="Use only the first N images."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into an existing folder that is not this "
        "command's own output (fertool's files are replaced; nothing else is removed).",
    ),
    recipe: str | None = RecipeOption,
    set_: list[str] | None = SetOption,
    quiet: bool = QuietOption,
) -> None:
    """Ablate the LHC modules without retraining; head correlations and attention pictures.

    Measures the accuracy of the model with sets of modules switched off or reset to their untrained weights, the smallest set of modules that keeps the accuracy within --tolerance, head correlations and attention pictures.

    Writes ablation.json, ablation.png, heads-<module>.png, pictures/ and recipe.yaml.
    """
    from ..precheck import existing_folder
    from ._artifacts import checkpoint_file, existing_file

    checkpoint_file(checkpoint)  # before the imports of torch and matplotlib (seconds)
    existing_file(csv, "CSV file")
    existing_folder(images, "image folder")
    from ..analysis.ablation import ablate
    from ._artifacts import resolve_checkpoint, resolve_csv

    checkpoint = resolve_checkpoint(checkpoint, quiet=quiet)
    csv = resolve_csv(csv, quiet=quiet)

    preset = tta_preset if tta_preset is not None else (True if tta else None)  # True: the recipe's tta.preset
    with progress_callback("ablate " + split + (" + TTA" if preset else ""), quiet=quiet) as cb:
        report = ablate(
            checkpoint,
            csv=csv,
            images=images,
            split=split,
            modes=modes,
            sets=subsets if subsets is not None else old_sets,
            tta=preset,
            tolerance=tolerance,
            out_dir=out_dir,
            overwrite=overwrite,
            batch_size=batch_size,
            device=device,
            engine=engine,
            precision=precision,
            max_images=max_images,
            heads=heads,
            pictures=pictures,
            recipe=recipe,
            overrides=set_ or (),
            progress=cb,
        )
    render(report)
    for note in report["notes"]:
        err.print(f"[yellow]note:[/] {shown(note)}", highlight=False, soft_wrap=True)
    if not quiet:
        err.print(
            f"wrote {shown(report['out_dir'])}/ ({shown(', '.join(report['files'][:4]))}"
            + (", ..." if len(report["files"]) > 4 else "")
            + ")"
        )


def _short(names: list[str]) -> str:
    """``["lhc1", "lhc2"]`` -> ``"1+2"`` (the table is about LHC modules), ``[]`` -> ``"none"``."""
    return "+".join(n[3:] if n.startswith("lhc") and n[3:].isdigit() else n for n in names) or "none"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _delta(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.2f}"


def render(report: dict) -> None:
    """Rich tables of an ablation.json dict."""
    has_tta = report["tta"] is not None
    full = report["full"]
    total = report["total_heads"]
    best = {(m, tuple(k["accuracy"]["modules"])) for m, k in report["smallest_kept"].items()}
    rows = []
    for r in report["results"]:
        mark = " *" if (r["mode"], tuple(r["kept"])) in best else ""
        cells = [
            r["mode"],
            _short(r["set"]),
            _short(r["kept"]) + mark,
            f"{r['heads_kept']}/{total}",
            _pct(r["accuracy"]),
            _delta(r["delta"]),
        ]
        if has_tta:
            cells += [_pct(r["tta_accuracy"]), _delta(r["tta_delta"])]
        rows.append(cells)
    header = ["mode", "ablated", "kept", "heads", "acc %", "change"] + (["TTA %", "change"] if has_tta else [])
    out.print(
        number_table(
            f"{report['arch']} on {report['split']} ({report['n']:,} images): full model "
            f"{_pct(full['accuracy'])}%" + (f", TTA {_pct(full['tta_accuracy'])}%" if has_tta else ""),
            header,
            rows,
            left=3,
        )
    )
    for mode, kinds in report["smallest_kept"].items():
        for key, k in kinds.items():
            label = "TTA accuracy" if key == "tta_accuracy" else "accuracy"
            out.print(
                f"* {mode}, {label}: smallest kept set within {100 * report['tolerance']:.2f} points "
                f"({k['searched']}): {'+'.join(k['modules']) or 'none'}, {k['heads']} of {k['total_heads']} "
                f"heads, {_pct(k[key])}% ({_delta(k['delta'])})",
                highlight=False,
                markup=False,
            )
    hd = report.get("heads")
    if hd:
        ctrl = hd.get("controller") or {}
        rows, unplotted = [], []
        for name, e in hd["modules"].items():
            cells = [
                name,
                str(e["heads"]),
                "n/a" if e["mean_abs_offdiag"] is None else f"{100 * e['mean_abs_offdiag']:.1f}%",
            ]
            if e["correlation"] is None:
                unplotted.append(f"{name} ({e.get('note') or 'n/a'})")
            if ctrl:
                c = ctrl.get(name)
                cells += ["-"] * 3 if c is None else [f"{c['w']:.3f}", f"{c['tanh_w']:.3f}", f"{c['gain']:.3f}"]
            rows.append(cells)
        overall = hd["overall_mean_abs_offdiag"]
        rows.append(["overall", "", "n/a" if overall is None else f"{100 * overall:.1f}%"] + ([""] * 3 if ctrl else []))
        header = ["module", "heads", "mean |rho|"] + (["w", "tanh(w)", "1+tanh(w)"] if ctrl else [])
        out.print(number_table("head redundancy: mean |correlation| between heads", header, rows))
        if unplotted:
            err.print(
                f"note: no heads-<module>.png for {printable(', '.join(unplotted))}: a correlation needs two heads",
                highlight=False,
                markup=False,
            )


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate_cli)
