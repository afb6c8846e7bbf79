"""``fertool predict``: expressions of the faces in photos, folders, videos or a webcam."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..recipe import RECHECK_MARGIN
from ..errors import printable
from ._common import EngineOption, QuietOption, err, out, progress_callback, safe

EPILOG = (
    "Exit codes: 0 = every input had a face and was classified; "
    "1 = at least one input failed (missing path, unreadable or non-image file, empty folder, "
    "no face found; one line on stderr each, the other inputs are still processed) or a fatal error "
    "(bad checkpoint, detector, no display for --webcam); 2 = usage error."
)


def predict_cmd(
    inputs: Optional[List[str]] = typer.Argument(
        None, metavar="INPUT...", show_default=False,
        help="Image files, folders (searched recursively) or video files.",
    ),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="fertool checkpoint (.pt) to classify with."),
    out_dir: Optional[Path] = typer.Option(
        None, "--out", "-o",
        help="Folder for annotated copies (box + label + probability; videos as <name>.mp4) and predictions.jsonl.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into an existing --out folder that is not "
                                   "fertool's predictions (files of the same names are replaced; nothing else is "
                                   "removed)."),
    tta: bool = typer.Option(False, "--tta", help="Also report test-time-augmented probabilities (docs/protocol.md §5)."),
    tta_preset: str = typer.Option(
        "paper", "--tta-preset",
        help="TTA preset for --tta: paper (62 views), flip, or one of the checkpoint's recipe.",
    ),
    json_lines: bool = typer.Option(False, "--json", help="One JSON line per face on stdout (nothing else on stdout)."),
    webcam: Optional[int] = typer.Option(None, "--webcam", min=0, help="Live window of camera N (needs a display)."),
    every: int = typer.Option(5, "--every", min=1, help="Videos and webcam: search every N-th frame for faces."),
    detector: str = typer.Option(
        "auto", "--detector",
        help="auto, haar (OpenCV's cascade), lbp (scikit-image's cascade), or a YuNet face detector .onnx "
        "(OpenCV Zoo face_detection_yunet_2023mar.onnx) or an OpenCV cascade .xml.",
    ),
    margin: float = typer.Option(0.1, "--margin", min=0.0, help="Crop margin around a face, fraction of its box."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per classification batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    engine: str = EngineOption,
    precision: str = typer.Option(
        "fp32", "--precision", metavar="fp32|bf16",
        help="fp32, or bf16: faster on a CPU with native bf16 (AVX512-BF16, AMX) or a GPU, with torch; "
        "probabilities differ slightly from fp32 (benchmarks/infer.py measures the agreement).",
    ),
    recheck: float = typer.Option(
        RECHECK_MARGIN, "--recheck-margin", min=0.0, metavar="FRACTION",
        help="With --precision bf16: faces whose two best classes are closer than this fraction of the "
        "largest |logit| are recomputed in fp32, so that rounding does not flip their label; 0 turns it off.",
    ),
    no_jpeg: bool = typer.Option(
        False, "--no-jpeg", help="Skip the JPEG q100 round trip the training images went through (docs/protocol.md §1)."
    ),
    quiet: bool = QuietOption,
) -> None:
    """Classify the facial expression of every face in photos, folders, videos or a webcam.

    Faces are found with OpenCV (or the detector given), cropped with a margin, made grey and 48x48, prepared exactly like the training images, and classified in batches.
    """
    from ..data.provenance import is_synthetic
    from ..deploy.faces import gui_problem, load_detector
    from ..deploy.predict import FaceClassifier, FaceResult, InputDone, InputProblem, predict_paths, run_webcam
    from ..errors import FertoolError
    from ..utils import resolve_device

    if not inputs and webcam is None:
        raise typer.BadParameter("give at least one INPUT (file, folder, video) or --webcam N", param_hint="INPUT")
    if webcam is not None and (inputs or out_dir is not None):
        raise typer.BadParameter("--webcam shows a live window: it takes no INPUT and no --out", param_hint="--webcam")
    if webcam is not None and (problem := gui_problem()) is not None:
        raise FertoolError(problem)  # before the slow checkpoint load
    dev = resolve_device(device)
    face_detector = load_detector(detector)
    classifier = FaceClassifier.from_checkpoint(
        checkpoint, device=dev, tta=tta_preset if tta else None, batch_size=batch_size, engine=engine,
        precision=precision, recheck=recheck,
    )
    if is_synthetic(classifier.trained_on):
        err.print(f"warning: {printable(checkpoint)} was trained on the synthetic sample (cartoon faces from `fertool "
                  "sample-data`): it has never seen a real face, so its labels for photos mean nothing",
                  highlight=False, markup=False, soft_wrap=True)

    if webcam is not None:
        def show(results: list) -> None:
            if json_lines:
                for r in results:
                    typer.echo(json.dumps(r.to_dict()))

        run_webcam(webcam, classifier, detector=face_detector, margin=margin, every=every,
                   jpeg=not no_jpeg, on_results=show)
        return

    faces: list = []
    videos: list = []
    failed = 0
    with progress_callback("predict", quiet=quiet, unit="img") as progress:
        for event in predict_paths(
            inputs, classifier, detector=face_detector, margin=margin, every=every,
            out_dir=out_dir, jpeg=not no_jpeg, progress=progress, overwrite=overwrite,
        ):
            if isinstance(event, InputProblem):
                failed += 1
                # through the Rich console so that the live progress bar stays intact; one line
                err.print(f"error: {printable(str(event))}", soft_wrap=True, markup=False, highlight=False)
            elif isinstance(event, FaceResult):
                if json_lines:
                    typer.echo(json.dumps(event.to_dict()))
                elif event.frame is None:
                    faces.append(event)
            elif isinstance(event, InputDone) and event.kind == "video":
                videos.append(event)

    if not json_lines:
        _render(faces, videos, tta=classifier.tta_name)
    if out_dir is not None and not quiet:
        err.print(f"annotated outputs and predictions.jsonl in {printable(out_dir)}", markup=False, highlight=False)
    if (counts := classifier.rechecked()) is not None and counts[1] and not quiet:
        err.print(f"bf16: {counts[0]} of {counts[1]} face images were close calls, recomputed in fp32")
    if failed:
        if not quiet:
            err.print(f"{failed} input(s) failed")
        raise typer.Exit(1)


def _render(faces: list, videos: list, *, tta: str | None) -> None:
    from rich.table import Table

    if faces:
        table = Table(title="Faces")
        for name in ("input", "face", "box (x, y, w, h)", "label", "p"):
            table.add_column(name, justify="right" if name in ("face", "p") else "left")
        if tta:
            table.add_column(f"TTA ({tta})")
            table.add_column("p TTA", justify="right")
        for r in faces:
            row = [safe(r.path), str(r.face), " ".join(map(str, r.box.as_list())), safe(r.label), f"{r.probability:.3f}"]
            if tta:
                row += [safe(r.tta_label or ""), f"{r.tta_probs[r.tta_label]:.3f}" if r.tta_probs else ""]
            table.add_row(*row)
        out.print(table)
    if videos:
        table = Table(title="Videos")
        for name in ("input", "frames searched", "faces", "labels" + (f" (TTA {tta})" if tta else ""), "output"):
            table.add_column(name)
        for v in videos:
            labels = ", ".join(f"{k} {n / max(1, v.faces):.0%}" for k, n in sorted(v.labels.items(), key=lambda kv: -kv[1]))
            table.add_row(safe(v.path), str(v.frames), str(v.faces), safe(labels), safe(v.output or ""))
        out.print(table)


def register(app: typer.Typer) -> None:
    app.command("predict", epilog=EPILOG)(predict_cmd)
