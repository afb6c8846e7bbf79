"""Classify the facial expressions of the faces in photos, folders, videos and a webcam.

:func:`predict_paths` is the library side of ``fertool predict``: it expands the inputs
(files, folders searched recursively), finds faces (:mod:`fertool.deploy.faces`), prepares
every face exactly like the training images (docs/protocol.md §1, see :func:`fertool.deploy.faces.prepare_face`),
classifies them in batches through :func:`fertool.evaluation.predict_probs` (plain, and with
a TTA preset of docs/protocol.md §5 when asked) and yields, in input order:

* :class:`FaceResult` per face (path, video frame, box, class probabilities, label);
* :class:`InputDone` when an input is finished (faces found, annotated output written);
* :class:`InputProblem` for an input that failed (missing, unreadable, not an image or
  video, empty folder, no face): the others are still processed.

Photos are handled here (the faces of consecutive photos share batches of at most
``batch_size`` faces and ``MAX_BUFFER_BYTES`` of decoded images); each video is streamed by
:class:`fertool.deploy.video.VideoPredictor`.  Both yield the events of
:mod:`fertool.deploy.results` and batch their faces through its ``classify_pending``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .. import CLASS_NAMES
from ..checkpoint import photo_preparation
from ..data.folders import IMAGE_EXTENSIONS
from ..data.prepare_images import prepared_photo
from ..data.provenance import checkpoint_provenance
from ..errors import DataError, FertoolError
from ..evaluation.runtimes import RECHECK_MARGIN, CheckedEngine, build_engine, choose_engine, recheck_margin
from ..files import atomic_path, check_output_dir, mark_output
from ..imagecap import decode_image
from ..progress import Progress
from ..tempfiles import sweep_stale
from . import file_mode
from .faces import (
    Box,
    FaceDetector,
    aligned_crop,
    crop_face,
    expand_box,
    face_to_48,
    gui_problem,
    load_detector,
    prepare_faces,
)
from .results import (
    Event,
    FaceResult,
    InputDone,
    InputProblem,
    PendingFaces,
    annotate,
    classify_pending,
    label_counts,
)
from .tracking import FrameTable
from .video import VideoPredictor

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "FaceResult",
    "InputDone",
    "InputProblem",
    "FaceClassifier",
    "resolve_tta",
    "expand_inputs",
    "read_image",
    "annotate",
    "predict_paths",
    "run_webcam",
    "MAX_BUFFER_BYTES",
    "face_alignment",
]

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"})
#: Most bytes of decoded photos / video frames held while their faces wait for a batch
#: (only when annotated copies are written; otherwise only the small prepared faces are kept).
MAX_BUFFER_BYTES = 256 * 2**20


# --------------------------------------------------------------------------- classifier


def resolve_tta(name: str, recipe: Mapping[str, Any] | None = None):
    """The TTA preset ``name`` of ``recipe`` (a checkpoint's stored recipe) or of the defaults.

    A stored recipe that no longer loads is an error, not a silent fall-back to the defaults:
    its presets may differ from them.
    """
    from ..evaluation.inputs import resolve_tta as resolve_preset
    from ..recipe import load_recipe

    return resolve_preset(load_recipe(recipe or None, stored=True), name)[1]


def preparation_from_recipe(recipe: Mapping[str, Any] | None) -> dict[str, Any]:
    """How the checkpoint's training images were prepared (recipe ``prepare``; defaults: docs/protocol.md §1)."""
    from ..recipe import PrepareConfig

    default = PrepareConfig()
    section = (recipe or {}).get("prepare") or {}
    return {
        "truncate": bool(section.get("truncate", default.truncate)),
        "quality": int(section.get("jpeg_quality", default.jpeg_quality)),
        "subsampling": str(section.get("subsampling", default.subsampling)),
    }


def calibration_images(faces: np.ndarray) -> np.ndarray:
    """Prepared faces (N, S, S) grey or (N, S, S, 3) RGB uint8 -> (2N, 3, S, S) float32 model
    inputs, each also mirrored: the calibration set of ``precision="int8"``."""
    x = np.asarray(faces, dtype=np.float32)
    x = np.repeat(x[:, None], 3, axis=1) if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(np.concatenate([x, x[..., ::-1]]))


def face_alignment(ckpt: Mapping[str, Any]) -> bool:
    """Whether faces are turned eyes-level before the crop for this checkpoint.

    Recorded per checkpoint as ``extra.predict.align`` (bool); when absent, True: FER2013's
    faces are upright, centred crops, RAF-DB's and AffectNet's are aligned, and turning a
    tilted face upright brings it closer to either (benchmarks/align.py measures the effect).
    """
    value = ((ckpt.get("extra") or {}).get("predict") or {}).get("align")
    return True if value is None else bool(value)


class FaceClassifier:
    """A checkpoint's model ready to classify prepared faces (N, S, S) grey or (N, S, S, 3)
    RGB uint8, in batches.  ``photo``: the ``prepare`` settings of a model trained on photos
    (faces are then cropped in colour and fitted as those were), None for FER2013's path."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        size: int,
        class_names: Sequence[str] = CLASS_NAMES,
        device: torch.device | str = "cpu",
        tta=None,
        tta_name: str | None = None,
        batch_size: int = 64,
        preparation: Mapping[str, Any] | None = None,
        photo: Mapping[str, Any] | None = None,
        engine: str = "auto",
        precision: str = "fp32",
        recheck: float = RECHECK_MARGIN,
        trained_on: Mapping[str, Any] | None = None,
        align: bool = True,
    ) -> None:
        if batch_size < 1:
            raise FertoolError(f"batch_size: must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        #: ``engine`` / ``precision`` of :func:`fertool.evaluation.runtimes.build_engine`
        #: (``precision="bf16"``: faster on CPUs with native bf16, outputs slightly differ;
        #: faces whose two best classes are within ``recheck`` x the largest |logit| are
        #: recomputed in float32, see :class:`~fertool.evaluation.runtimes.CheckedEngine`)
        if precision == "int8":  # ONNX Runtime static int8, calibrated on the first batch's faces
            if self.device.type != "cpu" or engine not in ("auto", "onnxruntime"):
                raise FertoolError(
                    f"precision int8: runs on the CPU with ONNX Runtime only (device {self.device}, engine {engine})"
                )
            self.engine_name, self.precision = "onnxruntime-int8", precision
        else:
            self.engine_name, self.precision = choose_engine(engine, self.device, precision), precision
        self.recheck = recheck_margin(recheck)  # checked now: the engine is built at the first batch
        self._engine = None
        #: seconds spent building the engine (once, at the first batch): left out of throughputs
        self.build_seconds = 0.0
        self.size = int(size)
        self.class_names = tuple(class_names)
        self.tta = tta
        self.tta_name = tta_name
        self.batch_size = batch_size
        #: keyword arguments of :func:`~fertool.deploy.faces.prepare_faces` (truncate, quality, subsampling)
        self.preparation = dict(preparation or {})
        self.photo = dict(photo) if photo is not None else None
        #: provenance of the model's training data (the checkpoint's ``data``), None if unknown
        self.trained_on = dict(trained_on) if trained_on else None
        #: turn faces eyes-level before the crop (when the detector gives landmarks)
        self.align = bool(align)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike | Mapping[str, Any],
        *,
        device: torch.device | str = "cpu",
        tta: str | None = None,
        batch_size: int = 64,
        engine: str = "auto",
        precision: str = "fp32",
        recheck: float = RECHECK_MARGIN,
        align: bool | None = None,
    ) -> FaceClassifier:
        """Load a fertool checkpoint (path or loaded dict); ``tta`` names a preset; ``align``
        None: what the checkpoint records (:func:`face_alignment`)."""
        from ..checkpoint import load_checkpoint
        from ..surgery import model_from_checkpoint

        ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
        model = model_from_checkpoint(ckpt)
        size = int(getattr(model, "input_size", ckpt.get("arch_args", {}).get("input_size", 224)))
        preset = resolve_tta(tta, ckpt.get("recipe")) if tta else None
        return cls(
            model,
            size=size,
            class_names=ckpt.get("class_names") or CLASS_NAMES,
            device=device,
            tta=preset,
            tta_name=tta,
            batch_size=batch_size,
            preparation=preparation_from_recipe(ckpt.get("recipe")),
            photo=photo_preparation(ckpt),
            engine=engine,
            precision=precision,
            recheck=recheck,
            trained_on=checkpoint_provenance(ckpt),
            align=face_alignment(ckpt) if align is None else align,
        )

    def classify(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Softmax probabilities (N, C) of prepared faces (N, S, S) uint8, and the TTA ones."""
        from ..data.datasets import ArraySplit
        from ..evaluation import predict_probs

        built = time.perf_counter()
        if self._engine is None and self.precision == "int8":
            from ..evaluation.runtimes import Int8Engine

            self._engine = Int8Engine(self.model, calibration_images(faces))
            self.build_seconds += time.perf_counter() - built
        if self._engine is None:  # built at the first batch (an ONNX export takes seconds)
            self._engine = build_engine(
                self.model, self.engine_name, device=self.device, precision=self.precision, recheck=self.recheck
            )
            self.build_seconds += time.perf_counter() - built

        split = ArraySplit(
            images=faces,
            labels=torch.zeros(len(faces), dtype=torch.int64),
            name="faces",
            class_names=self.class_names,
        )
        out = predict_probs(None, split, batch_size=self.batch_size, tta=self.tta, engine=self._engine)
        return out["probs"], out["tta_probs"]

    def rechecked(self) -> tuple[int, int] | None:
        """(images recomputed in float32, images classified) of a bf16 classifier, else None."""
        if not isinstance(self._engine, CheckedEngine):
            return None
        return self._engine.rechecked, self._engine.rows

    def _dict(self, p: np.ndarray) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.class_names, p)}

    def result(
        self, path: str, frame: int | None, face: int, box: Box, p: np.ndarray, tta_p: np.ndarray | None
    ) -> FaceResult:
        tta_probs = self._dict(tta_p) if tta_p is not None else None
        return FaceResult(
            path=path,
            frame=frame,
            face=face,
            box=box,
            probs=self._dict(p),
            label=self.class_names[int(np.argmax(p))],
            tta_probs=tta_probs,
            tta_label=self.class_names[int(np.argmax(tta_p))] if tta_p is not None else None,
        )


# --------------------------------------------------------------------------- inputs


def input_kind(path: Path) -> str | None:
    """``image`` or ``video`` by extension, None when the extension says neither."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


def expand_inputs(
    paths: Iterable[str | os.PathLike], *, exclude: str | os.PathLike | None = None
) -> Iterator[tuple[Path, Path | None] | InputProblem]:
    """``(file, folder it was found in or None)`` per input file; problems for bad inputs.

    Folders are searched recursively for image and video extensions (sorted, hidden
    files skipped, nothing under ``exclude``: the output folder of an earlier run);
    an empty folder or a missing path is an :class:`InputProblem`.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inner = skip if skip is not None and skip != path.resolve() else None
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and input_kind(p) is not None
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and not (inner is not None and p.resolve().is_relative_to(inner))
            )
            if not found:
                yield InputProblem(str(path), "folder holds no images or videos")
            for p in found:
                yield p, path
        elif path.is_file():
            yield path, None
        elif path.exists():
            yield InputProblem(str(path), "not a regular file or folder")
        else:
            yield InputProblem(str(path), "no such file or folder")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to BGR uint8 (H, W, 3) (EXIF orientation applied); DataError if not."""
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if buf.size == 0:
        raise DataError(f"{path}: empty file")
    image = decode_image(buf, path)  # DataError above the pixel cap
    if image is None:
        raise DataError(f"{path}: not an image OpenCV can decode (corrupt or another kind of file)")
    return image


# --------------------------------------------------------------------------- outputs


def _write_image(path: Path, image: np.ndarray) -> Path:
    """Encode by the file's extension (PNG when OpenCV cannot write it) and write atomically."""
    try:
        ok, buf = cv2.imencode(path.suffix.lower() or ".png", image)
    except cv2.error:
        ok = False
    if not ok:
        path = path.with_suffix(".png")
        ok, buf = cv2.imencode(".png", image)
    with atomic_path(path, sweep=False) as tmp:  # predict_paths swept the folder once
        tmp.write_bytes(buf.tobytes())  # a short write is an OSError naming the file (not numpy's count)
        os.chmod(tmp, file_mode())
    return path


class _Names:
    """Output paths under ``--out``: same base names, folder structure kept, no collisions,
    never the input file itself (``<stem>.annotated<ext>`` when ``--out`` is its folder)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.used: set[Path] = set()

    def __call__(self, path: Path, root: Path | None, suffix: str | None = None) -> Path:
        rel = path.relative_to(root) if root is not None else Path(path.name)
        if suffix is not None:
            rel = rel.with_suffix(suffix)
        if (self.out_dir / rel).resolve() == path.resolve():  # --out is the input's folder
            rel = rel.with_name(f"{rel.stem}.annotated{rel.suffix}")
        candidate = self.out_dir / rel
        n = 2
        while candidate in self.used:
            candidate = self.out_dir / rel.with_name(f"{rel.stem}-{n}{rel.suffix}")
            n += 1
        self.used.add(candidate)
        return candidate


# --------------------------------------------------------------------------- the pipeline


class _Predictor:
    def __init__(
        self,
        classifier: FaceClassifier,
        detector: FaceDetector,
        *,
        margin: float,
        every: int,
        jpeg: bool,
        names: _Names | None,
        progress: Progress | None,
        max_buffer_bytes: int,
        smooth: float = 0.0,
        max_missed: int = 10,
    ) -> None:
        self.classifier = classifier
        self.detector = detector
        self.margin = margin
        self.jpeg = jpeg
        self.names = names
        self.progress = progress
        self.max_buffer_bytes = max_buffer_bytes
        #: the events of one video: ``self.video(path, root)``
        self.video = VideoPredictor(
            classifier,
            self.faces_of,
            every=every,
            names=names,
            progress=progress,
            max_buffer_bytes=max_buffer_bytes,
            smooth=smooth,
            max_missed=max_missed,
        )

    def faces_of(self, image: np.ndarray, path: str, frame: int | None) -> PendingFaces:
        boxes = self.detector.detect(image)
        photo = self.classifier.photo
        align = self.classifier.align
        if photo is not None:  # a model of photos: colour crops, fitted as its training images were
            size = self.classifier.size
            crops = [
                aligned_crop(image, b, self.margin) if align and b.landmarks is not None else image[y0:y1, x0:x1]
                for b, (x0, y0, x1, y1) in (
                    (b, expand_box(b, self.margin, image.shape[1], image.shape[0])) for b in boxes
                )
            ]
            prepared = (
                np.stack([prepared_photo(c, **{**photo, "size": size}, jpeg=self.jpeg) for c in crops])
                if crops
                else np.zeros((0, size, size, 3), np.uint8)
            )
            return PendingFaces(path, frame, boxes, prepared)
        faces48 = [face_to_48(crop_face(image, b, self.margin, align=align)) for b in boxes]
        prepared = prepare_faces(faces48, self.classifier.size, jpeg=self.jpeg, **self.classifier.preparation)
        return PendingFaces(path, frame, boxes, prepared)

    # ------------------------------------------------------------------ photos

    def images(self, items: Sequence[tuple[Path, Path | None] | InputProblem]) -> Iterator[Event]:
        """Photos (and problems) in order; faces of consecutive photos share batches."""
        pending: list[PendingFaces | InputProblem] = []
        n_faces = n_bytes = 0
        total = sum(1 for it in items if not isinstance(it, InputProblem))
        done = 0
        for item in items:
            if isinstance(item, InputProblem):
                pending.append(item)
                continue
            path, root = item
            try:
                image = read_image(path)
            except DataError as exc:
                pending.append(InputProblem(str(path), str(exc).removeprefix(f"{path}: ")))
            else:
                work = self.faces_of(image, str(path), None)
                if not work.boxes:
                    pending.append(InputProblem(str(path), "no face found"))
                else:
                    if self.names is not None:
                        work.image, work.out = image, self.names(path, root)
                        n_bytes += image.nbytes
                    pending.append(work)
                    n_faces += len(work.boxes)
            done += 1
            if self.progress is not None:
                self.progress(done, total, description="images")
            if n_faces >= self.classifier.batch_size or n_bytes >= self.max_buffer_bytes:
                yield from self._flush_images(pending)
                pending, n_faces, n_bytes = [], 0, 0
        yield from self._flush_images(pending)

    def _flush_images(self, pending: list[PendingFaces | InputProblem]) -> Iterator[Event]:
        classify_pending(self.classifier, [w for w in pending if isinstance(w, PendingFaces)])
        for w in pending:
            if isinstance(w, InputProblem):
                yield w
                continue
            yield from w.results
            written = None
            if w.out is not None and w.image is not None:
                written = str(_write_image(w.out, annotate(w.image, w.results)))
            yield InputDone(w.path, "image", len(w.results), output=written, labels=label_counts(w.results))


def predict_paths(
    paths: Iterable[str | os.PathLike],
    checkpoint: str | os.PathLike | Mapping[str, Any] | FaceClassifier,
    *,
    detector: FaceDetector | str | None = None,
    margin: float = 0.1,
    every: int = 5,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    tta: str | None = None,
    out_dir: str | os.PathLike | None = None,
    jpeg: bool = True,
    progress: Progress | None = None,
    max_buffer_bytes: int = MAX_BUFFER_BYTES,
    smooth: float = 0.0,
    max_missed: int = 10,
    overwrite: bool = False,
) -> Iterator[Event]:
    """Classify every face in ``paths`` (images, folders, videos); yield events in input order.

    ``checkpoint``: a fertool checkpoint path / dict, or a ready :class:`FaceClassifier`.
    ``detector``: a :class:`~fertool.deploy.faces.FaceDetector` or a ``--detector`` spec
    (``auto``, ``haar``, ``lbp``, a YuNet ``.onnx``).  ``margin``: crop margin as a fraction
    of the face box.  ``every``: search every N-th video frame.  ``tta``: name of a TTA
    preset (``paper``, ``flip``, or one of the checkpoint's recipe).  ``jpeg``: apply the
    training data's JPEG round trip to each face (default, as in training).
    ``out_dir``: write annotated copies (images under their own names, videos as
    ``<stem>.mp4``, mp4v), ``predictions.jsonl`` (one line per face) and ``predictions.csv``
    (photos' faces, the columns of the video tables) there, and per video ``<stem>.csv`` (one
    row per face per searched frame, written as it goes), ``<stem>.face<ID>.png`` (each tracked
    face's probabilities against seconds) and ``<stem>.summary.json`` (per face: dominant
    expression, share of searched frames per class).
    Video faces carry a track id (:class:`~fertool.deploy.tracking.Tracker`; a track survives
    ``max_missed`` searched frames without its face) and the frame's time; ``smooth`` > 0
    averages each track's probabilities over that many seconds (exponential moving average).
    ``progress(done, total, description=...)`` counts photos, then each video's frames.

    Bad inputs are yielded as :class:`InputProblem` and do not stop the others; a bad
    checkpoint, detector or option raises :class:`FertoolError` before anything is read.
    """
    if every < 1:
        raise FertoolError(f"every: must be >= 1, got {every}")
    if margin < 0:
        raise FertoolError(f"margin: must be >= 0, got {margin}")
    if smooth < 0:
        raise FertoolError(f"smooth: must be >= 0 seconds, got {smooth}")
    if max_missed < 0:
        raise FertoolError(f"max_missed: must be >= 0, got {max_missed}")
    if isinstance(checkpoint, FaceClassifier):
        classifier = checkpoint
    else:
        classifier = FaceClassifier.from_checkpoint(checkpoint, device=device, tta=tta, batch_size=batch_size)
    if detector is None or isinstance(detector, (str, os.PathLike)):
        detector = load_detector(detector)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise FertoolError(f"out_dir {out}: exists and is not a folder")
    if out is not None:  # a folder of someone else's files is refused unless overwrite
        check_output_dir(out, "predictions", overwrite, legacy="predictions.jsonl")
    predictor = _Predictor(
        classifier,
        detector,
        margin=margin,
        every=every,
        jpeg=jpeg,
        names=_Names(out) if out is not None else None,
        progress=progress,
        max_buffer_bytes=max_buffer_bytes,
        smooth=smooth,
        max_missed=max_missed,
    )
    events = _events(predictor, list(expand_inputs(paths, exclude=out)))
    if out is None:
        yield from events
        return
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, *(p for p in out.rglob("*") if p.is_dir())):  # dead temporaries of earlier runs
        sweep_stale(folder)
    names = classifier.class_names
    with (
        atomic_path(out / "predictions.jsonl") as tmp,
        open(tmp, "w", encoding="utf-8") as log,
        atomic_path(out / "predictions.csv") as tmp_csv,
    ):
        photos = FrameTable(tmp_csv, names)
        try:
            for event in events:
                if isinstance(event, FaceResult):
                    log.write(json.dumps(event.to_dict()) + "\n")
                    if event.frame is None:
                        shown = event.tta_probs if event.tta_probs is not None else event.probs
                        photos.add(
                            [(event.path, None, None, event.face, event.box, event.best[0], [shown[c] for c in names])]
                        )
                yield event
        finally:
            photos.close()
        os.chmod(tmp, file_mode())
        os.chmod(tmp_csv, file_mode())
    outputs = predictor.names
    mark_output(
        out,
        "predictions",
        ["predictions.jsonl", "predictions.csv"]
        + sorted(
            p.relative_to(out).as_posix()
            for p in (outputs.used if outputs is not None else ())
            if p.is_relative_to(out)
        ),
    )


def _events(predictor: _Predictor, items: list[tuple[Path, Path | None] | InputProblem]) -> Iterator[Event]:
    """Runs of photos are batched together; each video is streamed on its own."""
    photos: list[tuple[Path, Path | None] | InputProblem] = []
    for item in items:
        if isinstance(item, InputProblem) or input_kind(item[0]) == "image":
            photos.append(item)
            continue
        if photos:
            yield from predictor.images(photos)
            photos = []
        path, root = item
        if input_kind(path) == "video":
            yield from predictor.video(path, root)
        else:  # unknown extension: a photo if it decodes as one, else try it as a video
            try:
                read_image(path)
            except DataError:
                yield from _as_video(predictor, path, root)
            else:
                yield from predictor.images([item])
    if photos:
        yield from predictor.images(photos)


def _as_video(predictor: _Predictor, path: Path, root: Path | None) -> Iterator[Event]:
    for event in predictor.video(path, root):
        if isinstance(event, InputProblem) and "OpenCV can open" in event.message:
            event = InputProblem(str(path), "not an image or video OpenCV can read")
        yield event


# --------------------------------------------------------------------------- webcam


def run_webcam(
    camera: int,
    classifier: FaceClassifier,
    *,
    detector: FaceDetector | str | None = None,
    margin: float = 0.1,
    every: int = 5,
    jpeg: bool = True,
    on_results: Callable[[list[FaceResult]], None] | None = None,
    window: str = "fertool (q or Esc to quit)",
) -> int:
    """Live window of camera ``camera`` with the faces classified every ``every`` frames.

    Needs a GUI build of OpenCV and a display: otherwise a one-line :class:`FertoolError`
    says so before the camera is opened.  Returns the number of frames shown.
    """
    problem = gui_problem()
    if problem is not None:
        raise FertoolError(problem)
    if detector is None or isinstance(detector, (str, os.PathLike)):
        detector = load_detector(detector)
    predictor = _Predictor(
        classifier,
        detector,
        margin=margin,
        every=every,
        jpeg=jpeg,
        names=None,
        progress=None,
        max_buffer_bytes=MAX_BUFFER_BYTES,
    )
    cap = cv2.VideoCapture(int(camera))
    if not cap.isOpened():
        raise FertoolError(f"camera {camera}: cannot open camera {camera}")
    shown = 0
    last: list[FaceResult] = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if shown % every == 0:
                work = predictor.faces_of(frame, f"webcam:{camera}", shown)
                classify_pending(classifier, [work])
                last = work.results
                if on_results is not None:
                    on_results(last)
            cv2.imshow(window, annotate(frame, last))
            shown += 1
            key = cv2.waitKey(1) & 0xFF
            if key in (27, ord("q")) or cv2.getWindowProperty(window, cv2.WND_PROP_VISIBLE) < 1:
                break
    finally:
        cap.release()
        cv2.destroyAllWindows()
    return shown
