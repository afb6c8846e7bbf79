"""Output files: atomic writes of files and folders, JSON and JSON-lines reading and writing.

Every output of fertool is built in a hidden temporary sibling and moved into place with
``os.replace``, so an interrupted command never leaves a file or folder that looks
complete, and whatever the destination held before survives a failure.

No torch import: ``prepare`` and ``report`` use this module and stay light.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataError, FertoolError, os_error_message, printable
from .faults import pause_point
from .tempfiles import sweep_stale, temp_dir, temp_file

__all__ = [
    "write_failure",
    "atomic_path",
    "atomic_dir",
    "install_dir",
    "check_output_dir",
    "mark_output",
    "output_kind",
    "OUTPUT_MARKER",
    "write_json",
    "read_json",
    "append_jsonl",
    "read_jsonl",
    "sha256_file",
]


#: Words of a writer's own exception (torch, ONNX, OpenCV) that mean the bytes did not get out.
_WRITE_WORDS = re.compile(r"writ|space|disk|flush|I/O|quota|read-only|short|stream|unexpected pos", re.IGNORECASE)


def write_failure(
    exc: BaseException, path: str | os.PathLike, tmp: str | os.PathLike | None = None
) -> FertoolError | None:
    """The one-line ``PATH: cause`` error for a failed write of ``path``; None if ``exc`` is not one.

    An OSError (disk full, read-only file system, permissions, short write) or a writer
    library's exception about writing becomes a :class:`FertoolError` naming ``path`` (the
    output, not its temporary ``tmp``: a file inside ``tmp`` is named inside ``path``).
    A full disk is said as such even when the writer's own message does not say it.
    """
    if isinstance(exc, FertoolError) or not isinstance(exc, Exception):
        return None
    where = Path(path)
    if isinstance(exc, OSError):
        cause = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename is not None and not isinstance(exc.filename, int):
            where = Path(os.fsdecode(exc.filename))
            if tmp is not None and where == Path(tmp):
                where = Path(path)
            elif tmp is not None and Path(tmp) in where.parents:
                where = Path(path) / where.relative_to(tmp)
    elif isinstance(exc, (RuntimeError, ValueError)) or type(exc).__module__.startswith(("cv2", "onnx")):
        text = str(exc).strip()
        if not _WRITE_WORDS.search(text):
            return None
        cause = text.splitlines()[-1][:200] if text else type(exc).__name__
    else:
        return None
    if "space" not in cause.lower() and _disk_full(where):
        cause = f"No space left on device ({cause})"
    return FertoolError(printable(f"{where}: {cause}"))


def _disk_full(path: Path) -> bool:
    for folder in (path, *path.parents):
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        return st.f_bavail == 0 or st.f_favail == 0
    return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, sweep: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it over ``path`` atomically.

    On any exception (Ctrl-C included) the temporary file is removed and ``path``
    keeps whatever it held before; a failed write (:func:`write_failure`) becomes one
    ``PATH: cause`` error.  Temporaries of ``path`` left by killed processes are removed
    first (:func:`fertool.tempfiles.sweep_stale`; ``sweep=False`` for callers writing many
    files into one folder, which sweep it once themselves).  The file gets the umask's permissions.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if sweep:
            sweep_stale(path.parent, path.name)
        tmp_path = temp_file(path)
    except OSError as exc:
        raise write_failure(exc, path) from None
    try:
        yield tmp_path
        pause_point(f"write:{path.name}")  # fault tests: killed with the file written, not renamed
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        failure = write_failure(exc, path, tmp_path)
        if failure is not None:
            raise failure from None
        raise


#: The marker file in every output folder fertool builds with :func:`atomic_dir`: which
#: kind of output the folder holds and which files fertool wrote there.
OUTPUT_MARKER = ".fertool-output.json"


def output_kind(path: str | os.PathLike) -> str | None:
    """The kind of fertool output folder ``path`` is (its marker's), None when it is not one."""
    marker = _read_marker(Path(path))
    return marker[0] if marker else None


def _read_marker(path: Path) -> tuple[str, list[str]] | None:
    try:
        data = json.loads((path / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        return None
    files = data.get("files")
    files = [f for f in files if isinstance(f, str)] if isinstance(files, list) else []
    return data["kind"], files


def check_output_dir(path: str | os.PathLike, kind: str, overwrite: bool = False, *, legacy: str | None = None) -> None:
    """Refuse ``path`` as the output folder of a ``kind`` output when it is not ours to fill.

    Accepted: a missing or empty folder, or one whose marker says it is a fertool ``kind``
    output (or, written before markers existed, holds the file ``legacy`` that only
    such an output has); with ``overwrite`` any folder (fertool then writes its files into it and
    removes nothing it did not write).  Refused: a file, and any other folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():  # never replace a user's file by a folder
        raise FertoolError(f"{printable(path)}: exists and is not a folder")
    if overwrite or not path.is_dir():
        return
    owner = output_kind(path)
    if owner == kind or (owner is None and legacy is not None and (path / legacy).is_file()):
        return
    try:
        empty = not any(os.scandir(path))
    except OSError as exc:
        raise FertoolError(os_error_message(exc, path)) from None
    if empty:
        return
    what = f"a fertool {owner} folder" if owner else "a folder fertool did not write"
    raise FertoolError(
        f"{printable(path)}: exists and is {what}; refusing to write {'an' if kind[0] in 'aeiou' else 'a'} {kind} into it "
        f"(choose another folder, or pass overwrite to add fertool's files to it: "
        f"nothing else in it is removed)"
    )


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, kind: str, *, overwrite: bool = False, legacy: str | None = None
) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; on success its files go into the folder ``path``.

    Outputs are built in the temporary folder, so a failure (or Ctrl-C) leaves ``path``
    exactly as it was.  A new ``path`` is the temporary folder renamed; into an existing
    one (refused unless :func:`check_output_dir` accepts it) each file is moved with
    ``os.replace``, and of the files fertool wrote there before (the marker's list) only
    those the new output no longer has are removed: a file fertool did not write is never
    removed.  The folder gets the marker :data:`OUTPUT_MARKER` naming ``kind``.
    """
    path = Path(os.path.abspath(path))  # "." has a name to build a sibling of
    check_output_dir(path, kind, overwrite, legacy=legacy)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(path.parent, path.name)  # this output's temporaries left by dead processes
        tmp = temp_dir(path)
    except OSError as exc:
        raise write_failure(exc, path) from None
    try:
        yield tmp
        check_output_dir(path, kind, overwrite, legacy=legacy)  # a last look: nothing appeared meanwhile
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if not p.is_dir())
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"kind": kind, "files": files}, indent=1) + "\n", encoding="utf-8")
        if not path.exists():
            try:
                os.rename(tmp, path)
                return
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        _merge_into(tmp, path, kind, files)
    except Exception as exc:
        failure = write_failure(exc, path, tmp)
        if failure is not None:
            raise failure from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mark_output(path: str | os.PathLike, kind: str, files: list[str]) -> None:
    """Record in ``path``'s marker that fertool wrote ``files`` there as a ``kind`` output
    (for commands that write straight into their folder); earlier files of the same kind stay listed."""
    path = Path(path)
    marker = _read_marker(path)
    before = marker[1] if marker and marker[0] == kind else []
    write_json(path / OUTPUT_MARKER, {"kind": kind, "files": sorted(set(before) | set(files))})


def _merge_into(
    tmp: Path,
    path: Path,
    kind: str,
    files: list[str],
    *,
    last: str | None = None,
    ours: tuple[str, ...] = (),
    fault: str | None = None,
) -> None:
    """Move ``files`` (and the marker, last) from ``tmp`` into ``path``; drop our stale ones.

    Crash-safe in order: first the marker lists the old and the new files together (a
    process killed while moving leaves a folder whose marker still names every file fertool
    put there, so the next run removes them and nothing else); the file ``last`` (the one
    that says the output is complete, e.g. ``prepare.json``) is removed first and moved in
    after every other file.  ``ours``: more files of ``path`` that fertool wrote without
    listing them (a cache, a folder written before markers existed).
    """
    marker = _read_marker(path)
    before = set(marker[1] if marker and marker[0] == kind else []) | set(ours)
    write_json(path / OUTPUT_MARKER, {"kind": kind, "files": sorted(before | set(files))})
    if last is not None and last in files:  # the old output no longer looks complete
        (path / last).unlink(missing_ok=True)
    pause_point(fault or f"merge:{path.name}")  # fault tests: killed with the old output no longer complete
    for rel in files:
        if rel == last:
            continue
        dst = path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, dst)
    root = path.resolve()
    for rel in sorted(before - set(files)):
        old = path / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts or root not in old.resolve().parents:
            continue  # a tampered marker names nothing outside the folder
        if old.is_symlink() or old.is_file():
            old.unlink(missing_ok=True)
            for parent in old.parents:  # folders fertool made for it, once empty
                if parent == path:
                    break
                with contextlib.suppress(OSError):
                    parent.rmdir()
    if last is not None and last in files:
        os.replace(tmp / last, path / last)
    os.replace(tmp / OUTPUT_MARKER, path / OUTPUT_MARKER)


def install_dir(
    tmp: str | os.PathLike,
    path: str | os.PathLike,
    kind: str,
    *,
    last: str | None = None,
    ours: tuple[str, ...] = (),
    fault: str | None = None,
) -> None:
    """Put the finished folder ``tmp`` in place as the ``kind`` output ``path``, as :func:`atomic_dir` does.

    A missing or empty ``path`` becomes ``tmp`` renamed; into an existing one fertool's files
    are moved one by one (:func:`_merge_into`, ``last`` and ``ours`` as there) and no file
    fertool did not write is removed.  The caller has checked ``path`` (:func:`check_output_dir`).
    ``fault``: the name of the fault tests' pause point, before the rename or in the middle of the merge.
    """
    tmp, path = Path(tmp), Path(path)
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if not p.is_dir())
    files = [f for f in files if f != OUTPUT_MARKER]
    (tmp / OUTPUT_MARKER).write_text(json.dumps({"kind": kind, "files": files}, indent=1) + "\n", encoding="utf-8")
    if path.is_dir() and not any(os.scandir(path)):
        path.rmdir()
    if not path.exists():
        pause_point(fault or f"install:{path.name}")  # fault tests: killed with the folder complete, not renamed
        try:
            os.rename(tmp, path)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    _merge_into(tmp, path, kind, files, last=last, ours=ours, fault=fault)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` through libyaml's C parser when PyYAML has it (ten times faster on a
    recipe, the same values), else the pure-Python one.  For files fertool wrote: on a user's
    file the pure-Python parser's errors are the ones :mod:`fertool.recipe` words (its
    RecursionError on nesting, where libyaml has its own depth limit)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


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
