"""Faces followed across video frames: ids that persist, smoothed probabilities, per-frame tables.

* :class:`Tracker` gives every detected face of a frame a track id.  Association is greedy on
  a similarity per (track, face) pair: the IoU of the track's last box and the face's box,
  or, when they do not overlap enough, a centre-distance score (faces that moved by less
  than ``max_shift`` x the box size); a track that is not matched survives ``max_missed``
  searched frames without a face (a face that leaves for a few frames and returns near where
  it was keeps its id); unmatched faces start new tracks (ids 1, 2, ... in order of appearance).
* :class:`Smoother` averages each track's class probabilities over time (an exponential
  moving average with time constant ``tau`` seconds, so the weight does not depend on how
  often frames are searched).
* :class:`FrameTable` writes the per-frame CSV ``video, frame, time_s, face_id, x, y, w, h,
  label, p_<class>...`` as it goes: one ``write`` and ``flush`` per frame, so that memory stays
  flat and a killed run leaves a CSV of complete rows.
* :class:`Tally` counts labels per face as rows go by (the per-face summary: dominant
  expression, share of time per class); :func:`read_table` and :func:`plot_tracks` read a
  finished CSV back into one PNG per face of its class probabilities against seconds.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import atomic_path
from .faces import Box

__all__ = ["TABLE_COLUMNS", "FrameTable", "Smoother", "Tally", "Tracker", "box_iou", "plot_tracks", "read_table"]

#: The fixed leading columns of the per-frame table; ``p_<class>`` columns follow.
TABLE_COLUMNS = ("video", "frame", "time_s", "face_id", "x", "y", "w", "h", "label")


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    box: Box
    missed: int = 0


class Tracker:
    """Track ids for the faces of consecutive searched frames (see the module docstring).

    ``min_iou``: boxes overlapping at least this much are the same face; ``max_shift``: else
    faces whose centres are closer than this fraction of the larger box side are; ``max_missed``:
    searched frames a track may go without a face before its id is retired.
    """

    def __init__(self, *, min_iou: float = 0.3, max_shift: float = 0.75, max_missed: int = 10) -> None:
        self.min_iou = min_iou
        self.max_shift = max_shift
        self.max_missed = max_missed
        self.tracks: list[_Track] = []
        self.next_id = 1

    def _similarity(self, track: Box, face: Box) -> float:
        iou = box_iou(track, face)
        if iou >= self.min_iou:
            return 1.0 + iou  # any real overlap ranks above a centre-distance match
        side = max(track.w, track.h, face.w, face.h)
        dist = math.hypot(track.x + track.w / 2 - face.x - face.w / 2, track.y + track.h / 2 - face.y - face.h / 2)
        size_ratio = min(track.w * track.h, face.w * face.h) / max(1, max(track.w * track.h, face.w * face.h))
        if dist < self.max_shift * side and size_ratio > 0.4:
            return 1.0 - dist / (self.max_shift * side)
        return 0.0

    def update(self, boxes: Sequence[Box]) -> list[int]:
        """Ids of ``boxes`` (one searched frame's faces), in their order."""
        pairs = sorted(
            ((self._similarity(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
            reverse=True,
        )
        ids: list[int | None] = [None] * len(boxes)
        used: set[int] = set()
        for sim, ti, bi in pairs:
            if sim <= 0.0:
                break
            if ti in used or ids[bi] is not None:
                continue
            used.add(ti)
            ids[bi] = self.tracks[ti].id
            self.tracks[ti].box, self.tracks[ti].missed = boxes[bi], 0
        for ti, t in enumerate(self.tracks):
            if ti not in used:
                t.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for bi, b in enumerate(boxes):
            if ids[bi] is None:
                ids[bi] = self.next_id
                self.tracks.append(_Track(self.next_id, b))
                self.next_id += 1
        return [int(i) for i in ids]


class Smoother:
    """Per-track exponential moving average of probabilities with time constant ``tau`` seconds
    (``tau`` 0: no smoothing).  The weight of the past is ``exp(-dt / tau)``, ``dt`` the time since
    the track's previous value."""

    def __init__(self, tau: float) -> None:
        if tau < 0:
            raise ValueError(f"smoothing time constant must be >= 0, got {tau}")
        self.tau = tau
        self.state: dict[int, tuple[float, np.ndarray]] = {}

    def __call__(self, track: int, time_s: float, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float64)
        if self.tau == 0:
            return probs
        previous = self.state.get(track)
        if previous is not None:
            keep = math.exp(-max(0.0, time_s - previous[0]) / self.tau)
            probs = keep * previous[1] + (1.0 - keep) * probs
        self.state[track] = (time_s, probs)
        return probs


def _fmt(v: float) -> str:
    return f"{v:.6f}"


class FrameTable:
    """The per-frame CSV of one input, written row by row (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, class_names: Sequence[str]) -> None:
        self.path = Path(path)
        self.class_names = tuple(class_names)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fh = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115 -- open until close()
        except OSError as exc:
            raise DataError(f"{self.path}: cannot write ({exc.strerror})") from None
        self.rows = 0
        self._write([list(TABLE_COLUMNS) + [f"p_{c}" for c in self.class_names]])

    def _write(self, rows: Iterable[list]) -> None:
        import io

        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        try:
            self.fh.write(buf.getvalue())  # whole rows in one write, then to the OS
            self.fh.flush()
        except OSError as exc:
            raise DataError(f"{self.path}: cannot write ({exc.strerror})") from None

    def add(self, rows: Iterable[tuple[str, int | None, float | None, int, Box, str, Sequence[float]]]) -> None:
        """Rows ``(video, frame, time_s, face_id, box, label, probs)`` of one frame or photo."""
        lines = [
            [
                video,
                "" if frame is None else frame,
                "" if t is None else f"{t:.3f}",
                face_id,
                *box.as_list(),
                label,
                *(_fmt(float(p)) for p in probs),
            ]
            for video, frame, t, face_id, box, label, probs in rows
        ]
        self._write(lines)
        self.rows += len(lines)

    def close(self) -> None:
        self.fh.close()


def read_table(path: str | os.PathLike) -> tuple[list[str], dict[int, dict[str, np.ndarray]]]:
    """Class names and, per face id, ``time_s`` (n,), ``probs`` (n, C) and ``label`` (n,) of a table."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        classes = [h[2:] for h in header[len(TABLE_COLUMNS) :]]
        series: dict[int, list[tuple[float, str, list[float]]]] = {}
        for row in reader:
            if len(row) != len(header):
                continue
            t = float(row[2]) if row[2] else 0.0
            series.setdefault(int(row[3]), []).append((t, row[8], [float(v) for v in row[len(TABLE_COLUMNS) :]]))
    out = {}
    for face_id, rows in sorted(series.items()):
        out[face_id] = {
            "time_s": np.array([r[0] for r in rows]),
            "label": np.array([r[1] for r in rows]),
            "probs": np.array([r[2] for r in rows]).reshape(len(rows), len(classes)),
        }
    return classes, out


class Tally:
    """Per face id: rows, first and last second, rows per label (memory: per face, not per frame)."""

    def __init__(self) -> None:
        self.faces: dict[int, dict] = {}

    def add(self, face_id: int, time_s: float, label: str) -> None:
        f = self.faces.setdefault(face_id, {"frames": 0, "first_s": time_s, "last_s": time_s, "labels": {}})
        f["frames"] += 1
        f["first_s"], f["last_s"] = min(f["first_s"], time_s), max(f["last_s"], time_s)
        f["labels"][label] = f["labels"].get(label, 0) + 1

    def summary(self, classes: Sequence[str]) -> list[dict]:
        """Per face: ``face_id, frames, first_s, last_s, dominant`` (most frequent label, ties to
        the earlier class) and ``share`` (fraction of the face's searched frames per class)."""
        out = []
        for face_id, f in sorted(self.faces.items()):
            share = {c: f["labels"].get(c, 0) / f["frames"] for c in classes}
            out.append(
                {
                    "face_id": face_id,
                    "frames": f["frames"],
                    "first_s": round(f["first_s"], 3),
                    "last_s": round(f["last_s"], 3),
                    "dominant": max(classes, key=lambda c: (share[c], -list(classes).index(c))),
                    "share": share,
                }
            )
        return out


def plot_tracks(classes: Sequence[str], tracks: dict[int, dict[str, np.ndarray]], stem: Path, title: str) -> list[Path]:
    """One PNG per face, ``<stem>.face<ID>.png``: each class's probability against seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for face_id, s in tracks.items():
        fig, ax = plt.subplots(figsize=(8, 3.5))
        try:
            order = np.argsort(s["time_s"], kind="stable")
            t, p = s["time_s"][order], s["probs"][order]
            steps = np.diff(t)
            if (
                len(steps)
                and (gaps := np.flatnonzero(steps > 1.5 * np.median(steps[steps > 0] if (steps > 0).any() else 1))).size
            ):
                # the face was absent: break its lines there instead of drawing across
                t = np.insert(t, gaps + 1, np.nan)
                p = np.insert(p, gaps + 1, np.nan, axis=0)
            for k, c in enumerate(classes):
                ax.plot(t, p[:, k], marker="." if len(order) < 50 else None, label=c)
            ax.set_xlabel("time (s)")
            ax.set_ylabel("probability")
            ax.set_ylim(0, 1)
            ax.set_title(f"{title}: face {face_id}")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
            fig.tight_layout()
            path = stem.with_name(f"{stem.name}.face{face_id}.png")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=80, format="png")
            written.append(path)
        finally:
            plt.close(fig)
    return written
