"""Faces in users' photos: detection, cropping, and preparation exactly like the training data.

(Kept as one file: four small detector back-ends behind one interface.)

Detection backends (:func:`load_detector`):

* ``haar`` — OpenCV's Haar cascade ``haarcascade_frontalface_default.xml`` that ships
  with opencv-python(-headless) 4.x (``cv2.data.haarcascades``).  OpenCV 5 moved the
  cascade classifier out of the main package, so there it is not available;
* ``lbp`` — the LBP frontal-face cascade that ships with scikit-image
  (``skimage.data.lbp_frontal_face_cascade_filename()``, OpenCV's ``lbpcascade_frontalface``),
  run by ``skimage.feature.Cascade``: the fallback when OpenCV has no Haar cascade;
* a YuNet face detector ``.onnx`` model (OpenCV Zoo ``face_detection_yunet_2023mar.onnx``)
  run by ``cv2.FaceDetectorYN`` — more accurate, with a confidence per face;
* an OpenCV cascade ``.xml`` file of the user's (Haar or LBP) for ``cv2.CascadeClassifier``.

* ``blazeface`` — MediaPipe's BlazeFace full-range detector, bundled with fertool as ONNX
  (``fertool/deploy/models``, Apache-2.0) and run by onnxruntime: offline, with a confidence
  and six landmarks per face;
* ``yunet`` — the YuNet model cached as the artefact ``yunet`` (:mod:`fertool.artifacts`).

``auto`` (the default) takes YuNet when its model is cached, else BlazeFace (the detector's
``note`` says so), else ``haar``/``lbp`` when onnxruntime is missing.

Alignment (:func:`align_matrix`, :func:`aligned_crop`): with a detector that gives landmarks
(YuNet, BlazeFace), the crop can be turned about the box centre so that the eyes are level (a
similarity transform without scaling) before it is cut out: same square crop with margin as
:func:`expand_box`, image edges replicated instead of clamped.

Preparation of a face (docs/protocol.md §1) mirrors how ``fertool prepare`` made the training images
from FER2013's 48x48 grey faces: the box is enlarged by a margin and made square
(:func:`expand_box`), cropped, converted to grey, shrunk to 48x48 with ``cv2.INTER_AREA``
(FER2013's own faces are 48x48 grey crops), then resized to the network's input size with
the TF-exact float32 bilinear resize and floored to uint8, replicated to three channels
and passed through the same in-memory JPEG round trip (quality 100 without chroma
subsampling, 4:4:4) that the stored training images went through.  Resize, floor and
JPEG encoding are the very functions of :mod:`fertool.data.prepare`.  ``jpeg=False``
skips the round trip (it changes pixels by at most a few grey levels).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from ..errors import FertoolError, printable

__all__ = [
    "Box",
    "FaceDetector",
    "HaarDetector",
    "LBPDetector",
    "YuNetDetector",
    "BlazeFaceDetector",
    "BLAZEFACE_FILE",
    "yunet_problem",
    "describe_detector",
    "DETECTOR_NAMES",
    "haar_available",
    "load_detector",
    "detect_faces",
    "expand_box",
    "crop_face",
    "eye_angle",
    "align_matrix",
    "aligned_crop",
    "face_to_48",
    "jpeg_roundtrip",
    "prepare_face",
    "face_to_input",
    "prepare_faces",
    "gui_problem",
    "FER_SIZE",
]

#: Side of FER2013's face images.
FER_SIZE = 48
HAAR_FILE = "haarcascade_frontalface_default.xml"
#: Names ``--detector`` accepts besides a model file.
DETECTOR_NAMES = ("auto", "yunet", "blazeface", "haar", "lbp")


@dataclass(frozen=True)
class Box:
    """A face box in pixel coordinates of the full image: top-left ``(x, y)``, size ``(w, h)``.

    ``score`` is the detector's confidence when it gives one (YuNet, BlazeFace), else None.
    ``landmarks``: the detector's facial points ``((x, y), ...)`` in image pixels when it gives
    them; the first two are the eyes, the subject's right eye (left in the image) first
    (YuNet: eyes, nose tip, mouth corners; BlazeFace: eyes, nose tip, mouth, ear tragions).
    """

    x: int
    y: int
    w: int
    h: int
    score: float | None = None
    landmarks: tuple[tuple[float, float], ...] | None = None

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    @property
    def area(self) -> int:
        return self.w * self.h


class FaceDetector(Protocol):
    """Anything with a ``name`` and ``detect(image_bgr (H, W, 3) uint8) -> list[Box]``
    (:func:`load_detector` also sets ``note``: why ``auto`` fell back, or None)."""

    name: str

    def detect(self, image_bgr: np.ndarray) -> list[Box]: ...


def _grey(image_bgr: np.ndarray) -> np.ndarray:
    if image_bgr.ndim == 2:
        return image_bgr
    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)


def _downscale(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """Shrink ``image`` so its longer side is at most ``max_side``; return it and the factor."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image, 1.0
    f = max_side / max(h, w)
    small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return small, f


def _rescale(boxes: list[Box], f: float) -> list[Box]:
    if f == 1.0:
        return boxes
    return [
        Box(
            round(b.x / f),
            round(b.y / f),
            round(b.w / f),
            round(b.h / f),
            b.score,
            tuple((px / f, py / f) for px, py in b.landmarks) if b.landmarks is not None else None,
        )
        for b in boxes
    ]


def _at_least(boxes: list[Box], min_size: int) -> list[Box]:
    """Boxes whose shorter side is at least ``min_size`` pixels."""
    return [b for b in boxes if min(b.w, b.h) >= min_size]


def _sorted(boxes: list[Box]) -> list[Box]:
    """Largest face first (then left to right): a stable, meaningful order of faces."""
    return sorted(boxes, key=lambda b: (-b.area, b.x, b.y))


def haar_available() -> bool:
    """True when this OpenCV has ``CascadeClassifier`` and ships the frontal-face cascade."""
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    return hasattr(cv2, "CascadeClassifier") and bool(folder) and os.path.isfile(os.path.join(folder, HAAR_FILE))


class HaarDetector:
    """OpenCV cascade classifier (default: the frontal-face Haar cascade shipped with OpenCV 4).

    Parameters are those of the OpenCV face-detection tutorial: grey, histogram
    equalisation, ``scaleFactor=1.1``, ``minNeighbors=5``, faces of at least ``min_size``
    pixels.  Images larger than ``max_side`` are searched at reduced size (faster; the
    boxes are mapped back).
    """

    name = "haar"

    def __init__(
        self,
        cascade_path: str | os.PathLike | None = None,
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 30,
        max_side: int | None = 800,
        min_face: int = 0,
    ) -> None:
        if not hasattr(cv2, "CascadeClassifier"):
            raise FertoolError(
                f"OpenCV {cv2.__version__} has no cascade classifier (OpenCV 5 moved it out): "
                "install 'opencv-python-headless<5', or use --detector lbp (scikit-image) or a YuNet .onnx model"
            )
        if cascade_path is None:
            if not haar_available():
                raise FertoolError(
                    f"OpenCV {cv2.__version__} does not ship {HAAR_FILE}: use --detector lbp or a YuNet .onnx model"
                )
            cascade_path = os.path.join(cv2.data.haarcascades, HAAR_FILE)
        self.path = str(cascade_path)
        try:
            self.classifier = cv2.CascadeClassifier(self.path)
        except (cv2.error, SystemError):  # a malformed file: OpenCV's parser raises, saying nothing useful
            raise FertoolError(printable(f"{self.path}: not a readable OpenCV cascade file")) from None
        if self.classifier.empty():
            raise FertoolError(f"{self.path}: not a readable OpenCV cascade file")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.max_side = max_side
        self.min_face = min_face

    def detect(self, image_bgr: np.ndarray) -> list[Box]:
        small, f = _downscale(_grey(image_bgr), self.max_side)
        found = self.classifier.detectMultiScale(
            cv2.equalizeHist(small),
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        boxes = [Box(int(x), int(y), int(w), int(h)) for x, y, w, h in np.asarray(found).reshape(-1, 4)]
        return _sorted(_at_least(_rescale(boxes, f), self.min_face))


class LBPDetector:
    """scikit-image's LBP cascade (OpenCV's ``lbpcascade_frontalface``), ``skimage.feature.Cascade``.

    Search: windows from ``max(min_size, shorter side / 20)`` pixels up to the shorter
    side, scale step 1.2, at least 4 overlapping hits per face.  Slower than the Haar
    cascade (more windows at finer scales).
    """

    name = "lbp"

    def __init__(
        self,
        cascade_path: str | os.PathLike | None = None,
        *,
        min_size: int = 24,
        max_side: int | None = 640,
        min_face: int = 0,
    ) -> None:
        try:
            from skimage import data as skdata
            from skimage.feature import Cascade
        except ImportError:
            raise FertoolError(
                "the LBP face detector needs scikit-image (pip install scikit-image); "
                "or install 'opencv-python-headless<5' for the Haar cascade"
            ) from None
        self.path = str(cascade_path) if cascade_path is not None else skdata.lbp_frontal_face_cascade_filename()
        try:
            self.cascade = Cascade(self.path)
        except Exception as exc:  # skimage raises assorted errors for foreign XML
            raise FertoolError(
                f"{self.path}: not an LBP cascade scikit-image can read ({type(exc).__name__})"
            ) from None
        self.min_size = min_size
        self.max_side = max_side
        self.min_face = min_face

    def detect(self, image_bgr: np.ndarray) -> list[Box]:
        small, f = _downscale(_grey(image_bgr), self.max_side)
        h, w = small.shape
        side = min(h, w)
        smallest = max(self.min_size, side // 20)
        if side < smallest:
            return []
        found = self.cascade.detect_multi_scale(
            img=small,
            scale_factor=1.2,
            step_ratio=1,
            min_size=(smallest, smallest),
            max_size=(side, side),
            min_neighbor_number=4,
        )
        boxes = [Box(int(d["c"]), int(d["r"]), int(d["width"]), int(d["height"])) for d in found]
        return _sorted(_at_least(_rescale(boxes, f), self.min_face))


class YuNetDetector:
    """OpenCV's YuNet DNN face detector (``cv2.FaceDetectorYN``) from a ``.onnx`` model file.

    The model is the OpenCV Zoo ``face_detection_yunet_2023mar.onnx``; each face comes
    with a confidence (``Box.score``); faces below ``score_threshold`` are dropped.
    """

    name = "yunet"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        score_threshold: float = 0.7,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        max_side: int | None = 800,
        min_face: int = 0,
    ) -> None:
        if not hasattr(cv2, "FaceDetectorYN"):
            raise FertoolError(f"OpenCV {cv2.__version__} has no FaceDetectorYN (needs OpenCV >= 4.5.4)")
        self.path = str(model_path)
        try:
            self.net = cv2.FaceDetectorYN.create(self.path, "", (320, 320), score_threshold, nms_threshold, top_k)
        except cv2.error as exc:
            raise FertoolError(f"{self.path}: cannot load as a YuNet face detector ({_cv_error(exc)})") from None
        self.max_side = max_side
        self.min_face = min_face

    def detect(self, image_bgr: np.ndarray) -> list[Box]:
        if image_bgr.ndim == 2:
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
        small, f = _downscale(image_bgr, self.max_side)
        h, w = small.shape[:2]
        self.net.setInputSize((w, h))
        try:
            _, faces = self.net.detect(small)
        except cv2.error as exc:
            raise FertoolError(f"{self.path}: YuNet detection failed ({_cv_error(exc)})") from None
        if faces is None:
            return []
        boxes = []
        for row in np.asarray(faces).reshape(-1, 15):  # x, y, w, h, 5 landmarks, score
            x, y, bw, bh = (float(v) for v in row[:4])
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(w), x + bw), min(float(h), y + bh)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            points = tuple((float(row[4 + 2 * k]), float(row[5 + 2 * k])) for k in range(5))
            boxes.append(Box(round(x0), round(y0), round(x1 - x0), round(y1 - y0), float(row[14]), points))
        return _sorted(_at_least(_rescale(boxes, f), self.min_face))


#: The bundled BlazeFace model (MediaPipe face detection, full range; Apache-2.0, see
#: ``fertool/deploy/models/README.md`` and ``tools/convert_blazeface.py``).
BLAZEFACE_FILE = Path(__file__).with_name("models") / "blazeface_full_range.onnx"


def _blazeface_anchors(size: int = 192, stride: int = 4) -> np.ndarray:
    """(2304, 2) anchor centres of the full-range model: one per cell of a 48x48 grid, in 0..1
    (MediaPipe ``ssd_anchors_calculator`` with one layer of stride 4, fixed anchor size)."""
    n = size // stride
    centres = (np.arange(n, dtype=np.float32) + 0.5) / n
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` (N, 4) against ``b`` (M, 4), both as (x0, y0, x1, y1)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _weighted_nms(boxes: np.ndarray, points: np.ndarray, scores: np.ndarray, iou: float):
    """MediaPipe's weighted non-maximum suppression: each kept face is the score-weighted mean
    of the candidates overlapping the best remaining one by more than ``iou``."""
    order = np.argsort(-scores)
    boxes, points, scores = boxes[order], points[order], scores[order]
    left = np.ones(len(scores), dtype=bool)
    kept = []
    for i in range(len(scores)):
        if not left[i]:
            continue
        group = left & (_iou_matrix(boxes[i : i + 1], boxes)[0] > iou)
        group[i] = True
        w = scores[group][:, None]
        kept.append(((boxes[group] * w).sum(0) / w.sum(), (points[group] * w[:, :, None]).sum(0) / w.sum(), scores[i]))
        left &= ~group
    return kept


class BlazeFaceDetector:
    """MediaPipe's BlazeFace full-range face detector, bundled as ONNX, run by onnxruntime.

    The image is letterboxed to 192x192 RGB in [-1, 1]; the 2304 anchors' boxes and six
    landmarks are decoded as MediaPipe's face-detection graph does (scale 192, anchor offsets),
    scores are sigmoids of the raw logits (clipped to +-80), candidates above
    ``score_threshold`` merged by weighted non-maximum suppression (IoU 0.3).  Each face
    has a confidence and landmarks (eyes first).  Works offline: the model ships with fertool.
    """

    name = "blazeface"
    SIZE = 192

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        min_face: int = 0,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise FertoolError("the BlazeFace face detector needs onnxruntime (pip install onnxruntime)") from None
        self.path = str(model_path if model_path is not None else BLAZEFACE_FILE)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = min(4, os.cpu_count() or 1)
        try:
            self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise FertoolError(
                f"{self.path}: cannot load the BlazeFace model ({str(exc).splitlines()[0][:200]})"
            ) from None
        self.input = self.session.get_inputs()[0].name
        self.anchors = _blazeface_anchors(self.SIZE)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.min_face = min_face

    def detect(self, image_bgr: np.ndarray) -> list[Box]:
        if image_bgr.ndim == 2:
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
        h, w = image_bgr.shape[:2]
        side = max(h, w)
        # letterbox: the image centred on a square of side max(h, w), then 192x192
        pad_x, pad_y = (side - w) / 2.0, (side - h) / 2.0
        square = cv2.copyMakeBorder(
            image_bgr,
            int(pad_y),
            side - h - int(pad_y),
            int(pad_x),
            side - w - int(pad_x),
            cv2.BORDER_CONSTANT,
            value=(0, 0, 0),
        )
        interp = cv2.INTER_AREA if side > self.SIZE else cv2.INTER_LINEAR
        small = cv2.resize(square, (self.SIZE, self.SIZE), interpolation=interp)
        x = cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0  # (192, 192, 3) in [-1, 1]
        raw_boxes, raw_scores = self.session.run(None, {self.input: x.transpose(2, 0, 1)[None]})
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.reshape(-1), -80, 80)))  # (2304,)
        keep = scores > self.score_threshold
        if not keep.any():
            return []
        reg = raw_boxes.reshape(-1, 8, 2)[keep] / self.SIZE  # (k, 8, 2): centre, size, 6 landmarks
        anchors = self.anchors[keep]
        centre, size = reg[:, 0] + anchors, reg[:, 1]
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)  # (k, 4) x0 y0 x1 y1 in 0..1
        points = reg[:, 2:] + anchors[:, None, :]  # (k, 6, 2)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out = []
        for box, pts, score in _weighted_nms(boxes[valid], points[valid], scores[keep][valid], self.nms_threshold):
            x0, y0, x1, y1 = box * side - np.array([pad_x, pad_y, pad_x, pad_y])
            x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            landmarks = tuple((float(px * side - pad_x), float(py * side - pad_y)) for px, py in pts)
            out.append(Box(round(x0), round(y0), round(x1 - x0), round(y1 - y0), float(score), landmarks))
        return _sorted(_at_least(out, self.min_face))


def _cv_error(exc: Exception) -> str:
    """The useful part of a cv2.error: its ``error: (-N:...) message`` line, shortened."""
    text = str(exc).strip()
    for line in text.splitlines():
        if "error:" in line:
            text = line.split("error:", 1)[1].strip()
            break
    return text[:200]


def yunet_problem() -> str | None:
    """None when the default YuNet model is cached and OpenCV can run it, else why not."""
    from ..artifacts import cache_dir, cached_path

    if not hasattr(cv2, "FaceDetectorYN"):
        return f"OpenCV {cv2.__version__} has no FaceDetectorYN"
    if cached_path("yunet") is None:
        return f"the YuNet model is not in the cache ({cache_dir() / 'yunet'})"
    return None


def load_detector(
    spec: str | os.PathLike | None = None, *, score_threshold: float | None = None, min_face: int = 0
) -> FaceDetector:
    """The detector named by ``--detector``: ``auto``/None, ``yunet``, ``blazeface``, ``haar``,
    ``lbp``, or a model file.

    ``auto``: YuNet when its model is cached (:func:`fertool.artifacts.cached_path`) and this
    OpenCV has ``FaceDetectorYN``; otherwise the bundled BlazeFace (offline), with a ``note``
    on the detector saying why YuNet was not used; Haar/LBP only when onnxruntime is missing.
    A file ending in ``.onnx`` is a YuNet model, ``.xml`` an OpenCV cascade (read by OpenCV
    when it has the cascade classifier, else by scikit-image if it is an LBP cascade).
    ``score_threshold`` (YuNet, BlazeFace: confidence below which a face is dropped; None: the
    detector's default) and ``min_face`` (faces whose shorter side is smaller, in pixels, are
    dropped) apply to every detector that supports them.  A missing or unreadable file is a
    one-line :class:`FertoolError`.  The detector's ``note`` (or None) says when ``auto``
    fell back.
    """
    if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
        raise FertoolError(f"score_threshold: must be in [0, 1], got {score_threshold}")
    if min_face < 0:
        raise FertoolError(f"min_face: must be >= 0, got {min_face}")
    scored = {} if score_threshold is None else {"score_threshold": score_threshold}
    name = "auto" if spec is None else str(spec)
    note = None
    if name == "auto":
        problem = yunet_problem()
        if problem is None:
            from ..artifacts import cached_path

            try:
                return _noted(YuNetDetector(cached_path("yunet"), min_face=min_face, **scored), None)
            except FertoolError as exc:  # a damaged cached file: still detect faces, and say why
                problem = f"the cached YuNet model could not be loaded ({exc})"
        try:
            return _noted(
                BlazeFaceDetector(min_face=min_face, **scored), f"{problem}: using the bundled BlazeFace detector"
            )
        except FertoolError as exc:
            note = f"{problem} and {exc}"
        if haar_available():
            return _noted(HaarDetector(min_face=min_face), f"{note}: using OpenCV's Haar cascade")
        try:
            return _noted(LBPDetector(min_face=min_face), f"{note}: using scikit-image's LBP cascade")
        except FertoolError:
            raise FertoolError(
                f"no face detector available: {note}; OpenCV {cv2.__version__} has no Haar cascade and scikit-image "
                "is not installed; install onnxruntime, 'opencv-python-headless<5' or scikit-image"
            ) from None
    if name == "yunet":
        problem = yunet_problem()
        if problem is not None:
            raise FertoolError(f"YuNet face detector unavailable: {problem}")
        from ..artifacts import cached_path

        return _noted(YuNetDetector(cached_path("yunet"), min_face=min_face, **scored), None)
    if name == "blazeface":
        return _noted(BlazeFaceDetector(min_face=min_face, **scored), None)
    if name == "haar":
        return _noted(HaarDetector(min_face=min_face), None)
    if name == "lbp":
        return _noted(LBPDetector(min_face=min_face), None)
    path = Path(name)
    if not path.exists():
        raise FertoolError(
            f"{path}: detector model file not found "
            "(use auto, yunet, blazeface, haar, lbp, a YuNet .onnx model or an OpenCV cascade .xml)"
        )
    if not path.is_file():
        raise FertoolError(f"{path}: detector model must be a file")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise FertoolError(f"{path}: cannot read detector model ({exc.strerror})") from None
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _noted(YuNetDetector(path, min_face=min_face, **scored), None)
    if suffix == ".xml":
        if hasattr(cv2, "CascadeClassifier"):
            return _noted(HaarDetector(path, min_face=min_face), None)
        return _noted(LBPDetector(path, min_face=min_face), None)
    raise FertoolError(f"{path}: unsupported detector model (expected a YuNet .onnx model or an OpenCV cascade .xml)")


def _noted(detector, note: str | None):
    detector.note = note
    return detector


def describe_detector(detector: FaceDetector) -> str:
    """``name (file)`` of a detector, for the output's "which detector ran" line."""
    path = getattr(detector, "path", None)
    return f"{detector.name} ({path})" if path else detector.name


def detect_faces(image_bgr: np.ndarray, detector: FaceDetector | None = None) -> list[Box]:
    """Faces in a BGR (or grey) uint8 image, largest first; ``detector`` defaults to ``auto``."""
    if detector is None:
        detector = _default_detector()
    return detector.detect(image_bgr)


_DEFAULT: list[FaceDetector] = []


def _default_detector() -> FaceDetector:
    if not _DEFAULT:
        _DEFAULT.append(load_detector("auto"))
    return _DEFAULT[0]


def expand_box(box: Box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop ``(x0, y0, x1, y1)`` (exclusive ends) of a face box with a margin.

    The box is made square around its centre (side = longer side), enlarged by
    ``margin`` x side on every edge, then clamped to the image: FER2013 faces are square
    crops with some context around the face.
    """
    if margin < 0:
        raise FertoolError(f"--margin: must be >= 0, got {margin}")
    side = max(box.w, box.h) * (1.0 + 2.0 * margin)
    cx, cy = box.x + box.w / 2.0, box.y + box.h / 2.0
    x0 = max(0, int(round(cx - side / 2.0)))
    y0 = max(0, int(round(cy - side / 2.0)))
    x1 = min(width, int(round(cx + side / 2.0)))
    y1 = min(height, int(round(cy + side / 2.0)))
    if x1 <= x0 or y1 <= y0:
        raise FertoolError(f"face box {box.as_list()} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def eye_angle(box: Box) -> float | None:
    """Tilt of the line through the eyes, degrees (positive: the image-right eye is lower), or
    None when the box has no landmarks."""
    if box.landmarks is None or len(box.landmarks) < 2:
        return None
    (rx, ry), (lx, ly) = box.landmarks[0], box.landmarks[1]
    return float(np.degrees(np.arctan2(ly - ry, lx - rx)))


def align_matrix(box: Box, margin: float) -> tuple[np.ndarray, int]:
    """The 2x3 similarity transform (rotation about the box centre, no scaling) that maps the
    image onto the square crop of ``box`` with ``margin`` and its eyes level, and the crop's side."""
    if margin < 0:
        raise FertoolError(f"--margin: must be >= 0, got {margin}")
    angle = eye_angle(box) or 0.0
    side = max(1, int(round(max(box.w, box.h) * (1.0 + 2.0 * margin))))
    cx, cy = box.x + box.w / 2.0, box.y + box.h / 2.0
    m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)  # turns the eye line level, about the centre
    m[0, 2] += side / 2.0 - cx
    m[1, 2] += side / 2.0 - cy
    return m, side


def aligned_crop(image: np.ndarray, box: Box, margin: float = 0.1) -> np.ndarray:
    """Square crop (side, side[, 3]) of ``box`` with ``margin``, turned so the eyes are level
    (unturned when the box has no landmarks); edges of the image are replicated."""
    m, side = align_matrix(box, margin)
    return cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def crop_face(image_bgr: np.ndarray, box: Box, margin: float = 0.1, *, align: bool = False) -> np.ndarray:
    """Grey uint8 crop (h, w) of ``box`` with ``margin`` (see :func:`expand_box`); with
    ``align`` and landmarks on the box, the eyes-level crop of :func:`aligned_crop`."""
    if align and box.landmarks is not None:
        return _grey(aligned_crop(image_bgr, box, margin))
    h, w = image_bgr.shape[:2]
    x0, y0, x1, y1 = expand_box(box, margin, w, h)
    return _grey(image_bgr[y0:y1, x0:x1])


def face_to_48(gray_crop: np.ndarray) -> np.ndarray:
    """Grey crop -> (48, 48) uint8 with ``cv2.INTER_AREA`` (FER2013's face size)."""
    if gray_crop.ndim != 2 or gray_crop.dtype != np.uint8:
        raise FertoolError(f"expected a grey uint8 crop (h, w), got {gray_crop.dtype} {gray_crop.shape}")
    if gray_crop.shape == (FER_SIZE, FER_SIZE):
        return gray_crop
    return cv2.resize(gray_crop, (FER_SIZE, FER_SIZE), interpolation=cv2.INTER_AREA)


def jpeg_roundtrip(gray: np.ndarray, *, quality: int = 100, subsampling: str = "4:4:4") -> np.ndarray:
    """Store a grey image as the training images are stored and read it back (docs/protocol.md §1).

    Replicated to RGB and JPEG-encoded by :func:`fertool.data.prepare.encode_jpeg` (quality
    100, 4:4:4 by default), decoded as the image cache decodes it (its three channels
    stay equal, so one is kept).
    """
    from ..data.prepare import encode_jpeg, jpeg_params

    rgb = np.repeat(gray[..., None], 3, axis=-1)  # (S, S) -> (S, S, 3), three equal channels
    stored = encode_jpeg(rgb, jpeg_params(quality, subsampling))
    decoded = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_COLOR)  # (S, S, 3)
    return np.ascontiguousarray(decoded[..., 0])


def prepare_face(
    face48: np.ndarray,
    size: int,
    *,
    jpeg: bool = True,
    truncate: bool = True,
    quality: int = 100,
    subsampling: str = "4:4:4",
) -> np.ndarray:
    """(48, 48) uint8 grey face -> (size, size) uint8 grey, made like the training images.

    The TF-exact bilinear resize in float32 and the floor to uint8 of
    :func:`fertool.data.prepare.prepare_pixels` (the code that wrote the training images,
    pinned to the reference fixture), then, with ``jpeg``, the JPEG round trip of the stored training
    images (:func:`jpeg_roundtrip`).  ``truncate``/``quality``/``subsampling`` are the
    recipe's ``prepare`` settings.
    """
    return prepare_faces([face48], size, jpeg=jpeg, truncate=truncate, quality=quality, subsampling=subsampling)[0]


def prepare_faces(
    faces48: Sequence[np.ndarray] | np.ndarray,
    size: int,
    *,
    jpeg: bool = True,
    truncate: bool = True,
    quality: int = 100,
    subsampling: str = "4:4:4",
) -> np.ndarray:
    """Several (48, 48) grey faces -> (N, size, size) uint8, the layout of an ``ArraySplit``."""
    from ..data.prepare import prepare_pixels

    if len(faces48) == 0:
        return np.zeros((0, size, size), dtype=np.uint8)
    stack = np.stack([np.asarray(f, dtype=np.uint8) for f in faces48])  # (N, 48, 48)
    prepared = prepare_pixels(stack, size=size, rgb=False, truncate=truncate)  # (N, S, S) uint8
    if jpeg:
        prepared = np.stack([jpeg_roundtrip(p, quality=quality, subsampling=subsampling) for p in prepared])
    return prepared


def face_to_input(gray_crop: np.ndarray, size: int, *, jpeg: bool = True, **preparation) -> torch.Tensor:
    """Grey face crop -> float32 (3, size, size) model input, raw values 0..255 (docs/protocol.md §1).

    48x48 ``INTER_AREA`` -> :func:`prepare_face` -> channel replication (grey as RGB).
    """
    prepared = prepare_face(face_to_48(gray_crop), size, jpeg=jpeg, **preparation)  # (S, S) uint8
    return torch.from_numpy(prepared).to(torch.float32)[None].expand(3, -1, -1).contiguous()  # (3, S, S)


def gui_problem() -> str | None:
    """None when OpenCV can open a window here, else why not (for ``--webcam``)."""
    message = "no display/GUI available: --webcam needs a desktop session with opencv-python (not -headless)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return message
    try:
        cv2.namedWindow("fertool")
        cv2.destroyWindow("fertool")
    except cv2.error:
        return message
    return None
