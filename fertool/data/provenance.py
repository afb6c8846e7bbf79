"""Which data a model was trained on, and which data a result is about.

A provenance record is a small plain dict stored in checkpoints (``extra.data.provenance``,
beside the data set's name and classes) and in ``metrics.json``::

    {"kind": "synthetic sample" | "FER2013" | "CSV" | "image folder",
     "source": "fer2013.csv", "sha256": "<sha256 of the CSV>", "rows": 35887}

``kind`` is "synthetic sample" when the CSV is byte for byte a sample that ``fertool
sample-data`` writes (its row count fits a ``--per-class`` value and regenerating that
sample with the given seeds gives the same sha256: only a file with exactly a sample's row
count is regenerated); "FER2013" when it has the 35,887 rows of the canonical FER2013;
otherwise "CSV".  A prepared image folder reports the CSV it was prepared from (its
``prepare.json``); a folder of class subfolders is an "image folder" with no hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..files import sha256_file
from .csv import count_lines

__all__ = ["SYNTHETIC", "csv_provenance", "images_provenance", "checkpoint_provenance", "is_synthetic", "describe"]

SYNTHETIC = "synthetic sample"
#: Data rows of the canonical Kaggle FER2013.
FER2013_ROWS = 35_887


@functools.lru_cache(maxsize=32)
def _sample_match(sha256: str, rows: int, seeds: tuple[int, ...]) -> bool:
    from .sample import sample_csv_text, split_sizes

    for per_class in range(1, rows // 7 + 1):
        if 7 * sum(split_sizes(per_class).values()) != rows:
            continue
        for seed in seeds:
            text = sample_csv_text(per_class, seed)
            if hashlib.sha256(text.encode("ascii")).hexdigest() == sha256:
                return True
    return False


def _record(source: str, sha256: str, rows: int, seeds: Iterable[int]) -> dict:
    if _sample_match(sha256, rows, tuple(dict.fromkeys(seeds))):
        kind = SYNTHETIC
    elif rows == FER2013_ROWS:
        kind = "FER2013"
    else:
        kind = "CSV"
    return {"kind": kind, "source": source, "sha256": sha256, "rows": rows}


def csv_provenance(path: str | os.PathLike, *, sample_seeds: Iterable[int] = (0,)) -> dict:
    """The record of a FER2013-format CSV (hashes the file)."""
    path = Path(path)
    return _record(path.name, sha256_file(path), max(count_lines(path) - 1, 0), sample_seeds)


def images_provenance(folder: str | os.PathLike, *, sample_seeds: Iterable[int] = (0,)) -> dict:
    """The record of a prepared image folder (from its prepare.json) or of class subfolders."""
    folder = Path(folder)
    try:
        source = json.loads((folder / "prepare.json").read_text(encoding="utf-8"))["source"]
        return _record(Path(source["csv"]).name, source["sha256"], int(source["data_rows"]), sample_seeds)
    except (OSError, ValueError, KeyError, TypeError):
        return {"kind": "image folder", "source": folder.name, "sha256": None, "rows": None}


def checkpoint_provenance(ckpt: Mapping[str, Any]) -> dict | None:
    """The record of the data a checkpoint's weights were trained on (``extra.data.provenance``;
    None when unknown, e.g. imported weights)."""
    return (((ckpt.get("extra") or {}).get("data") or {}).get("provenance")) or None


def is_synthetic(record: dict | None) -> bool:
    return bool(record) and record.get("kind") == SYNTHETIC


def describe(record: dict | None) -> str:
    """``'synthetic sample (sample.csv, sha256 1a2b3c4d...)'``; 'unknown' without a record."""
    if not record:
        return "unknown (no provenance recorded)"
    digest = f", sha256 {record['sha256'][:12]}..." if record.get("sha256") else ""
    return f"{record['kind']} ({record['source']}{digest})"
