"""The authors' FER2013 split files (``data_train.csv``, ``data_val.csv``, ``data_test.csv``).

Their ``Download_Data.py`` fetches FER2013 as three files in a format of their own, read by
``get_data`` in their ``Lib/Utils.py``: ``;``-separated, a header line, the label in the first
column, the second column unused, and the 2,304 pixels one per column from the third column
on (2,306 fields a line).  ``data_train`` is the Training split, ``data_val`` PublicTest (the
paper's validation set) and ``data_test`` PrivateTest (its test set).

fertool reads them by converting them, once, into one CSV of Kaggle's ``fer2013.csv`` layout
(``emotion,pixels,Usage``) in the cache (``cache_dir()/converted/``, named by the sha256 of
the inputs), which every command then reads like any FER2013 CSV.  Each row is validated on the
way with the same checks as the other layouts; a bad row is reported as ``FILE:LINE`` of the
authors' file it came from.  The same pixels therefore give the same prepared images, byte for
byte, as the Kaggle file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import DataError, printable
from ..files import atomic_path
from ..progress import Progress
from .csv import PIXELS, SPLITS, BadRow, Layout, RawChunk, bad_rows_error, parse_chunk

__all__ = ["SPLIT_FILES", "is_split_source", "check_split_file", "split_files", "to_kaggle_csv"]

#: File name -> the FER2013 Usage its rows belong to.
SPLIT_FILES = {"data_train.csv": "Training", "data_val.csv": "PublicTest", "data_test.csv": "PrivateTest"}
FIELDS = 2 + PIXELS
_KAGGLE = Layout("fer2013", ("emotion", "pixels", "Usage"), 0, 1, 2)
_CHUNK = 256


def _first_line(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.readline(1 << 16)
    except OSError:
        return b""


def _is_split_header(line: bytes) -> bool:
    return line.count(b";") == FIELDS - 1


def check_split_file(path: str | os.PathLike) -> None:
    """Raise :class:`DataError` unless ``path`` starts with the authors' header (2,306 ``;`` fields)."""
    path = Path(path)
    line = _first_line(path)
    if not _is_split_header(line):
        n = line.count(b";") + 1 if line else 0
        raise DataError(
            f"{path}:1: not the authors' split format: expected a header of {FIELDS} ';'-separated "
            f"fields (label, unused, {PIXELS} pixels), found {n}"
        )


def is_split_source(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of the authors' split files or a folder holding them."""
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in SPLIT_FILES)
    return path.is_file() and _is_split_header(_first_line(path))


def split_files(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(file, Usage)`` of a folder (the three files) or of one split file (its own split)."""
    path = Path(path)
    if path.is_dir():
        found = [(path / name, usage) for name, usage in SPLIT_FILES.items() if (path / name).is_file()]
        missing = [name for name in SPLIT_FILES if not (path / name).is_file()]
        if missing:
            raise DataError(
                f"{path}: the authors' split files are incomplete: {', '.join(missing)} missing "
                f"(expected {', '.join(SPLIT_FILES)})"
            )
        return found
    usage = SPLIT_FILES.get(path.name)
    if usage is None:
        raise DataError(
            f"{path}: an authors' split file must be named {', '.join(SPLIT_FILES)} (the name says its split)"
        )
    return [(path, usage)]


def _convert_file(
    path: Path,
    usage: str,
    out,
    bad: list[tuple[Path, BadRow]],
    counts: dict,
    progress: Progress | None,
    done: list[int],
    total: int,
) -> None:
    check_split_file(path)
    suffix = b"," + usage.encode()
    rows, lines, data = [], [], []

    def flush() -> None:
        parsed = parse_chunk(_KAGGLE, RawChunk(rows, lines, data))
        bad.extend((path, b) for b in parsed.bad)
        good = set(parsed.rows.tolist())
        for row, line in zip(rows, data):
            if row in good:
                out.write(line + b"\n")
        counts[usage] = counts.get(usage, 0) + len(good)
        rows.clear(), lines.clear(), data.clear()

    row = 0
    with open(path, "rb", buffering=1 << 20) as fh:
        fh.readline()
        for line_no, raw in enumerate(fh, start=2):
            done[0] += len(raw)
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            fields = raw.split(b";")
            if len(fields) != FIELDS:
                bad.append(
                    (
                        path,
                        BadRow(
                            row,
                            line_no,
                            f"expected {FIELDS} ';'-separated fields "
                            f"(label, unused, {PIXELS} pixels), got {len(fields)}",
                        ),
                    )
                )
                row += 1
                continue
            rows.append(row)
            lines.append(line_no)
            data.append(fields[0].strip() + b"," + b" ".join(f.strip() for f in fields[2:]) + suffix)
            row += 1
            if len(data) >= _CHUNK:
                flush()
                if progress is not None:
                    progress(done[0], total, description="converting the authors' split files", unit="B")
    if data:
        flush()


def to_kaggle_csv(source: str | os.PathLike, cache: str | os.PathLike, progress: Progress | None = None) -> Path:
    """The authors' split files (a folder of the three, or one file) as one Kaggle-layout CSV.

    Written once under ``cache`` (named by the sha256 of the inputs) and reused; bad rows
    raise one :class:`DataError` listing them as ``FILE:LINE: problem`` of the authors' files,
    and nothing is written.
    """
    files = split_files(source)
    digest = hashlib.sha256()
    for path, usage in files:
        check_split_file(path)
        digest.update(usage.encode())
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    target = Path(cache) / f"fer2013-split-{digest.hexdigest()[:16]}.csv"
    if target.is_file():
        return target
    total = sum(p.stat().st_size for p, _ in files)
    bad: list[tuple[Path, BadRow]] = []
    counts: dict[str, int] = {}
    done = [0]
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            out.write(b"emotion,pixels,Usage\n")
            for path, usage in files:
                _convert_file(path, usage, out, bad, counts, progress, done, total)
        if bad:
            by_file: dict[Path, list[BadRow]] = {}
            for path, b in bad:
                by_file.setdefault(path, []).append(b)
            raise DataError("\n".join(str(bad_rows_error(p, rows)) for p, rows in by_file.items()))
        empty = [f"{p} ({u})" for p, u in files if not counts.get(u)]
        if empty:
            raise DataError(f"no data rows after the header in {', '.join(printable(e) for e in empty)}")
    if progress is not None:
        progress(total, total, description="converting the authors' split files", unit="B")
    return target


assert set(SPLIT_FILES.values()) == set(SPLITS)
