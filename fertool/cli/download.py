"""``fertool download``: fetch named artefacts (the authors' models and data, the ImageNet
start, a face detector) into the cache; ``fertool reproduce``: the paper's FER2013 figures of
the authors' published models, beside the paper's."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import QuietOption, err, log_line, number_table, out, shown


def download_cli(
    names: list[str] | None = typer.Argument(None, metavar="NAME...", help="Artefacts to fetch (see --list)."),
    list_: bool = typer.Option(False, "--list", "-l", help="List every artefact: size, licence, cached or not."),
    quiet: bool = QuietOption,
) -> None:
    """Fetch named artefacts into the cache: the authors' LHC-Net / LHC-NetC, their FER2013 files, the ImageNet start, YuNet.

    The cache is $FERTOOL_HOME (else the platform's cache folder); $FERTOOL_MIRROR (or 'mirror: URL' in its config.yaml) replaces every source URL by MIRROR/NAME/FILE. A name works wherever a checkpoint path does (-c lhc-net), fer2013 wherever a FER2013 CSV does (--csv fer2013).
    """
    from .. import artifacts
    from ._artifacts import fetch_artifact

    if list_ or not names:
        base = artifacts.mirror()
        out.print(
            f"cache: {artifacts.cache_dir()}" + (f"; mirror: {base}" if base else ""),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        for name, e in artifacts.REGISTRY.items():
            cached = artifacts.cached_path(name)
            lines = [
                f"{name}: {e.size_note}, " + (f"cached: {cached}" if cached else "not cached"),
                f"  {e.title}",
                f"  licence/terms: {e.licence}",
                f"  becomes: {e.becomes}",
            ]
            lines += [f"  from: {url}" for s in e.sources for url in artifacts.mirror_url(name, s)[:1]]
            out.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)
        if not names:
            return
    for name in names:
        artifacts.entry(name)  # an unknown name fails before anything is fetched
    for name in names:
        was = artifacts.cached_path(name)
        path = fetch_artifact(name, quiet=quiet)
        record = artifacts.fetched_record(name) or {}
        for f in record.get("files", []):
            out.print(
                f"  {f['path']}: {f['bytes']:,} bytes, sha256 {f['sha256']}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        out.print(
            f"{name}: {path}" + (" (already cached)" if was is not None else ""),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def reproduce_cli(
    plain_only: bool = typer.Option(
        False, "--plain-only", help="Skip TTA (the paper's: 59 views, 60 forward passes per image)."
    ),
    out_dir: Path = typer.Option(Path("runs/reproduce"), "--out", "-o", help="Folder of the evaluation reports."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not stop after the time estimate (non-interactive)."),
    quiet: bool = QuietOption,
) -> None:
    """Evaluate the authors' published LHC-Net and LHC-NetC on FER2013 PrivateTest, beside the paper's figures.

    Fetches fer2013, lhc-net and lhc-netc (about a GB; see `fertool download --list`), prints a time estimate, then evaluates both models plain and with the paper's TTA (--plain-only skips it).
    """
    from ..protocol import PAPER_TABLE7
    from ..reproduce import estimate_seconds, evaluate_published, forward_passes
    from ..utils import resolve_device
    from ._artifacts import fetch_artifact, resolve_csv
    from ._common import progress_callback

    data = fetch_artifact("fer2013", quiet=quiet)
    csv = resolve_csv(data, quiet=quiet)
    models = {"LHC-Net": fetch_artifact("lhc-net", quiet=quiet), "LHC-NetC": fetch_artifact("lhc-netc", quiet=quiet)}
    dev = resolve_device(device)
    seconds, n, per_image = estimate_seconds(models["LHC-Net"], csv, tta=not plain_only, device=dev)
    passes = forward_passes(models["LHC-Net"], not plain_only)
    log_line(
        f"{n:,} PrivateTest images x 2 models x {passes} forward passes "
        f"({per_image * 1e3:.1f} ms per pass measured on {dev}): about {_duration(seconds)}"
        + ("" if plain_only else f"; --plain-only takes 1/{passes} of that")
    )
    if not yes and err.is_terminal and not typer.confirm("go on?", default=True, err=True):
        raise typer.Exit(1)
    rows = []
    for label, ckpt in models.items():
        with progress_callback(f"{label} PrivateTest" + ("" if plain_only else " + TTA"), quiet=quiet) as cb:
            report = evaluate_published(
                ckpt, csv, out_dir / label, tta=not plain_only, device=dev, batch_size=batch_size, progress=cb
            )
        paper = PAPER_TABLE7[label]
        tta = report.get("tta")
        rows.append(
            [
                label,
                f"{100 * report['accuracy']:.2f}%",
                f"{paper['best']:.2f}%",
                "-" if not tta else f"{100 * tta['accuracy']:.2f}%",
                f"{paper['best_tta']:.2f}%",
            ]
        )
    title = f"FER2013 PrivateTest ({n:,} images): the authors' published models"
    out.print(number_table(title, ["model", "accuracy", "paper", "with TTA", "paper TTA"], rows))
    if not quiet:
        err.print(f"wrote {shown(out_dir)}/ (one evaluation report per model)")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def register(app: typer.Typer) -> None:
    app.command("download")(download_cli)
    app.command("reproduce")(reproduce_cli)
