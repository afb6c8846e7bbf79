"""FER+ labels: the FER2013 images re-labelled by ten annotators (Barsoum et al., 2016).

The FER+ label file (``fer2013new.csv`` of github.com/microsoft/FERPlus) has one row per
row of the FER2013 CSV, in the same order::

    Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
    Training,fer0000000.png,4,0,0,1,3,2,0,0,0,0

The ten numbers are vote counts.  The pixels stay those of FER2013; only the labels
change, and the class set becomes the eight emotion columns (:data:`FERPLUS_CLASSES`,
in the file's column order).

Label modes (section 3 of the FER+ paper):

* ``majority``: the most-voted of the ten columns.  A row is dropped when that is
  ``unknown`` or ``NF`` (not a face), when two columns tie for the most votes, or when
  nobody voted.  This is the common plurality rule; the FER+ repository's own
  ``majority`` mode also asks for more than half of the votes, which is not done here.
* ``probability``: the same rows are kept (the ``majority`` label is what evaluation
  compares the arg-max with); training uses the vote distribution over the eight
  emotions as a soft target (cross-entropy against it).  The single-vote outlier
  removal of the FER+ repository is not applied.
"""

from __future__ import annotations

import csv as _csv
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .csv import SPLITS, read_error

#: The eight FER+ emotions, in the label file's column order (the model's output order).
FERPLUS_CLASSES: tuple[str, ...] = (
    "Neutral", "Happiness", "Surprise", "Sadness", "Anger", "Disgust", "Fear", "Contempt",
)
#: The label file's vote columns: the eight emotions, then the two "no emotion" columns.
VOTE_COLUMNS: tuple[str, ...] = tuple(c.lower() for c in FERPLUS_CLASSES) + ("unknown", "nf")
LABEL_MODES = ("majority", "probability")
#: Why a row has no label (``FerPlusLabels.reasons``).
DROP_REASONS = ("no votes", "tied", "unknown", "not a face")

_IMAGE_NAME = re.compile(r"fer(\d+)\.png", re.IGNORECASE)


@dataclass(frozen=True)
class FerPlusLabels:
    """The parsed label file: one entry per FER2013 row (index = the CSV's data row)."""

    path: Path
    sha256: str
    votes: np.ndarray  # (N, 10) int64, columns VOTE_COLUMNS
    splits: np.ndarray  # (N,) int8 codes into SPLITS (the file's Usage column)
    labels: np.ndarray  # (N,) int64 majority label into FERPLUS_CLASSES, -1 = dropped
    reasons: np.ndarray  # (N,) int8 index into DROP_REASONS, -1 = kept

    def __len__(self) -> int:
        return len(self.labels)

    def dropped(self) -> dict:
        """How many rows were dropped, by reason, and which (0-based data rows)."""
        rows = np.flatnonzero(self.labels < 0)
        by_reason = {reason: int((self.reasons == i).sum()) for i, reason in enumerate(DROP_REASONS)}
        return {"count": len(rows), "by_reason": by_reason, "rows": rows.tolist()}


def majority_labels(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 10) vote counts -> (labels (N,) into the 8 emotions or -1, reasons (N,) or -1)."""
    votes = np.asarray(votes, dtype=np.int64)
    top = votes.max(axis=1)
    winner = votes.argmax(axis=1)
    tied = (votes == top[:, None]).sum(axis=1) > 1
    reasons = np.full(len(votes), -1, np.int8)
    reasons[winner == len(FERPLUS_CLASSES)] = DROP_REASONS.index("unknown")
    reasons[winner == len(FERPLUS_CLASSES) + 1] = DROP_REASONS.index("not a face")
    reasons[tied] = DROP_REASONS.index("tied")
    reasons[top == 0] = DROP_REASONS.index("no votes")
    labels = np.where(reasons < 0, winner, -1).astype(np.int64)
    return labels, reasons


def vote_distribution(votes: np.ndarray) -> np.ndarray:
    """(N, >= 8) vote counts -> float32 (N, 8): the emotion votes normalised to sum 1.

    Rows without any emotion vote get all zeros (such rows are dropped by
    :func:`majority_labels` anyway).
    """
    emotions = np.asarray(votes, dtype=np.float64)[:, : len(FERPLUS_CLASSES)]
    total = emotions.sum(axis=1, keepdims=True)
    return np.divide(emotions, total, out=np.zeros_like(emotions), where=total > 0).astype(np.float32)


def read_ferplus(path: str | os.PathLike) -> FerPlusLabels:
    """Read and check a FER+ label file; every problem names ``FILE:LINE``.

    Checked: the header has ``Usage``, ``Image name`` and the ten vote columns
    (case-insensitive, any order); votes are integers >= 0; Usage is a FER2013 split;
    an image name, when present, is ``fer<row>.png`` for this very row (else the file
    is not in the order of the FER2013 CSV).  The row count against the CSV is checked
    by :func:`fertool.data.prepare.prepare`, which reads both.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise read_error(path, exc, expected="the FER+ label file (fer2013new.csv)",
                         missing=" (the FER+ label file, fer2013new.csv)") from None
    lines = raw.decode("utf-8-sig", errors="replace").splitlines()  # a byte-order mark is not part of "Usage"
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty file; expected a header 'Usage,Image name,{','.join(VOTE_COLUMNS)}'")
    header = [h.strip().lower() for h in next(_csv.reader([lines[0]]))]
    missing = [c for c in ("usage", "image name", *VOTE_COLUMNS) if c not in header]
    if missing:
        raise DataError(
            f"{path}:1: not a FER+ label file: missing column(s) {', '.join(missing)} "
            f"(expected Usage, Image name, {', '.join(VOTE_COLUMNS)})"
        )
    usage_col, name_col = header.index("usage"), header.index("image name")
    vote_cols = [header.index(c) for c in VOTE_COLUMNS]
    votes: list[list[int]] = []
    splits: list[int] = []
    row = 0
    for line_no, fields in enumerate(_csv.reader(lines[1:]), start=2):
        if not fields or not any(f.strip() for f in fields):
            continue
        where = f"{path}:{line_no}"
        if len(fields) != len(header):
            raise DataError(f"{where}: expected {len(header)} fields, got {len(fields)}")
        usage = fields[usage_col].strip()
        if usage not in SPLITS:
            raise DataError(f"{where}: unknown Usage '{usage}' (expected {', '.join(SPLITS)})")
        name = fields[name_col].strip()
        if name:
            match = _IMAGE_NAME.fullmatch(name)
            if match is None:
                raise DataError(f"{where}: image name '{name}' is not fer<row>.png")
            if int(match.group(1)) != row:
                raise DataError(
                    f"{where}: image name '{name}' belongs to FER2013 row {int(match.group(1))}, but this is "
                    f"row {row}: the label file is not in the order of the FER2013 CSV"
                )
        try:
            counts = [int(fields[c]) for c in vote_cols]
        except ValueError:
            raise DataError(f"{where}: vote counts must be integers, got {[fields[c] for c in vote_cols]}") from None
        if min(counts) < 0:
            raise DataError(f"{where}: vote counts must be >= 0, got {counts}")
        votes.append(counts)
        splits.append(SPLITS.index(usage))
        row += 1
    if not votes:
        raise DataError(f"{path}: no data rows after the header (line 1)")
    votes_arr = np.asarray(votes, dtype=np.int64)
    labels, reasons = majority_labels(votes_arr)
    return FerPlusLabels(path=path, sha256=hashlib.sha256(raw).hexdigest(), votes=votes_arr,
                         splits=np.asarray(splits, np.int8), labels=labels, reasons=reasons)


__all__ = ("FERPLUS_CLASSES", "VOTE_COLUMNS", "LABEL_MODES", "DROP_REASONS", "FerPlusLabels", "majority_labels",
           "vote_distribution", "read_ferplus")
