"""Reading the FER2013 CSV variants (docs/protocol.md §1), streamed and validated.

(Kept as one file: the layouts, the byte-range streaming that ``prepare``'s workers
share and the row validation are one format's reader and change together.)

Supported layouts, detected from the header (column names are compared without
surrounding spaces and without case):

* ``fer2013``: Kaggle ``fer2013.csv``, ``emotion,pixels,Usage``;
* ``icml``: ``icml_face_data.csv``, ``emotion, Usage, pixels`` (leading spaces);
* ``train``: the competition's ``train.csv``, ``emotion,pixels``; every row is Training.

The competition's ``test.csv`` (``pixels`` only) has no labels and is refused.

Lines end in LF or CRLF, or in CR alone (files saved by classic Mac OS tools): the line
ending is detected from the first line and kept in :attr:`Layout.newline`.  Compressed
files (gzip, zip, bzip2, xz) are refused with a message saying to decompress them (the
reader hands byte ranges of the file to worker processes, which a compressed stream
cannot offer).

A *data row* is every non-blank line after the header; ``row`` is its 0-based index
(bad rows keep their index, so ``row`` always points at the same CSV record) and ``line``
its 1-based line in the file, used in every message as ``FILE:LINE: problem``.

The file is read as bytes in chunks of lines and each chunk's pixel strings are parsed
at once with vectorised NumPy (:func:`parse_chunk`): about 10 µs per row instead of
~300 µs for ``np.array(s.split(), int)``.  Rows the fast path cannot vouch for go through
a slow per-row parser that also words the problem.  The same chunk functions are what
``fertool prepare`` hands to its worker processes.
"""

from __future__ import annotations

import csv as _csv
import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

from .. import CLASS_NAMES
from ..errors import DataError, printable

#: The FER2013 ``Usage`` values, in file order; index = split code.
SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
SIDE = 48
PIXELS = SIDE * SIDE
#: How many bad lines a message lists before "and N more".
BAD_LIST_LIMIT = 20

_EXPECTED_HEADERS = (
    "'emotion,pixels,Usage' (fer2013.csv)",
    "'emotion, Usage, pixels' (icml_face_data.csv)",
    "'emotion,pixels' (train.csv)",
)
_LABELS = {str(i).encode(): i for i in range(len(CLASS_NAMES))}
_USAGES = {name.encode(): code for code, name in enumerate(SPLITS)}
_INT_RE = re.compile(r"[+-]?\d+")


class Row(NamedTuple):
    """One valid data row of the CSV."""

    row: int  # 0-based data row
    line: int  # 1-based line in the file
    label: int | None  # 0..6, index into CLASS_NAMES
    usage: str | None  # one of SPLITS
    pixels: np.ndarray  # uint8 (48, 48)


class BadRow(NamedTuple):
    """A data row that failed validation, and why."""

    row: int
    line: int
    problem: str


@dataclass(frozen=True)
class SplitArrays:
    """All rows of one split, in file order."""

    images: np.ndarray  # uint8 (N, 48, 48)
    labels: np.ndarray  # int64 (N,)
    rows: np.ndarray  # int64 (N,) 0-based data rows in the CSV


@dataclass(frozen=True)
class Layout:
    """Where the columns are in a detected CSV format."""

    format: str
    header: tuple[str, ...]  # as found in the file
    label_col: int
    pixels_col: int
    usage_col: int | None  # None: every row is Training (train.csv)
    newline: bytes = b"\n"  # b"\r" for CR-only files

    @property
    def ncols(self) -> int:
        return len(self.header)


@dataclass(frozen=True)
class RawChunk:
    """Consecutive data lines, undecoded; what the reader hands to parsers/workers."""

    rows: list[int]
    lines: list[int]
    data: list[bytes]  # each line without its line ending


@dataclass(frozen=True)
class ParsedChunk:
    """The valid rows of a :class:`RawChunk` as arrays, and the bad ones."""

    rows: np.ndarray  # int64 (n,)
    lines: np.ndarray  # int64 (n,)
    labels: np.ndarray  # int64 (n,)
    splits: np.ndarray  # int8 (n,) index into SPLITS
    pixels: np.ndarray  # uint8 (n, 48, 48)
    bad: list[BadRow]
    split_counts: np.ndarray  # int64 (3,) rows read per split, kept or not (bad rows excluded)


# --------------------------------------------------------------------------- header


def _norm(name: str) -> str:
    return name.strip().lstrip("\ufeff").strip().lower()


def detect_format(header: Sequence[str], *, source: str | os.PathLike | None = None) -> str:
    """Name the FER2013 variant of a CSV from its header fields.

    Returns ``"fer2013"``, ``"icml"`` or ``"train"``.  Raises :class:`DataError` for
    ``test.csv`` (pixels only: no labels) and for any other header, naming the header
    found and the ones expected.  ``source`` (the file) prefixes the message.
    """
    return _layout(header, source=source).format


def _layout(header: Sequence[str], *, source: str | os.PathLike | None = None) -> Layout:
    where = f"{source}:1: " if source is not None else ""
    found = printable(",".join(header))
    names = [_norm(h) for h in header]
    expected = "expected one of " + ", ".join(_EXPECTED_HEADERS)
    known = {"emotion", "pixels", "usage"}
    unknown = [printable(h.strip()) for h, n in zip(header, names) if n not in known]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if not unknown and not duplicated and "pixels" in names and "emotion" not in names:
        raise DataError(
            f"{where}header '{found}' has no 'emotion' column: this looks like the competition's test.csv, "
            "which has no labels; fertool needs labelled data (fer2013.csv, icml_face_data.csv or train.csv)"
        )
    if unknown or duplicated or not names or "pixels" not in names or "emotion" not in names:
        if unknown:
            what = "unexpected column" + ("s " if len(unknown) > 1 else " ") + ", ".join(f"'{u}'" for u in unknown)
        elif duplicated:
            what = "duplicate column " + ", ".join(f"'{printable(d)}'" for d in duplicated)
        else:
            missing = [c for c in ("emotion", "pixels") if c not in names]
            what = "missing column " + ", ".join(f"'{m}'" for m in missing)
        raise DataError(f"{where}not a FER2013 CSV: header '{found}': {what}; {expected}")
    usage_col = names.index("usage") if "usage" in names else None
    if usage_col is None:
        fmt = "train"
    elif names == ["emotion", "usage", "pixels"]:
        fmt = "icml"
    else:
        fmt = "fer2013"
    return Layout(fmt, tuple(header), names.index("emotion"), names.index("pixels"), usage_col)


def _split_line(line: bytes) -> list[bytes]:
    if b'"' not in line:
        return line.split(b",")
    # Quoted fields (some exports quote the pixel string): let the csv module decide.
    text = line.decode("utf-8", errors="replace")
    try:
        fields = next(_csv.reader([text]))
    except (_csv.Error, StopIteration):
        return line.split(b",")
    return [f.encode("utf-8") for f in fields]


# --------------------------------------------------------------------------- reading


#: First bytes of compressed files, and how to decompress them.
_COMPRESSED = (
    (b"\x1f\x8b", "gzip-compressed", "gunzip -k FILE"),
    (b"PK\x03\x04", "a zip archive", "unzip FILE"),
    (b"BZh", "bzip2-compressed", "bunzip2 -k FILE"),
    (b"\xfd7zXZ\x00", "xz-compressed", "unxz -k FILE"),
)


def read_error(path: Path, exc: OSError, *, expected: str, missing: str = "") -> DataError:
    """The one-line error for an input file that cannot be opened (``expected``: what it should be)."""
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{path}: no such file{missing}")
    if isinstance(exc, IsADirectoryError):
        return DataError(f"{path}: is a directory, expected {expected}")
    return DataError(f"{path}: cannot read ({exc.strerror})")


def open_csv(path: str | os.PathLike) -> tuple[Layout, IO[bytes]]:
    """Open ``path``, read and check its header; return the layout and the open file.

    The file is positioned after the header line; iterating it (or ``readline``) gives
    lines ending in :attr:`Layout.newline`.  The caller closes it.
    """
    path = Path(path)
    try:
        fh = open(path, "rb", buffering=1 << 20)  # lines are ~9 KB: read in large blocks
    except OSError as exc:
        raise read_error(path, exc, expected="a CSV file") from None
    try:
        head = fh.peek(1 << 16)[: 1 << 16]
        for magic, what, command in _COMPRESSED:
            if head.startswith(magic):
                raise DataError(
                    f"{path}: is {what}, not a CSV; decompress it first "
                    f"({command.replace('FILE', str(path))}) and give the .csv"
                )
        newline = _detect_newline(head)
        if newline != b"\n":
            fh = _CRFile(fh)
        first = fh.readline()
        if first and not first.strip():
            raise DataError(f"{path}:1: empty first line, expected a header such as 'emotion,pixels,Usage'")
        if not first:
            raise DataError(f"{path}: empty file (no header, no data); expected a FER2013 CSV")
        text = first.decode("utf-8", errors="replace").rstrip("\r\n")
        if "\x00" in text:
            raise DataError(f"{path}: binary data in the first line; expected a FER2013 CSV (text)")
        header = next(_csv.reader([text]))
        layout = _layout(header, source=path)
        return dataclasses.replace(layout, newline=newline), fh
    except BaseException:
        fh.close()
        raise


def _detect_newline(head: bytes) -> bytes:
    """b"\r" when the first line ends in a CR that is not part of a CRLF, else b"\n"."""
    cr = head.find(b"\r")
    lf = head.find(b"\n")
    if cr >= 0 and (lf < 0 or cr < lf) and head[cr + 1 : cr + 2] != b"\n":
        return b"\r"
    return b"\n"


class _CRFile:
    """A binary file whose lines end in CR alone: ``readline`` and iteration split on CR.

    Supports what the readers use: ``readline``, iteration, ``tell``, ``seek``, ``close``.
    """

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self._buf = b""
        self._pos = 0  # next unread byte of _buf

    def readline(self) -> bytes:
        while True:
            end = self._buf.find(b"\r", self._pos)
            if end >= 0:
                line = self._buf[self._pos : end + 1]
                self._pos = end + 1
                return line
            block = self._raw.read(1 << 20)
            if not block:
                line = self._buf[self._pos :]
                self._buf, self._pos = b"", 0
                return line
            self._buf = self._buf[self._pos :] + block
            self._pos = 0

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def tell(self) -> int:
        return self._raw.tell() - (len(self._buf) - self._pos)

    def seek(self, offset: int, whence: int = 0) -> int:
        self._buf, self._pos = b"", 0
        return self._raw.seek(offset, whence)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _CRFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _blank(line: bytes) -> bool:
    return not line or line.isspace()  # isspace() stops at the first non-space byte


def iter_chunks(fh: IO[bytes], *, chunk_rows: int = 128, hasher=None) -> Iterator[RawChunk]:
    """Group the remaining lines of ``fh`` (after the header) into :class:`RawChunk`.

    Blank lines are skipped and get no row index.  ``hasher`` (a ``hashlib`` object),
    when given, is fed every byte read, so the caller can hash the file in the same pass.
    """
    rows: list[int] = []
    lines: list[int] = []
    data: list[bytes] = []
    row = 0
    for line_no, line in enumerate(fh, start=2):
        if hasher is not None:
            hasher.update(line)
        if _blank(line):
            continue
        rows.append(row)
        lines.append(line_no)
        data.append(line.rstrip(b"\r\n"))
        row += 1
        if len(data) >= chunk_rows:
            yield RawChunk(rows, lines, data)
            rows, lines, data = [], [], []
    if data:
        yield RawChunk(rows, lines, data)


@dataclass(frozen=True)
class Span:
    """A byte range of the CSV holding whole lines, and where it starts in rows and lines."""

    start: int  # byte offset of its first line
    end: int  # byte offset just after its last line
    first_row: int  # data row of its first non-blank line
    first_line: int  # 1-based line number of its first line


def iter_spans(fh: IO[bytes], *, chunk_rows: int = 128, hasher=None) -> Iterator[Span]:
    """Like :func:`iter_chunks`, but yield byte ranges instead of the lines themselves.

    A parent process can then hand out a few integers per chunk and let each worker
    read its own lines with :func:`read_span`, instead of shipping ~9 KB per row
    through a pipe.  Row and line numbering (blank lines skipped) are identical.
    """
    start = pos = fh.tell()
    first_row = row = 0
    first_line = 2
    in_chunk = 0
    for line_no, line in enumerate(fh, start=2):
        if hasher is not None:
            hasher.update(line)
        pos += len(line)
        if _blank(line):
            continue
        row += 1
        in_chunk += 1
        if in_chunk >= chunk_rows:
            yield Span(start, pos, first_row, first_line)
            start, first_row, first_line, in_chunk = pos, row, line_no + 1, 0
    if in_chunk:
        yield Span(start, pos, first_row, first_line)


def read_span(fd: int, span: Span, newline: bytes = b"\n") -> RawChunk:
    """The lines of ``span`` from the open file descriptor ``fd`` (``os.pread``)."""
    block = os.pread(fd, span.end - span.start, span.start)
    pieces = block.split(newline)
    if pieces and pieces[-1] == b"":  # the text after the last newline (none)
        pieces.pop()
    rows: list[int] = []
    lines: list[int] = []
    data: list[bytes] = []
    row = span.first_row
    for line_no, line in enumerate(pieces, start=span.first_line):
        if _blank(line):
            continue
        rows.append(row)
        lines.append(line_no)
        data.append(line.rstrip(b"\r\n"))
        row += 1
    return RawChunk(rows, lines, data)


def count_lines(path: str | os.PathLike, newline: bytes = b"\n") -> int:
    """Number of line endings in ``path`` (fast; used as a progress total)."""
    n = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            n += block.count(newline)
    return n


# --------------------------------------------------------------------------- parsing


def parse_chunk(layout: Layout, chunk: RawChunk, *, splits: Sequence[int] | None = None) -> ParsedChunk:
    """Validate and convert one chunk of raw lines.

    ``splits`` (codes into :data:`SPLITS`) keeps only rows of those splits; the
    other rows (with a valid Usage) are neither parsed further nor checked.
    """
    keep_rows: list[int] = []
    keep_lines: list[int] = []
    labels: list[int] = []
    codes: list[int] = []
    fields_px: list[bytes] = []
    bad: list[BadRow] = []
    split_counts = np.zeros(len(SPLITS), np.int64)
    ncols = layout.ncols
    for row, line_no, line in zip(chunk.rows, chunk.lines, chunk.data):
        fields = _split_line(line)
        if len(fields) != ncols:
            names = ",".join(h.strip() for h in layout.header)
            bad.append(BadRow(row, line_no, f"expected {ncols} fields ({names}), got {len(fields)}"))
            continue
        problems = []
        if layout.usage_col is None:
            code = 0
        else:
            raw_usage = fields[layout.usage_col].strip()
            code = _USAGES.get(raw_usage)
            if code is None:
                shown = printable(raw_usage.decode("utf-8", errors="replace"))
                problems.append(f"unknown Usage '{shown}' (expected {', '.join(SPLITS)})")
        if code is not None and splits is not None and code not in splits:
            split_counts[code] += 1
            continue
        raw_label = fields[layout.label_col].strip()
        label = _LABELS.get(raw_label)
        if label is None:
            problems.insert(0, _label_problem(raw_label))
        if problems:
            bad.append(BadRow(row, line_no, "; ".join(problems)))
            continue
        keep_rows.append(row)
        keep_lines.append(line_no)
        labels.append(label)
        codes.append(code)
        fields_px.append(fields[layout.pixels_col])
    pixels, ok = _parse_pixels_fast(fields_px)
    if not ok.all():
        drop = []
        for i in np.flatnonzero(~ok):
            values, problem = _parse_pixels_slow(fields_px[i])
            if problem is None:
                pixels[i] = values
            else:
                bad.append(BadRow(keep_rows[i], keep_lines[i], problem))
                drop.append(i)
        if drop:
            ok = np.ones(len(fields_px), bool)
            ok[drop] = False
            pixels = pixels[ok]
            keep_rows, keep_lines, labels, codes = (
                [v for v, k in zip(seq, ok) if k] for seq in (keep_rows, keep_lines, labels, codes)
            )
        bad.sort(key=lambda b: b.row)
    np.add.at(split_counts, np.asarray(codes, dtype=np.int64), 1)
    return ParsedChunk(
        rows=np.asarray(keep_rows, dtype=np.int64),
        lines=np.asarray(keep_lines, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        splits=np.asarray(codes, dtype=np.int8),
        pixels=pixels.reshape(-1, SIDE, SIDE),
        bad=bad,
        split_counts=split_counts,
    )


def _label_problem(raw: bytes) -> str:
    text = printable(raw.decode("utf-8", errors="replace"))
    if not text:
        return "empty emotion label (expected 0..6)"
    if _INT_RE.fullmatch(text):
        return f"unknown emotion label {int(text)} (expected 0..6: {', '.join(CLASS_NAMES)})"
    return f"emotion label '{text}' is not an integer 0..6"


def _parse_pixels_fast(fields: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Parse many pixel strings at once -> (values uint8 (n, 2304), ok bool (n,)).

    Accepts exactly what a well-formed FER2013 file holds: ASCII digits separated by
    spaces, 2304 values of at most 3 digits, each <= 255.  Rows not ``ok`` must go
    through :func:`_parse_pixels_slow` (which accepts a little more, e.g. tabs, and
    words the problem).
    """
    n = len(fields)
    out = np.zeros((n, PIXELS), np.uint8)
    if n == 0:
        return out, np.ones(0, bool)
    pad = 3  # leading spaces: every token has 3 bytes before its last digit
    lengths = np.fromiter((len(f) for f in fields), np.int64, n)
    # One buffer: the fields joined by single spaces, with a trailing space.
    buf = np.frombuffer(b" " * pad + b" ".join(fields) + b" ", np.uint8)
    row_start = np.full(n + 1, pad, np.int64)  # byte offset of each field; last = end
    np.cumsum(lengths + 1, out=row_start[1:])
    row_start[1:] += pad
    digit = buf - np.uint8(48)  # uint8 arithmetic: non-digits wrap to >= 10
    is_digit = digit < 10
    bad_row = np.zeros(n, bool)
    if np.count_nonzero(is_digit) + np.count_nonzero(buf == 32) != len(buf):
        bad_char = np.flatnonzero(~is_digit & (buf != 32))
        bad_row[np.searchsorted(row_start, bad_char, side="right") - 1] = True
    digit *= is_digit  # 0 outside tokens
    last = np.flatnonzero(is_digit[:-1] > is_digit[1:])  # last digit of each token
    first = np.flatnonzero(is_digit[1:] > is_digit[:-1]) + 1  # first digit of each token
    length = last - first + 1
    counts = np.diff(np.searchsorted(last, row_start))  # tokens per row
    bad_row |= counts != PIXELS
    # value = d[last] + 10 d[last-1] + 100 d[last-2]; digit is 0 on the separating
    # spaces, only the hundreds can reach into the previous token: mask it by length.
    value = digit[last].astype(np.int16)
    value += digit[last - 1] * np.int16(10)
    value += (digit[last - 2] * (length > 2)) * np.int16(100)
    wrong = (length > 3) | (value > 255)
    if wrong.any():
        token_row = np.searchsorted(row_start, first[wrong], side="right") - 1
        bad_row[token_row] = True
    ok = ~bad_row
    if ok.all():
        out[:] = value.reshape(n, PIXELS)
    else:
        start = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=start[1:])
        for r in np.flatnonzero(ok):
            out[r] = value[start[r] : start[r] + PIXELS]
    return out, ok


def _parse_pixels_slow(field: bytes) -> tuple[np.ndarray | None, str | None]:
    """One pixel string -> (values, None) or (None, problem in words)."""
    text = field.decode("utf-8", errors="replace")
    tokens = text.split()
    if len(tokens) != PIXELS:
        return None, f"expected {PIXELS} pixel values (48x48), got {len(tokens)}"
    problems = []
    for i, tok in enumerate(tokens, start=1):
        if not _INT_RE.fullmatch(tok):
            problems.append(f"pixel {i} is not an integer: '{printable(tok)}'")
        elif not 0 <= int(tok) <= 255:
            problems.append(f"pixel {i} out of range 0..255: {int(tok)}")
    if problems:
        more = f" (and {len(problems) - 1} more bad pixel values)" if len(problems) > 1 else ""
        return None, problems[0] + more
    return np.array([int(t) for t in tokens], dtype=np.uint8), None


# --------------------------------------------------------------------------- public readers


def format_bad(path: str | os.PathLike, bad: Sequence[BadRow], *, limit: int = BAD_LIST_LIMIT) -> list[str]:
    """``FILE:LINE: problem`` for the first ``limit`` bad rows, then ``... and N more``."""
    lines = [f"{path}:{b.line}: {b.problem}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more bad rows")
    return lines


def bad_rows_error(path: str | os.PathLike, bad: Sequence[BadRow], *, hint: str = "") -> DataError:
    """One DataError listing the bad rows (first line: how many, then one per row)."""
    head = f"{path}: {len(bad)} bad row{'s' if len(bad) != 1 else ''}{hint}:"
    return DataError("\n".join([head, *format_bad(path, bad)]))


def iter_rows(path: str | os.PathLike, *, skip_bad: bool = False, bad: list[BadRow] | None = None) -> Iterator[Row]:
    """Stream the valid rows of a FER2013 CSV, one :class:`Row` at a time.

    Bad rows: by default the first one raises :class:`DataError` (``FILE:LINE: problem``).
    When ``bad`` is a list, every bad row is appended to it and skipped (the caller
    decides what to do once the file is read); ``skip_bad=True`` skips them too.
    A missing/empty file, an unknown header and a header without data rows always raise.
    The file is read in chunks: memory does not grow with its length.
    """
    layout, fh = open_csv(path)
    with fh:
        seen = False
        for chunk in iter_chunks(fh):
            seen = True
            parsed = parse_chunk(layout, chunk)
            if parsed.bad:
                if bad is not None:
                    bad.extend(parsed.bad)
                elif not skip_bad:
                    first = parsed.bad[0]
                    raise DataError(f"{path}:{first.line}: {first.problem}")
            for i in range(len(parsed.rows)):
                yield Row(
                    int(parsed.rows[i]),
                    int(parsed.lines[i]),
                    int(parsed.labels[i]),
                    SPLITS[parsed.splits[i]],
                    parsed.pixels[i],
                )
        if not seen:
            raise DataError(f"{path}: no data rows after the header (line 1)")


def load_split(path: str | os.PathLike, split: str, *, skip_bad: bool = False) -> SplitArrays:
    """All rows of one split (``Training``, ``PublicTest`` or ``PrivateTest``) as arrays.

    Only the pixels of that split are parsed.  Bad rows of the split raise one
    :class:`DataError` listing them (``skip_bad`` leaves them out instead); a split
    that is absent raises a DataError naming the splits present.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (expected {', '.join(SPLITS)})")
    code = SPLITS.index(split)
    layout, fh = open_csv(path)
    images, labels, rows = [], [], []
    bad: list[BadRow] = []
    present = np.zeros(len(SPLITS), np.int64)
    with fh:
        for chunk in iter_chunks(fh):
            parsed = parse_chunk(layout, chunk, splits=(code,))
            bad.extend(parsed.bad)
            images.append(parsed.pixels)
            labels.append(parsed.labels)
            rows.append(parsed.rows)
            present += parsed.split_counts
    if bad and not skip_bad:
        raise bad_rows_error(path, bad, hint=f" (reading split {split})")
    n = int(sum(len(r) for r in rows))
    if n == 0:
        have = [f"{name} ({count:,} rows)" for name, count in zip(SPLITS, present) if count]
        listing = ", ".join(have) if have else "none"
        raise DataError(f"{path}: split '{split}' is absent or empty (splits present: {listing})")
    return SplitArrays(
        images=np.concatenate(images) if images else np.zeros((0, SIDE, SIDE), np.uint8),
        labels=np.concatenate(labels),
        rows=np.concatenate(rows),
    )
