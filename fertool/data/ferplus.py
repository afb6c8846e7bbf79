"""FER+ labels: the FER2013 images re-labelled by ten annotators (Barsoum et al., 2016).

The FER+ label file (``fer2013new.csv`` of github.com/microsoft/FERPlus) has one row per
row of the FER2013 CSV, in the same order::

    Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
    Training,fer0000000.png,4,0,0,1,3,2,0,0,0,0

The ten numbers are vote counts.  The pixels stay those of FER2013; only the labels
change, and the class set becomes the eight emotion columns (:data:`FERPLUS_CLASSES`,
in the file's column order).

Label modes (section 3 of the FER+ paper; the rules are those of the FER+ repository's
``src/ferplus.py``, ``FERPlusReader._process_data`` and ``load_folders``):

* ``majority`` (FER+'s rule): votes of 1 are set to 0 as outliers; the row keeps the
  most-voted column only if it has more than half of the remaining votes, and is
  dropped when it has not, or when that column is ``unknown`` or ``NF``.
* ``crossentropy`` (FER+'s rule): after the same outlier removal the most-voted columns
  are taken, a vote count at a time (ties together), until 75% of the votes are covered
  or three columns are taken; ``unknown``/``NF`` stop the taking; the row is dropped when
  50% or less of the votes are taken or more than three columns tie, or when the top
  column is ``unknown``/``NF``.  Training targets are the taken emotions' votes,
  normalised; the row's label (evaluation, class folder) is their arg-max.
* ``plurality`` (fertool's earlier rule, not FER+'s): the most-voted of the ten columns,
  dropped when that is ``unknown``/``NF``, tied, or nobody voted; no outlier removal.

In every mode, rows whose ``Image name`` is empty are dropped: FER+ made no image of
them.  In the FER+ modes the PublicTest and PrivateTest rows always get the ``majority``
label, as FER+'s ``train.py`` reads its validation and test sets; ``plurality`` applies
its rule to every split.  FER+'s ``probability`` mode (a one-hot label drawn from the
``crossentropy`` distribution at every batch) is not offered.

The rows are paired with the FER2013 CSV by position, as FER+'s
``generate_training_data.py`` pairs them: the numbers in the image names skip the
dropped rows (0-based row 60 is ``fer0000059.png``) and are not row indices.
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
    "Neutral",
    "Happiness",
    "Surprise",
    "Sadness",
    "Anger",
    "Disgust",
    "Fear",
    "Contempt",
)
#: The label file's vote columns: the eight emotions, then the two "no emotion" columns.
VOTE_COLUMNS: tuple[str, ...] = tuple(c.lower() for c in FERPLUS_CLASSES) + ("unknown", "nf")
LABEL_MODES = ("majority", "crossentropy", "plurality")
#: Label modes that train against a distribution (the manifest's votes column).
SOFT_MODES = ("crossentropy", "probability")  # "probability": folders prepared by fertool <= this change
#: Why a row has no label (``FerPlusLabels.reasons``).
DROP_REASONS = ("no FER+ image", "no majority", "too spread", "unknown", "not a face", "no votes", "tied")
#: Which rule labels each split in a label mode (FER+ evaluates on majority labels).
SPLIT_RULES = {
    "majority": {"Training": "majority", "PublicTest": "majority", "PrivateTest": "majority"},
    "crossentropy": {"Training": "crossentropy", "PublicTest": "majority", "PrivateTest": "majority"},
    "plurality": {"Training": "plurality", "PublicTest": "plurality", "PrivateTest": "plurality"},
}
_UNKNOWN, _NF = len(FERPLUS_CLASSES), len(FERPLUS_CLASSES) + 1

_IMAGE_NAME = re.compile(r"fer(\d+)\.png", re.IGNORECASE)


@dataclass(frozen=True)
class FerPlusLabels:
    """The parsed label file: one entry per FER2013 row (index = the CSV's data row)."""

    path: Path
    sha256: str
    votes: np.ndarray  # (N, 10) int64, columns VOTE_COLUMNS
    splits: np.ndarray  # (N,) int8 codes into SPLITS (the file's Usage column)
    labels: np.ndarray  # (N,) int64 label of ``mode`` into FERPLUS_CLASSES, -1 = dropped
    reasons: np.ndarray  # (N,) int8 index into DROP_REASONS, -1 = kept
    mode: str = "majority"
    targets: np.ndarray | None = None  # (N, 8) int64 vote counts trained against (the mode's), or None
    named: np.ndarray | None = None  # (N,) bool: the row has an image name

    def __len__(self) -> int:
        return len(self.labels)

    def dropped(self) -> dict:
        """How many rows were dropped, by reason (overall and per split, with the rule that
        labelled the split), and which (0-based data rows)."""
        rows = np.flatnonzero(self.labels < 0)
        by_reason = {reason: int((self.reasons == i).sum()) for i, reason in enumerate(DROP_REASONS)}
        per_split = {}
        for code, split in enumerate(SPLITS):
            here = self.splits == code
            if here.any():
                per_split[split] = {
                    "rule": SPLIT_RULES[self.mode][split],
                    "rows": int(here.sum()),
                    "kept": int((here & (self.labels >= 0)).sum()),
                    "dropped": {
                        reason: n
                        for i, reason in enumerate(DROP_REASONS)
                        if (n := int((here & (self.reasons == i)).sum()))
                    },
                }
        return {"count": len(rows), "by_reason": by_reason, "per_split": per_split, "rows": rows.tolist()}


def ferplus_majority(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FER+'s ``majority`` rule: (N, 10) votes -> (labels or -1, reasons or -1).

    Votes of 1 are outliers (set to 0); the arg-max column (the first of equals, as
    ``np.argmax`` in FER+) is kept when it has more than half of the remaining votes
    and is an emotion."""
    votes = np.where(np.asarray(votes, dtype=np.int64) <= 1, 0, votes).astype(np.int64)
    winner = votes.argmax(axis=1)
    top = votes.max(axis=1)
    reasons = np.full(len(votes), -1, np.int8)
    reasons[winner == _UNKNOWN] = DROP_REASONS.index("unknown")
    reasons[winner == _NF] = DROP_REASONS.index("not a face")
    reasons[~(2 * top > votes.sum(axis=1))] = DROP_REASONS.index("no majority")
    labels = np.where(reasons < 0, winner, -1).astype(np.int64)
    return labels, reasons


def _crossentropy_row(raw: list[int]) -> tuple[list[int], bool]:
    """FER+'s ``crossentropy``/``probability`` processing of one row's ten vote counts:
    (the taken counts, ten columns; whether the row is kept as a distribution)."""
    votes = [v if v > 1 else 0 for v in raw]  # outlier removal: single votes
    total = sum(votes)
    taken = [0] * len(votes)
    part, count, valid = 0, 0, True
    while part < 0.75 * total and count < 3 and valid:
        top = max(votes)
        for i in range(len(votes)):
            if votes[i] == top:
                taken[i] = top
                votes[i] = 0
                part += top
                count += 1
                if i >= _UNKNOWN:  # unknown or NF shares the top count: stop taking
                    valid = False
                    if sum(taken) > top:  # emotions were taken before it: leave it out
                        taken[i] = 0
                        count -= 1
                    break
    if sum(taken) <= 0.5 * total or count > 3:
        return taken, False
    return taken, True


def ferplus_crossentropy(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FER+'s ``crossentropy`` rule: (N, 10) votes -> (labels or -1, reasons or -1,
    (N, 8) taken emotion vote counts, the training target before normalising)."""
    votes = np.asarray(votes, dtype=np.int64)
    labels = np.full(len(votes), -1, np.int64)
    reasons = np.full(len(votes), -1, np.int8)
    targets = np.zeros((len(votes), len(FERPLUS_CLASSES)), np.int64)
    for n, raw in enumerate(votes.tolist()):
        taken, kept = _crossentropy_row(raw)
        if not kept:  # FER+ then labels the row 'unknown'
            reasons[n] = DROP_REASONS.index("too spread")
            continue
        winner = int(np.argmax(taken))
        if winner >= _UNKNOWN:
            reasons[n] = DROP_REASONS.index("unknown" if winner == _UNKNOWN else "not a face")
            continue
        labels[n] = winner
        targets[n] = taken[: len(FERPLUS_CLASSES)]
    return labels, reasons, targets


def mode_labels(
    votes: np.ndarray, splits: np.ndarray, mode: str, named: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels of a label mode (:data:`SPLIT_RULES` says which rule labels which split):
    (labels or -1, reasons or -1, (N, 8) training-target vote counts)."""
    if mode not in SPLIT_RULES:
        raise ValueError(f"label mode {mode!r} is not one of {', '.join(LABEL_MODES)}")
    votes = np.asarray(votes, dtype=np.int64)
    splits = np.asarray(splits)
    labels = np.full(len(votes), -1, np.int64)
    reasons = np.full(len(votes), -1, np.int8)
    targets = np.zeros((len(votes), len(FERPLUS_CLASSES)), np.int64)
    for code, split in enumerate(SPLITS):
        rows = np.flatnonzero(splits == code)
        if not len(rows):
            continue
        rule = SPLIT_RULES[mode][split]
        if rule == "crossentropy":
            lab, why, tgt = ferplus_crossentropy(votes[rows])
        else:
            lab, why = (ferplus_majority if rule == "majority" else majority_labels)(votes[rows])
            tgt = np.zeros((len(rows), len(FERPLUS_CLASSES)), np.int64)
            tgt[lab >= 0, lab[lab >= 0]] = 1  # one-hot: majority targets are the label itself
        labels[rows], reasons[rows], targets[rows] = lab, why, tgt
    if named is not None:  # FER+ made no image of these rows
        unnamed = ~np.asarray(named, bool)
        labels[unnamed], reasons[unnamed], targets[unnamed] = -1, DROP_REASONS.index("no FER+ image"), 0
    return labels, reasons, targets


def majority_labels(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``plurality`` rule (not FER+'s): (N, 10) vote counts -> (labels (N,) into the
    8 emotions or -1, reasons (N,) or -1)."""
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


def read_ferplus(path: str | os.PathLike, mode: str = "majority") -> FerPlusLabels:
    """Read and check a FER+ label file, labelled in label ``mode``; every problem names
    ``FILE:LINE``.

    Checked: the header has ``Usage``, ``Image name`` and the ten vote columns
    (case-insensitive, any order); votes are integers >= 0; Usage is a FER2013 split;
    an image name, when present, is ``fer<number>.png``.  Rows pair with the FER2013 CSV
    by position (the names' numbers skip the rows FER+ dropped, so they are not row
    indices); the row count and the Usage of every row against the CSV are checked by
    :func:`fertool.data.prepare.prepare`, which reads both.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise read_error(
            path, exc, expected="the FER+ label file (fer2013new.csv)", missing=" (the FER+ label file, fer2013new.csv)"
        ) from None
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
    named: list[bool] = []
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
                raise DataError(f"{where}: image name '{name}' is not fer<number>.png")
        try:
            counts = [int(fields[c]) for c in vote_cols]
        except ValueError:
            raise DataError(f"{where}: vote counts must be integers, got {[fields[c] for c in vote_cols]}") from None
        if min(counts) < 0:
            raise DataError(f"{where}: vote counts must be >= 0, got {counts}")
        votes.append(counts)
        splits.append(SPLITS.index(usage))
        named.append(bool(name))
    if not votes:
        raise DataError(f"{path}: no data rows after the header (line 1)")
    votes_arr, splits_arr, named_arr = np.asarray(votes, np.int64), np.asarray(splits, np.int8), np.asarray(named)
    labels, reasons, targets = mode_labels(votes_arr, splits_arr, mode, named_arr)
    return FerPlusLabels(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        votes=votes_arr,
        splits=splits_arr,
        labels=labels,
        reasons=reasons,
        mode=mode,
        targets=targets,
        named=named_arr,
    )


__all__ = (
    "FERPLUS_CLASSES",
    "VOTE_COLUMNS",
    "LABEL_MODES",
    "SOFT_MODES",
    "DROP_REASONS",
    "SPLIT_RULES",
    "FerPlusLabels",
    "majority_labels",
    "ferplus_majority",
    "ferplus_crossentropy",
    "mode_labels",
    "vote_distribution",
    "read_ferplus",
)
