"""``fertool prepare --verify DIR``: check a prepared folder against what it records.

Every split of ``manifest.csv`` is read as training would read it (rows against
``prepare.json``'s counts, no image listed twice, every image present), every image is
decoded and must have the prepared size, and the per-row sha256 the manifest records
is checked against its source where the source is still there: ``source_sha256`` of
each image of a class folder / RAF-DB, and the source CSV's sha256 (``pixels_sha256``
of each row hashes the CSV's pixels, so the whole CSV's digest stands for them).

The prepared JPEGs themselves carry no recorded digest (the manifest format predates
this check): a JPEG replaced by another decodable one of the same size is not noticed
here, only by the image cache (its key holds every file's size and modification time).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import DataError, printable
from ..files import read_json, sha256_file
from ..imagecap import decode_image
from ..progress import Progress

__all__ = ["verify_prepared"]

_LIST_LIMIT = 10


def verify_prepared(folder: str | os.PathLike, *, progress: Progress | None = None) -> dict:
    """Verify the prepared ``folder``; return ``{"images", "splits", "sources_checked", "notes"}``.

    Raises one :class:`DataError` listing the problems (the first few) when any is found.
    """
    from .cache import _prepared_source

    root = Path(folder)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{printable(root)}: not a prepared folder (no manifest.csv)")
    summary = read_json(root / "prepare.json", strict=True)
    size = (summary.get("recipe") or {}).get("size") if isinstance(summary.get("recipe"), dict) else None
    with open(manifest, encoding="utf-8", newline="") as fh:
        records = list(csv.DictReader(fh))
    splits = list(dict.fromkeys(r.get("split") for r in records if r.get("split")))
    problems: list[str] = []
    notes: list[str] = []
    sources = [_prepared_source(root, split) for split in splits]  # counts, duplicates, missing files
    total = sum(len(s.files) for s in sources)
    done = 0
    for source in sources:
        for path in source.files:
            try:
                image = decode_image(path.read_bytes(), path)
            except (OSError, DataError) as exc:
                problems.append(f"{printable(path)}: {exc}")
                image = None
            else:
                if image is None:
                    problems.append(f"{printable(path)}: not a readable image")
                elif size is not None and image.shape[:2] != (size, size):
                    problems.append(f"{printable(path)}: {image.shape[1]}x{image.shape[0]}, prepared at {size}x{size}")
            done += 1
            if progress is not None and (done % 256 == 0 or done == total):
                progress(done, total)
    checked = _check_sources(root, summary, records, problems, notes)
    if problems:
        more = [f"... and {len(problems) - _LIST_LIMIT} more"] if len(problems) > _LIST_LIMIT else []
        raise DataError(
            "\n".join([f"{printable(root)}: {len(problems)} problem(s) found:", *problems[:_LIST_LIMIT], *more])
        )
    return {"images": total, "splits": splits, "sources_checked": checked, "notes": notes}


def _check_sources(root: Path, summary: dict, records: list[dict], problems: list[str], notes: list[str]) -> int:
    """The recorded sha256 of each source still present; returns how many were compared."""
    source = summary.get("source") if isinstance(summary.get("source"), dict) else {}
    if "csv" in source:
        path = Path(str(source["csv"]))
        if not path.is_file():
            notes.append(f"source CSV {printable(path)} is not there: its sha256 was not checked")
            return 0
        if sha256_file(path) != source.get("sha256"):
            problems.append(
                f"{printable(path)}: the source CSV changed since the folder was prepared "
                "(its sha256 differs from prepare.json's)"
            )
        return 1
    base = Path(str(source.get("path", "")))
    checked = missing = 0
    for rec in records:
        rel, digest = rec.get("source"), rec.get("source_sha256")
        if not rel or not digest:
            continue
        path = Path(rel) if Path(rel).is_absolute() else base / rel
        if not path.is_file():
            missing += 1
            continue
        checked += 1
        if sha256_file(path) != digest:
            problems.append(
                f"{printable(path)}: changed since it was prepared (row {rec.get('row')}: "
                "sha256 differs from the manifest's)"
            )
    if missing:
        notes.append(f"{missing:,} source image(s) are not there: their sha256 was not checked")
    return checked
