"""Classify the faces of a video, streamed: the video half of :func:`fertool.deploy.predict.predict_paths`.

Frames are read one at a time, every ``every``-th frame is searched for faces, and at most
``batch_size`` faces plus a bounded frame buffer (``max_buffer_bytes``, only when annotated
copies are written) are held at once, so memory does not grow with the video's length.
Frames that are not searched are only grabbed, not decoded, unless they are written out.
Each face gets a track id (:class:`~fertool.deploy.tracking.Tracker`) and, with ``smooth``
> 0, its track's averaged probabilities (:class:`~fertool.deploy.tracking.Smoother`).

With an output folder, a video gives ``<stem>.mp4`` (annotated, mp4v, renamed into place
at the end), ``<stem>.csv`` (one row per face per searched frame, written as it goes),
``<stem>.face<ID>.png`` per tracked face and ``<stem>.summary.json``.  A video that fails
or is interrupted part-way leaves no temporary mp4 behind (the ``finally`` of
:meth:`VideoPredictor.__call__`), and no CSV when it had no face.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2

# FFmpeg's own log lines ("moov atom not found") are noise: a bad video is reported as an
# InputProblem naming the file. OpenCV reads this when its FFmpeg backend first starts (so
# here, on import, before any capture or writer; predict.py imports this module); a value
# the user set wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
import numpy as np

from ..errors import DataError
from ..files import atomic_path
from ..progress import Progress
from . import file_mode
from .results import (
    BatchClassifier,
    Event,
    FaceResult,
    InputDone,
    InputProblem,
    PendingFaces,
    annotate,
    classify_pending,
    label_counts,
)
from .tracking import FrameTable, Smoother, Tally, Tracker, plot_tracks, read_table

__all__ = ["VideoPredictor"]


@dataclass
class _VideoState:
    """What the batches of one video have added up to so far."""

    smoother: Smoother  # each track's averaged probabilities (tau 0: off)
    table: FrameTable | None = None  # the per-frame CSV, with an output folder
    faces: int = 0  # faces classified
    labels: dict[str, int] = field(default_factory=dict)  # faces per shown label
    tally: Tally = field(default_factory=Tally)  # labels per track: the summary
    last: list[FaceResult] = field(default_factory=list)  # the last searched frame's faces, drawn until the next


@dataclass
class VideoPredictor:
    """Yields the events of one video per call: ``predictor(path, root)``.

    ``faces_of(image, path, frame)`` finds and prepares the faces of a frame; ``names(path,
    root, ".mp4")`` gives the annotated copy's path (None: nothing is written); ``every``:
    search every N-th frame; ``progress(done, total, description=...)`` counts frames;
    ``smooth``: the :class:`~fertool.deploy.tracking.Smoother`'s seconds; ``max_missed``:
    searched frames a track survives without its face.
    """

    classifier: BatchClassifier
    faces_of: Callable[[np.ndarray, str, int | None], PendingFaces]
    every: int
    names: Callable[[Path, Path | None, str], Path] | None
    progress: Progress | None
    max_buffer_bytes: int
    smooth: float = 0.0
    max_missed: int = 10

    def __call__(self, path: Path, root: Path | None) -> Iterator[Event]:
        """The faces of video ``path`` (found under the folder ``root``, or None), then its
        :class:`InputDone`; an :class:`InputProblem` if it cannot be read or holds no face."""
        started, building = time.perf_counter(), self.classifier.build_seconds
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cap.release()
            yield InputProblem(str(path), "not a video OpenCV can open (corrupt or another kind of file)")
            return
        out_path = self.names(path, root, ".mp4") if self.names is not None else None
        tmp: Path | None = None
        writer = None
        state = _VideoState(Smoother(self.smooth))
        tracker = Tracker(max_missed=self.max_missed)
        searched = 0
        index = 0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        total = total if total > 0 else None
        fps = cap.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and fps > 0 else 25.0
        pending: list[tuple[int, np.ndarray | None, PendingFaces | None]] = []
        n_faces = n_bytes = 0
        try:
            if out_path is not None:
                state.table = FrameTable(out_path.with_suffix(".csv"), self.classifier.class_names)
            while True:
                search = index % self.every == 0
                if search or out_path is not None:
                    ok, frame = cap.read()
                else:
                    ok, frame = cap.grab(), None  # skipped frames are not decoded
                if not ok:
                    break
                if out_path is not None and writer is None:
                    out_path.parent.mkdir(parents=True, exist_ok=True)
                    fd, name = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".tmp.mp4", dir=out_path.parent)
                    os.close(fd)
                    tmp = Path(name)
                    h, w = frame.shape[:2]
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    if not writer.isOpened():
                        raise DataError(f"{out_path}: OpenCV cannot write an mp4v video here")
                work = None
                if search:
                    searched += 1
                    work = self.faces_of(frame, str(path), index)
                    work.ids, work.time_s = tracker.update(work.boxes), index / fps
                    n_faces += len(work.boxes)
                if out_path is not None:
                    pending.append((index, frame, work))
                    n_bytes += frame.nbytes
                elif work is not None and work.boxes:
                    pending.append((index, None, work))
                index += 1
                if self.progress is not None:
                    self.progress(index, total, description=path.name)
                if n_faces >= self.classifier.batch_size or n_bytes >= self.max_buffer_bytes:
                    yield from self._flush(pending, writer, state)
                    pending, n_faces, n_bytes = [], 0, 0
            yield from self._flush(pending, writer, state)
            if writer is not None:
                writer.release()
                writer = None
        except DataError as exc:
            yield InputProblem(str(path), str(exc))
            return
        finally:
            cap.release()
            if writer is not None:
                writer.release()
            if tmp is not None and (state.faces == 0 or writer is not None):
                tmp.unlink(missing_ok=True)
            if state.table is not None:
                state.table.close()
                if state.faces == 0:
                    state.table.path.unlink(missing_ok=True)
        if index == 0:
            yield InputProblem(str(path), "no frame could be decoded (corrupt or not a video)")
            return
        if state.faces == 0:
            yield InputProblem(
                str(path), f"no face found in any of the {searched} searched frames (every {self.every})"
            )
            return
        written = plots = None
        summary = state.tally.summary(self.classifier.class_names)
        if tmp is not None and out_path is not None:
            os.chmod(tmp, file_mode())
            os.replace(tmp, out_path)
            written = str(out_path)
        if state.table is not None:
            classes, tracks = read_table(state.table.path)
            try:
                plots = tuple(str(p) for p in plot_tracks(classes, tracks, state.table.path.with_suffix(""), path.name))
                with atomic_path(state.table.path.with_suffix(".summary.json")) as tmp_json:
                    tmp_json.write_text(
                        json.dumps(
                            {"video": str(path), "fps": fps, "frames": index, "searched": searched, "faces": summary},
                            indent=2,
                        )
                        + "\n"
                    )
            except OSError as exc:
                yield InputProblem(str(path), f"cannot write the plots or summary ({exc.strerror or exc})")
                return
        yield InputDone(
            str(path),
            "video",
            state.faces,
            frames=searched,
            output=written,
            labels=state.labels,
            table=str(state.table.path) if state.table is not None else None,
            plots=plots or (),
            summary=tuple(summary),
            frames_read=index,
            seconds=time.perf_counter() - started - (self.classifier.build_seconds - building),
        )

    def _flush(
        self,
        pending: list[tuple[int, np.ndarray | None, PendingFaces | None]],
        writer: cv2.VideoWriter | None,
        state: _VideoState,
    ) -> Iterator[Event]:
        classify_pending(self.classifier, [w for _, _, w in pending if w is not None])
        names = self.classifier.class_names
        for _, frame, work in pending:
            if work is not None:  # a searched frame: its faces replace the previous ones
                results = []
                for r, face_id in zip(work.results, work.ids or [None] * len(work.results)):
                    shown = r.tta_probs if r.tta_probs is not None else r.probs
                    if face_id is not None and state.smoother.tau > 0:
                        p = state.smoother(face_id, work.time_s, np.array([shown[c] for c in names]))
                        d, label = {c: float(v) for c, v in zip(names, p)}, names[int(np.argmax(p))]
                        r = (
                            replace(r, tta_probs=d, tta_label=label, smoothed=True)
                            if r.tta_probs is not None
                            else replace(r, probs=d, label=label, smoothed=True)
                        )
                    results.append(replace(r, face_id=face_id, time_s=work.time_s))
                work.results = results
                state.last = results
                state.faces += len(results)
                for label, n in label_counts(results).items():
                    state.labels[label] = state.labels.get(label, 0) + n
                for r in results:
                    state.tally.add(r.face_id, r.time_s, r.best[0])
                if state.table is not None and results:
                    state.table.add(
                        (
                            r.path,
                            r.frame,
                            r.time_s,
                            r.face_id,
                            r.box,
                            r.best[0],
                            [(r.tta_probs if r.tta_probs is not None else r.probs)[c] for c in names],
                        )
                        for r in results
                    )
                yield from results
            if writer is not None and frame is not None:
                writer.write(annotate(frame, state.last))
