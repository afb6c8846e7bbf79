"""What prediction yields and how a batch of faces becomes it: shared by photos
(:mod:`fertool.deploy.predict`) and videos (:mod:`fertool.deploy.video`).

* :class:`FaceResult` per face, :class:`InputDone` per finished input, :class:`InputProblem`
  per failed one (:data:`Event` is any of the three);
* :class:`PendingFaces`: the prepared faces of one photo or searched video frame, waiting for
  a classification batch; :func:`classify_pending` classifies many of them in one call;
* :func:`annotate` draws the results on the image they came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from .faces import Box

__all__ = [
    "FaceResult",
    "InputDone",
    "InputProblem",
    "Event",
    "BatchClassifier",
    "PendingFaces",
    "classify_pending",
    "label_counts",
    "annotate",
]


@dataclass(frozen=True)
class FaceResult:
    """One classified face. ``frame`` is the 0-based video frame index (None for a photo)."""

    path: str
    frame: int | None
    face: int  # index of the face in its image/frame, largest first
    box: Box
    probs: dict[str, float]
    label: str
    tta_probs: dict[str, float] | None = None
    tta_label: str | None = None
    face_id: int | None = None  # video: the face's track id (persists across frames)
    time_s: float | None = None  # video: the frame's time in seconds
    smoothed: bool = False  # video with --smooth: probs/label are the track's smoothed ones

    @property
    def probability(self) -> float:
        return self.probs[self.label]

    @property
    def best(self) -> tuple[str, float]:
        """The label and probability to show: the TTA ones when TTA ran."""
        if self.tta_probs is not None and self.tta_label is not None:
            return self.tta_label, self.tta_probs[self.tta_label]
        return self.label, self.probability

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "frame": self.frame,
            "time_s": self.time_s,
            "face": self.face,
            "face_id": self.face_id,
            "box": self.box.as_list(),
            "detector_score": self.box.score,
            "label": self.label,
            "probability": self.probability,
            "probs": self.probs,
        }
        if self.smoothed:
            out["smoothed"] = True
        if self.tta_probs is not None:
            out["tta_label"] = self.tta_label
            out["tta_probability"] = self.tta_probs[self.tta_label]
            out["tta_probs"] = self.tta_probs
        return out


@dataclass(frozen=True)
class InputDone:
    """An input that was processed: ``faces`` classified, ``frames`` searched (videos)."""

    path: str
    kind: str  # "image" | "video"
    faces: int
    frames: int | None = None
    output: str | None = None
    labels: dict[str, int] = field(default_factory=dict)  # faces per (shown) label
    table: str | None = None  # video with --out: the per-frame CSV
    plots: tuple[str, ...] = ()  # video with --out: one expression-over-time PNG per face
    summary: tuple[dict, ...] = ()  # video: per tracked face (see fertool.deploy.tracking.Tally.summary)
    seconds: float | None = None  # video: wall time of the input, without the one-off engine build
    frames_read: int | None = None  # video: frames decoded or grabbed


@dataclass(frozen=True)
class InputProblem:
    """An input that could not be processed, with a one-line reason."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


Event = FaceResult | InputDone | InputProblem


class BatchClassifier(Protocol):
    """What the pipeline needs of a classifier (:class:`fertool.deploy.predict.FaceClassifier`)."""

    class_names: tuple[str, ...]
    batch_size: int
    build_seconds: float  # seconds spent building the engine so far (left out of throughputs)

    def classify(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...

    def result(
        self, path: str, frame: int | None, face: int, box: Box, p: np.ndarray, tta_p: np.ndarray | None
    ) -> FaceResult: ...


@dataclass
class PendingFaces:
    """Faces of one image or searched video frame, waiting for a classification batch."""

    path: str
    frame: int | None
    boxes: list[Box]
    faces: np.ndarray  # (k, S, S) uint8 prepared faces
    image: np.ndarray | None = None  # kept only when an annotated copy is written
    out: Path | None = None
    results: list[FaceResult] = field(default_factory=list)
    ids: list[int] | None = None  # video: track ids of the boxes
    time_s: float | None = None  # video: the frame's time


def classify_pending(classifier: BatchClassifier, pending: Sequence[PendingFaces]) -> None:
    """Classify the faces of all ``pending`` in one call and store their results."""
    todo = [w for w in pending if w.boxes]
    if not todo:
        return
    faces = np.concatenate([w.faces for w in todo])  # (N, S, S) uint8
    probs, tta = classifier.classify(faces)
    i = 0
    for w in todo:
        w.results = [
            classifier.result(w.path, w.frame, j, box, probs[i + j], tta[i + j] if tta is not None else None)
            for j, box in enumerate(w.boxes)
        ]
        i += len(w.boxes)


def label_counts(results: Iterable[FaceResult]) -> dict[str, int]:
    """Faces per shown label (the TTA one when TTA ran)."""
    counts: dict[str, int] = {}
    for r in results:
        label = r.best[0]
        counts[label] = counts.get(label, 0) + 1
    return counts


def annotate(image_bgr: np.ndarray, results: Sequence[FaceResult]) -> np.ndarray:
    """A copy of the image with each face's box and ``label probability`` drawn on it."""
    out = image_bgr.copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    scale = max(0.4, min(h, w) / 900)
    font = cv2.FONT_HERSHEY_SIMPLEX
    colour = (60, 200, 60)  # BGR green
    for r in results:
        x, y, bw, bh = r.box.as_list()
        cv2.rectangle(out, (x, y), (x + bw, y + bh), colour, thick)
        label, p = r.best
        text = f"{label} {p:.0%}" if r.face_id is None else f"#{r.face_id} {label} {p:.0%}"
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        top = y - th - base - 4 if y - th - base - 4 >= 0 else min(h - th - base - 4, y + bh)
        cv2.rectangle(out, (x, top), (x + tw + 4, top + th + base + 4), colour, -1)
        cv2.putText(out, text, (x + 2, top + th + 2), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return out
