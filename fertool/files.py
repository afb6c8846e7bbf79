"""Output files: atomic writes of files and folders, JSON and JSON-lines reading and writing.

Every output of fertool is built in a hidden temporary sibling and moved into place with
``os.replace``, so an interrupted command never leaves a file or folder that looks
complete, and whatever the destination held before survives a failure.

No torch import: ``prepare`` and ``report`` use this module and stay light.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from .errors import DataError, FertoolError
from .faults import pause_point
from .tempfiles import temp_dir, temp_file

__all__ = ["atomic_path", "atomic_dir", "write_json", "read_json", "append_jsonl", "read_jsonl", "sha256_file"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it over ``path`` atomically.

    On any exception (Ctrl-C included) the temporary file is removed and ``path``
    keeps whatever it held before; one left by a killed process is removed by
    :func:`fertool.tempfiles.sweep_stale`.  The file gets the umask's permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = temp_file(path)
    try:
        yield tmp_path
        pause_point(f"write:{path.name}")  # fault tests: killed with the file written, not renamed
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; on success it replaces the folder ``path``.

    Outputs are built in the temporary folder, so a failure (or Ctrl-C) leaves ``path``
    exactly as it was; an existing folder ``path`` is moved aside only once the new one is
    complete, put back if the final rename fails, and removed after it succeeded (an
    existing file is refused).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():  # never replace a user's file by a folder
        raise FertoolError(f"{path}: exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = temp_dir(path, ".old")
        os.replace(path, old / path.name)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old / path.name, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (NumPy / torch numbers and arrays as lists)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike, *, strict: bool = False) -> dict | None:
    """The JSON object in ``path``.

    Not ``strict``: None when the file is missing, unreadable or not an object (a
    half-finished run).  ``strict``: a :class:`DataError` naming the file instead.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if strict:
            raise DataError(f"{path}: not a readable JSON file ({exc})") from None
        return None
    if not isinstance(data, dict):
        if strict:
            raise DataError(f"{path}: expected a JSON object")
        return None
    return data


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line (used for per-epoch metrics)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, default=_json_default) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file; a truncated last line (killed writer) is ignored."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def _json_default(obj: Any) -> Any:
    """NumPy scalars and arrays, torch tensors and paths, without importing either library."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy.ndarray / numpy scalar / torch.Tensor
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
