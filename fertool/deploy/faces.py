"""Faces in users' photos: detection, cropping, and preparation exactly like the training data.

(One file of ~460 lines: four small detector back-ends behind one interface.)

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

``auto`` (the default) takes ``haar`` when this OpenCV has it, else ``lbp``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

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
    "DETECTOR_NAMES",
    "haar_available",
    "load_detector",
    "detect_faces",
    "expand_box",
    "crop_face",
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
DETECTOR_NAMES = ("auto", "haar", "lbp")


@dataclass(frozen=True)
class Box:
    """A face box in pixel coordinates of the full image: top-left ``(x, y)``, size ``(w, h)``.

    ``score`` is the detector's confidence when it gives one (YuNet), else None.
    """

    x: int
    y: int
    w: int
    h: int
    score: float | None = None

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    @property
    def area(self) -> int:
        return self.w * self.h


class FaceDetector(Protocol):
    """Anything with a ``name`` and ``detect(image_bgr (H, W, 3) uint8) -> list[Box]``."""

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
    return [Box(round(b.x / f), round(b.y / f), round(b.w / f), round(b.h / f), b.score) for b in boxes]


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
    ) -> None:
        if not hasattr(cv2, "CascadeClassifier"):
            raise FertoolError(
                f"OpenCV {cv2.__version__} has no cascade classifier (OpenCV 5 moved it out): "
                "install 'opencv-python-headless<5', or use --detector lbp (scikit-image) or a YuNet .onnx model"
            )
        if cascade_path is None:
            if not haar_available():
                raise FertoolError(f"OpenCV {cv2.__version__} does not ship {HAAR_FILE}: use --detector lbp or a YuNet .onnx model")
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

    def detect(self, image_bgr: np.ndarray) -> list[Box]:
        small, f = _downscale(_grey(image_bgr), self.max_side)
        found = self.classifier.detectMultiScale(
            cv2.equalizeHist(small),
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        boxes = [Box(int(x), int(y), int(w), int(h)) for x, y, w, h in np.asarray(found).reshape(-1, 4)]
        return _sorted(_rescale(boxes, f))


class LBPDetector:
    """scikit-image's LBP cascade (OpenCV's ``lbpcascade_frontalface``), ``skimage.feature.Cascade``.

    Search: windows from ``max(min_size, shorter side / 20)`` pixels up to the shorter
    side, scale step 1.2, at least 4 overlapping hits per face.  Slower than the Haar
    cascade (about 0.6 s for a 512x512 photo on one CPU core).
    """

    name = "lbp"

    def __init__(self, cascade_path: str | os.PathLike | None = None, *, min_size: int = 24, max_side: int | None = 640) -> None:
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
            raise FertoolError(f"{self.path}: not an LBP cascade scikit-image can read ({type(exc).__name__})") from None
        self.min_size = min_size
        self.max_side = max_side

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
        return _sorted(_rescale(boxes, f))


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
    ) -> None:
        if not hasattr(cv2, "FaceDetectorYN"):
            raise FertoolError(f"OpenCV {cv2.__version__} has no FaceDetectorYN (needs OpenCV >= 4.5.4)")
        self.path = str(model_path)
        try:
            self.net = cv2.FaceDetectorYN.create(self.path, "", (320, 320), score_threshold, nms_threshold, top_k)
        except cv2.error as exc:
            raise FertoolError(f"{self.path}: cannot load as a YuNet face detector ({_cv_error(exc)})") from None
        self.max_side = max_side

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
            boxes.append(Box(round(x0), round(y0), round(x1 - x0), round(y1 - y0), float(row[14])))
        return _sorted(_rescale(boxes, f))


def _cv_error(exc: Exception) -> str:
    """The useful part of a cv2.error: its ``error: (-N:...) message`` line, shortened."""
    text = str(exc).strip()
    for line in text.splitlines():
        if "error:" in line:
            text = line.split("error:", 1)[1].strip()
            break
    return text[:200]


def load_detector(spec: str | os.PathLike | None = None) -> FaceDetector:
    """The detector named by ``--detector``: ``auto``/None, ``haar``, ``lbp``, or a model file.

    A file ending in ``.onnx`` is a YuNet model, ``.xml`` an OpenCV cascade (read by OpenCV
    when it has the cascade classifier, else by scikit-image if it is an LBP cascade).
    A missing or unreadable file is a one-line :class:`FertoolError`.
    """
    name = "auto" if spec is None else str(spec)
    if name == "auto":
        if haar_available():
            return HaarDetector()
        try:
            return LBPDetector()
        except FertoolError:
            raise FertoolError(
                f"no face detector available: OpenCV {cv2.__version__} has no Haar cascade and scikit-image "
                "is not installed; install 'opencv-python-headless<5' or scikit-image, or pass --detector MODEL.onnx (YuNet)"
            ) from None
    if name == "haar":
        return HaarDetector()
    if name == "lbp":
        return LBPDetector()
    path = Path(name)
    if not path.exists():
        raise FertoolError(
            f"{path}: detector model file not found (use auto, haar, lbp, a YuNet .onnx model or an OpenCV cascade .xml)"
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
        return YuNetDetector(path)
    if suffix == ".xml":
        if hasattr(cv2, "CascadeClassifier"):
            return HaarDetector(path)
        return LBPDetector(path)
    raise FertoolError(f"{path}: unsupported detector model (expected a YuNet .onnx model or an OpenCV cascade .xml)")


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


def crop_face(image_bgr: np.ndarray, box: Box, margin: float = 0.1) -> np.ndarray:
    """Grey uint8 crop (h, w) of ``box`` with ``margin`` (see :func:`expand_box`)."""
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
