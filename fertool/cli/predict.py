"""``fertool predict``: expressions of the faces in photos, folders, videos or a webcam."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import printable
from ..recipe import RECHECK_MARGIN
from ._common import EngineOption, QuietOption, err, out, progress_callback, safe

EPILOG = (
    "Exit codes: 0 = every input had a face and was classified; "
    "1 = at least one input failed (missing path, unreadable or non-image file, empty folder, "
    "no face found; one line on stderr each, the other inputs are still processed) or a fatal error "
    "(bad checkpoint, detector, no display for --webcam); 2 = usage error."
)


def predict_cmd(
    inputs: list[str] | None = typer.Argument(
        None,
        metavar="INPUT...",
        show_default=False,
        help="Image files, folders (searched recursively) or video files.",
    ),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="fertool checkpoint (.pt) to classify with."),
    out_dir: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Folder for annotated copies (box + label + probability; videos as <name>.mp4) and predictions.jsonl.",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into an existing --out folder that is not "
        "fertool's predictions (files of the same names are replaced; nothing else is "
        "removed).",
    ),
    tta: bool = typer.Option(
        False, "--tta", help="Also report test-time-augmented probabilities (docs/protocol.md §5)."
    ),
    tta_preset: str = typer.Option(
        "paper",
        "--tta-preset",
        help="TTA preset for --tta: paper (62 views), flip, or one of the checkpoint's recipe.",
    ),
    json_lines: bool = typer.Option(False, "--json", help="One JSON line per face on stdout (nothing else on stdout)."),
    webcam: int | None = typer.Option(None, "--webcam", min=0, help="Live window of camera N (needs a display)."),
    every: int = typer.Option(5, "--every", min=1, help="Videos and webcam: search every N-th frame for faces."),
    detector: str = typer.Option(
        "auto",
        "--detector",
        help="auto (YuNet when its model is cached, else the bundled BlazeFace), yunet, blazeface (MediaPipe, "
        "bundled, offline), haar (OpenCV's cascade), lbp (scikit-image's cascade), or a YuNet face detector .onnx "
        "(OpenCV Zoo face_detection_yunet_2023mar.onnx) or an OpenCV cascade .xml.",
    ),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        min=0.0,
        max=1.0,
        help="Detector confidence below which a face is dropped (YuNet default 0.7, BlazeFace 0.5; cascades have none).",
    ),
    min_face: int = typer.Option(0, "--min-face", min=0, help="Drop faces whose box is smaller than this many pixels."),
    align: bool | None = typer.Option(
        None,
        "--align/--no-align",
        show_default=False,
        help="Turn faces eyes-level before the crop (detectors with landmarks: YuNet, BlazeFace). "
        "Default: what the checkpoint records (extra.predict.align), else align.",
    ),
    smooth: float = typer.Option(
        0.0,
        "--smooth",
        min=0.0,
        metavar="SECONDS",
        help="Videos: average each tracked face's probabilities over about this many seconds "
        "(exponential moving average); 0 = off.",
    ),
    margin: float = typer.Option(0.1, "--margin", min=0.0, help="Crop margin around a face, fraction of its box."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per classification batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    engine: str = EngineOption,
    precision: str = typer.Option(
        "fp32",
        "--precision",
        metavar="fp32|bf16|int8",
        help="fp32, or bf16: faster on a CPU with native bf16 (AVX512-BF16, AMX) or a GPU, with torch; "
        "or int8: ONNX Runtime static quantization on the CPU, calibrated on the first batch's faces; "
        "probabilities differ slightly from fp32 (benchmarks/infer.py measures the agreement).",
    ),
    recheck: float = typer.Option(
        RECHECK_MARGIN,
        "--recheck-margin",
        min=0.0,
        metavar="FRACTION",
        help="With --precision bf16: faces whose two best classes are closer than this fraction of the "
        "largest |logit| are recomputed in fp32, so that rounding does not flip their label; 0 turns it off.",
    ),
    no_jpeg: bool = typer.Option(
        False, "--no-jpeg", help="Skip the JPEG q100 round trip the training images went through (docs/protocol.md §1)."
    ),
    quiet: bool = QuietOption,
) -> None:
    """Classify the facial expression of every face in photos, folders, videos or a webcam.

    Faces are found with YuNet when its model is cached, else the bundled BlazeFace (or the detector given), turned eyes-level, cropped with a margin, made grey and 48x48, prepared exactly like the training images, and classified in batches. Videos: faces are tracked across frames; with --out each video gets a per-frame CSV, a plot per face and a summary.
    """
    from ._artifacts import checkpoint_file

    checkpoint_file(checkpoint)  # before the imports of torch and OpenCV (seconds)
    from ..data.provenance import is_synthetic
    from ..deploy.faces import describe_detector, gui_problem, load_detector
    from ..deploy.predict import FaceClassifier, FaceResult, InputDone, InputProblem, predict_paths, run_webcam
    from ..errors import FertoolError
    from ..utils import resolve_device

    if not inputs and webcam is None:
        raise typer.BadParameter("give at least one INPUT (file, folder, video) or --webcam N", param_hint="INPUT")
    if webcam is not None and (inputs or out_dir is not None):
        raise typer.BadParameter("--webcam shows a live window: it takes no INPUT and no --out", param_hint="--webcam")
    if webcam is not None and (problem := gui_problem()) is not None:
        raise FertoolError(problem)  # before the slow checkpoint load
    from ._artifacts import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint, quiet=quiet)
    dev = resolve_device(device)
    face_detector = load_detector(detector, score_threshold=threshold, min_face=min_face)
    classifier = FaceClassifier.from_checkpoint(
        checkpoint,
        device=dev,
        tta=tta_preset if tta else None,
        batch_size=batch_size,
        engine=engine,
        precision=precision,
        recheck=recheck,
        align=align,
    )
    if not quiet:
        if face_detector.note:
            err.print(f"note: {face_detector.note}", highlight=False, markup=False, soft_wrap=True)
        aligned = (
            " (faces aligned eyes-level)" if classifier.align and face_detector.name in ("yunet", "blazeface") else ""
        )
        err.print(
            f"face detector: {describe_detector(face_detector)}{aligned}", highlight=False, markup=False, soft_wrap=True
        )
    if is_synthetic(classifier.trained_on):
        err.print(
            f"warning: {printable(checkpoint)} was trained on the synthetic sample (cartoon faces from `fertool "
            "sample-data`): it has never seen a real face, so its labels for photos mean nothing",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    if webcam is not None:

        def show(results: list) -> None:
            if json_lines:
                for r in results:
                    typer.echo(json.dumps(r.to_dict()))

        run_webcam(
            webcam, classifier, detector=face_detector, margin=margin, every=every, jpeg=not no_jpeg, on_results=show
        )
        return

    faces: list = []
    videos: list = []
    failed = 0
    with progress_callback("predict", quiet=quiet, unit="img") as progress:
        for event in predict_paths(
            inputs,
            classifier,
            detector=face_detector,
            margin=margin,
            every=every,
            out_dir=out_dir,
            jpeg=not no_jpeg,
            progress=progress,
            smooth=smooth,
            overwrite=overwrite,
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
    if not quiet:
        for v in videos:
            if v.seconds:
                err.print(
                    f"{v.path}: {v.frames_read} frames in {v.seconds:.1f} s = {v.frames_read / v.seconds:.1f} "
                    f"frames/s, {v.faces / v.seconds:.1f} faces/s ({v.frames} frames searched)",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )
    if out_dir is not None and not quiet:
        err.print(
            f"annotated outputs, predictions.jsonl and predictions.csv in {printable(out_dir)}"
            + (" (per video: <name>.csv, .face<ID>.png plots, .summary.json)" if videos else ""),
            markup=False,
            highlight=False,
        )
    if (counts := classifier.rechecked()) is not None and counts[1] and not quiet:
        err.print(f"bf16: {counts[0]} of {counts[1]} face images were close calls, recomputed in fp32")
    if failed:
        if not quiet:
            err.print(f"{failed} input(s) failed")
        raise typer.Exit(1)


def _render(faces: list, videos: list, *, tta: str | None) -> None:
    """Tables of the faces and videos, sized for 80 columns: a path too long for its column
    folds onto a second line instead of being cut, and headers are as short as the values."""
    from ._common import number_table

    if faces:
        header = ["input", "#", "box", "label"] + (["TTA"] if tta else [])
        rows = []
        for r in faces:
            row = [
                safe(r.path),
                str(r.face),
                " ".join(map(str, r.box.as_list())),
                safe(f"{r.label} {r.probability:.3f}"),
            ]
            if tta:
                row.append(safe(f"{r.tta_label} {r.tta_probs[r.tta_label]:.3f}") if r.tta_probs else "")
            rows.append(row)
        title = "Faces (#: face in its image; box: x y w h, pixels" + (f"; TTA preset {tta})" if tta else ")")
        out.print(_fold_paths(number_table(title, header, rows, left=1)))
    if videos:
        header = ["input", "frames searched", "faces", "labels" + (f" (TTA {tta})" if tta else ""), "output"]
        rows = []
        for v in videos:
            labels = ", ".join(
                f"{k} {n / max(1, v.faces):.0%}" for k, n in sorted(v.labels.items(), key=lambda kv: -kv[1])
            )
            rows.append([safe(v.path), str(v.frames), str(v.faces), safe(labels), safe(v.output or "")])
        out.print(_fold_paths(number_table("Videos", header, rows, left=1)))
        for v in videos:
            if not v.summary:
                continue
            rows = [
                [
                    str(f["face_id"]),
                    str(f["frames"]),
                    f"{f['first_s']:.2f}-{f['last_s']:.2f}",
                    safe(f["dominant"]),
                    ", ".join(f"{k} {p:.0%}" for k, p in sorted(f["share"].items(), key=lambda kv: -kv[1]) if p > 0),
                ]
                for f in v.summary
            ]
            out.print(
                number_table(
                    f"Faces in {safe(v.path)}", ["face", "frames", "seconds", "dominant", "share of time"], rows, left=3
                )
            )


def _fold_paths(table):
    """Let the path column shrink (and fold) when the table is wider than the terminal:
    number_table makes every column as wide as its widest value."""
    table.columns[0].min_width = min(table.columns[0].min_width or 0, 16)
    return table


def register(app: typer.Typer) -> None:
    app.command("predict", epilog=EPILOG)(predict_cmd)
