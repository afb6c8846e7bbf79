"""Decode training images once into a memory-mapped uint8 cache.

JPEG decoding must never starve the model, so :func:`open_image_split` decodes a split
once into ``<images>/.cache/<split>-<key>.npy`` and later runs memory-map it.  FER
images are grey: when the three decoded channels of every image are equal (checked
per image) the cache keeps one channel, (N, S, S) -- 1.4 GB for the 28,709 training
images at 224 -- else (N, S, S, 3) RGB.

Two kinds of folder are accepted:

* a prepared folder (``fertool prepare``): ``manifest.csv`` (``row,split,label,class,
  path,...``, paths relative to the folder) and ``prepare.json``, whose ``classes`` list
  names the labels (FER2013's seven when absent); the cache key hashes both files, so
  re-preparing invalidates the cache.  FER+ prepared in the ``crossentropy`` label mode
  also gives each image's vote distribution (``ArraySplit.targets``);
* a plain folder of class subfolders, the users' own data: ``DIR/<split>/<Class>/*.jpg``
  or, for the training split, ``DIR/<Class>/*.jpg``.  Read directly, class folders must be
  FER2013 classes (other class sets, and photos of any size, go through ``fertool prepare
  --folder``), matched case-insensitively, with the usual
  short names (``angry``, ``happy``, ``sad``...) accepted; images must be square and all
  of one size.  The key hashes the file list with sizes and modification times.

A cache is built in a temporary file and moved into place with ``os.replace``, so an
interrupted build never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch

from .. import CLASS_NAMES
from ..errors import DataError, printable
from ..files import write_failure
from ..imagecap import decode_image
from ..progress import Progress
from ..tempfiles import sweep_stale, temp_file
from .datasets import ArraySplit
from .ferplus import SOFT_MODES, vote_distribution
from .folders import IMAGE_EXTENSIONS, SPLIT_ALIASES, emotion_key

#: Bump when the cache layout changes: old caches are then rebuilt.
CACHE_VERSION = 1

_DECODE_CHUNK = 256


@dataclass
class _Source:
    """What a cache is built from: files in label order, and the key that identifies them."""

    tag: str  # split name used in the cache file name
    files: list[Path]
    labels: np.ndarray  # (N,) int64
    rows: np.ndarray | None  # (N,) int64 source CSV rows, prepared folders only
    key: str  # hex digest of everything the decoded images depend on
    where: str  # for error messages
    classes: tuple[str, ...] = CLASS_NAMES
    targets: np.ndarray | None = None  # (N, C) float32 soft targets (FER+ crossentropy mode)


def open_image_split(
    images_dir: str | os.PathLike,
    split: str | None = "Training",
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> ArraySplit:
    """The ``split`` images of a prepared or class-subfolder directory, memory-mapped.

    The first call decodes every image (``workers`` threads, default up to 8; OpenCV
    releases the GIL) and reports ``progress(done, total)``; later calls reuse the cache
    while the data is unchanged.  ``cache_dir`` defaults to ``images_dir/.cache``
    (where stale caches of the same split are removed after a rebuild).
    ``split=None`` takes a plain folder's class subfolders directly under ``images_dir``.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    if (root / "manifest.csv").is_file():
        if split is None:
            raise DataError(f"{root}: a prepared folder needs a split name (see its manifest.csv)")
        source = _prepared_source(root, split)
    else:
        source = _folder_source(root, split)
    if not source.files:
        raise DataError(f"{source.where}: no images in split {source.tag}")

    default_dir = cache_dir is None
    folder = root / ".cache" if default_dir else Path(cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = "make the image folder writable or copy it to a writable place" if default_dir else "choose another one"
        raise DataError(
            f"{folder}: cannot create the image cache folder ({exc.strerror or exc}); "
            f"decoded images are kept there: {where}"
        ) from None

    base = folder / f"{_safe(source.tag)}-{source.key}"
    images_path, meta_path = base.with_name(base.name + ".npy"), base.with_name(base.name + ".meta.npz")
    split_obj = _load_cache(images_path, meta_path, source)
    if split_obj is not None:
        return split_obj
    # Several processes (DDP ranks) may ask at once: one builds, the others wait and reuse.
    with _exclusive(folder / f".{base.name}.lock"):
        split_obj = _load_cache(images_path, meta_path, source)
        if split_obj is None:
            # Temporaries of this cache's builds killed earlier (kill -9; a full disk was a SIGBUS):
            # under its lock, so no live build of it (on any host sharing the lock) loses its files.
            sweep_stale(folder, images_path.name)
            sweep_stale(folder, meta_path.name)
            _build_cache(source, images_path, meta_path, progress=progress, workers=workers)
            if default_dir:
                _remove_stale(folder, _safe(source.tag), source.key)
            split_obj = _load_cache(images_path, meta_path, source)
    if split_obj is None:  # pragma: no cover - only if the disk loses the file under us
        raise DataError(f"{images_path}: image cache could not be read back after building it")
    return split_obj


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory lock between processes (``flock``); a no-op where there is none."""
    try:
        import fcntl
    except ImportError:  # Windows: builds may race, which is wasteful but safe (atomic replace)
        yield
        return
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- sources


def _prepared_source(root: Path, split: str) -> _Source:
    """Rows of ``split`` in ``manifest.csv`` (written by ``fertool prepare``)."""
    manifest = root / "manifest.csv"
    manifest_bytes = manifest.read_bytes()
    prepare_json = root / "prepare.json"
    prepare_bytes = prepare_json.read_bytes() if prepare_json.is_file() else b""
    classes, soft = _prepared_classes(prepare_json, prepare_bytes)

    files: list[Path] = []
    labels: list[int] = []
    rows: list[int] = []
    votes: list[list[float]] = []
    present: list[str] = []
    lines: list[int] = []
    try:
        text = manifest_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{manifest}: not UTF-8 text (byte offset {exc.start}); re-run `fertool prepare`") from None
    reader = csv.DictReader(text.splitlines())
    missing = {"row", "split", "label", "path"} - set(reader.fieldnames or ())
    if soft and "votes" not in (reader.fieldnames or ()):
        missing.add("votes")
    if missing:
        raise DataError(f"{manifest}: missing column(s) {', '.join(sorted(printable(m) for m in missing))}")
    for line, rec in enumerate(reader, start=2):
        if any(rec.get(k) is None for k in ("row", "split", "label", "path")):
            raise DataError(f"{manifest} line {line}: too few fields")
        if rec["split"] not in present:
            present.append(rec["split"])
        if rec["split"] != split:
            continue
        try:
            label, row = int(rec["label"]), int(rec["row"])
        except ValueError:
            raise DataError(f"{manifest} line {line}: label and row must be integers") from None
        if not 0 <= label < len(classes):
            raise DataError(f"{manifest} line {line}: label {label} is not in 0..{len(classes) - 1}")
        name = rec.get("class")
        if name and name != classes[label]:
            raise DataError(f"{manifest} line {line}: class {name!r} does not match label {label} ({classes[label]})")
        if soft:
            try:
                votes.append([float(v) for v in rec["votes"].split()])
            except (ValueError, AttributeError):
                votes.append([])
            if len(votes[-1]) != len(classes) or min(votes[-1]) < 0:
                raise DataError(
                    f"{manifest} line {line}: votes must be {len(classes)} counts >= 0, got {rec['votes']!r}"
                )
        files.append(root / _inside(rec["path"], f"{manifest} line {line}"))
        labels.append(label)
        rows.append(row)
        lines.append(line)
    if not files:
        raise DataError(f"{manifest}: no rows of split {split!r} (present: {printable(', '.join(present)) or 'none'})")
    _check_counts(manifest, prepare_json, prepare_bytes, split, classes, files, labels, lines)

    digest = hashlib.sha256()
    for part in (f"fertool-cache-v{CACHE_VERSION}", split, "prepared"):
        digest.update(part.encode() + b"\0")
    digest.update(manifest_bytes + b"\0" + prepare_bytes)
    digest.update(_file_stamps(files, lines, manifest))  # an image changed, replaced or truncated
    targets = vote_distribution(np.asarray(votes, np.float64)) if soft else None
    return _Source(
        split,
        files,
        np.asarray(labels, np.int64),
        np.asarray(rows, np.int64),
        digest.hexdigest()[:16],
        str(manifest),
        tuple(classes),
        targets,
    )


def _file_stamps(files: Sequence[Path], lines: Sequence[int], manifest: Path) -> bytes:
    """Size and modification time of every image, for the cache key; a missing one is an error."""
    parts = []
    for path, line in zip(files, lines):
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DataError(
                f"{printable(path)}: listed in {manifest} line {line} but cannot be read "
                f"({exc.strerror or exc}); the prepared folder changed: prepare it again"
            ) from None
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return "\0".join(parts).encode()


def _check_counts(
    manifest: Path,
    prepare_json: Path,
    prepare_bytes: bytes,
    split: str,
    classes: Sequence[str],
    files: Sequence[Path],
    labels: Sequence[int],
    lines: Sequence[int],
) -> None:
    """The manifest's rows of ``split`` against prepare.json's counts; no image listed twice."""
    seen: dict[Path, int] = {}
    for path, line in zip(files, lines):
        if path in seen:
            raise DataError(
                f"{manifest} line {line}: {printable(path.name)} is listed twice "
                f"(also line {seen[path]}); the manifest was edited: prepare the folder again"
            )
        seen[path] = line
    try:
        counts = json.loads(prepare_bytes or b"{}").get("counts", {}).get(split)
    except (ValueError, AttributeError):
        return  # an unreadable prepare.json is reported where it is read
    if not isinstance(counts, dict):
        return
    want = {str(k): v for k, v in counts.items()}
    got = dict.fromkeys(want, 0)
    for label in labels:
        got[classes[label]] = got.get(classes[label], 0) + 1
    if got != want:
        expected, found = sum(v for v in want.values() if isinstance(v, int)), len(labels)
        raise DataError(
            f"{manifest}: split {split!r} has {found:,} rows, {prepare_json} counts {expected:,}"
            + ("" if expected != found else " (per class they differ)")
            + "; the manifest was edited: prepare the folder again"
        )


def folder_data(images_dir: str | os.PathLike) -> dict:
    """What an image folder holds, without reading its images: ``dataset`` (fer2013,
    ferplus, folder, rafdb), ``classes``, ``label_mode`` and ``prepare`` (the settings its
    images were made with) from a prepared folder's ``prepare.json``; FER2013's classes
    for class subfolders read directly."""
    path = Path(images_dir) / "prepare.json"
    if not (Path(images_dir) / "manifest.csv").is_file() or not path.is_file():
        return {"dataset": "fer2013", "classes": list(CLASS_NAMES), "label_mode": "majority", "prepare": None}
    raw = path.read_bytes()
    classes, soft = _prepared_classes(path, raw)
    summary = json.loads(raw)
    return {
        "dataset": str(summary.get("dataset", "fer2013")),
        "classes": list(classes),
        "label_mode": str(summary.get("label_mode", "majority")),
        "prepare": summary.get("recipe"),
    }


def _prepared_classes(path: Path, raw: bytes) -> tuple[tuple[str, ...], bool]:
    """(class names, soft targets?) of a prepared folder from its prepare.json."""
    if not raw:
        return CLASS_NAMES, False
    try:
        summary = json.loads(raw)
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    classes = summary.get("classes") if isinstance(summary, dict) else None
    if classes is None:  # prepared before class lists were recorded: FER2013
        return CLASS_NAMES, False
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)):
        raise DataError(f"{path}: classes must be a list of at least two names, got {classes!r}")
    return tuple(classes), summary.get("label_mode") in SOFT_MODES


_FER2013_KEYS = [emotion_key(name) for name in CLASS_NAMES]


def _inside(rel: str, where: str) -> PurePosixPath:
    """A manifest path, refused unless it is relative and stays inside the folder."""
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or ".." in path.parts or "\\" in rel or PureWindowsPath(rel).drive:
        raise DataError(
            f"{where}: path '{printable(rel)}' must be relative to the prepared folder and stay "
            "inside it; re-run `fertool prepare`"
        )
    return path


def _class_index(name: str) -> int | None:
    key = emotion_key(name)
    return _FER2013_KEYS.index(key) if key in _FER2013_KEYS else None


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_source(root: Path, split: str | None) -> _Source:
    """``root/<split>/<Class>/*`` or, for training / ``split=None``, ``root/<Class>/*``."""
    subdirs = _subdirs(root)
    folder = root
    if split is not None:
        wanted = next((a for s, a in SPLIT_ALIASES.items() if s.lower() == split.lower()), (split.lower(),))
        matches = [d for d in subdirs if d.name.lower() in wanted]
        if matches:
            folder = matches[0]
        elif split.lower() != "training" or not any(_class_index(d.name) is not None for d in subdirs):
            names = printable(", ".join(d.name for d in subdirs)) or "none"
            raise DataError(
                f"{root}: no folder for split {split!r} (folders found: {names}); expected "
                f"{root}/{split}/<Class>/ images, or a prepared folder with manifest.csv"
            )
    class_dirs = _subdirs(folder)
    unknown = [d.name for d in class_dirs if _class_index(d.name) is None]
    if unknown or not class_dirs:
        found = printable(", ".join(d.name for d in class_dirs)) or "none"
        raise DataError(
            f"{folder}: class folders read directly must be FER2013 classes ({', '.join(CLASS_NAMES)}); "
            f"found: {found}; for other classes run `fertool prepare --folder {root}` first"
        )
    seen: dict[int, str] = {}
    entries: list[tuple[int, Path]] = []
    for d in class_dirs:
        index = _class_index(d.name)
        if index in seen:
            raise DataError(f"{folder}: folders {seen[index]!r} and {d.name!r} are both class {CLASS_NAMES[index]}")
        seen[index] = d.name
        entries += [(index, f) for f in sorted(d.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    entries.sort(key=lambda e: (e[0], e[1].name))

    digest = hashlib.sha256()
    tag = split if split is not None else "all"
    for part in (f"fertool-cache-v{CACHE_VERSION}", tag, "folder"):
        digest.update(part.encode() + b"\0")
    for index, path in entries:
        st = path.stat()
        digest.update(f"{index}\0{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return _Source(
        tag,
        [p for _, p in entries],
        np.asarray([i for i, _ in entries], np.int64),
        None,
        digest.hexdigest()[:16],
        str(folder),
    )


# --------------------------------------------------------------------------- decode + cache


def _decode(path: Path) -> np.ndarray:
    """uint8 (S, S) when the decoded channels are equal (grey), else (S, S, 3) RGB."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    img = decode_image(data, path) if data.size else None
    if img is None:
        raise DataError(f"{path}: not a readable image")
    if np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]):
        return np.ascontiguousarray(img[..., 0])  # (S, S)
    return np.ascontiguousarray(img[..., ::-1])  # BGR -> RGB (S, S, 3)


def _check_size(path: Path, img: np.ndarray, size: int | None, first: Path) -> int:
    h, w = img.shape[:2]
    if h != w:
        raise DataError(
            f"{path}: image is {w}x{h}, not square; class folders read directly need square images of one "
            "size (run `fertool prepare --folder` to resize them)"
        )
    if size is not None and h != size:
        raise DataError(
            f"{path}: image is {w}x{h} but {first.name} is {size}x{size}; all images must have "
            "one size (run `fertool prepare --folder` to resize them)"
        )
    return h


def _build_cache(
    source: _Source,
    images_path: Path,
    meta_path: Path,
    *,
    progress: Progress | None,
    workers: int | None,
) -> None:
    """Decode every file into ``images_path`` (uint8 .npy) through a temporary file."""
    n = len(source.files)
    tmp_images = temp_file(images_path)
    tmp_grey = temp_file(images_path, "-grey.tmp")
    tmp_meta = temp_file(meta_path)
    workers = workers or min(8, os.cpu_count() or 1)
    out: np.ndarray | None = None  # the memmap being filled
    grey = True
    size: int | None = None
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, n, _DECODE_CHUNK):
                chunk = source.files[start : start + _DECODE_CHUNK]
                for offset, img in enumerate(pool.map(_decode, chunk)):
                    i = start + offset
                    size = _check_size(source.files[i], img, size, source.files[0])
                    if out is None:
                        out = _allocated_memmap(tmp_grey, (n, size, size))
                    if grey and img.ndim == 3:  # first colour image: switch the whole cache to RGB
                        rgb = _allocated_memmap(tmp_images, (n, size, size, 3))
                        for j in range(0, i, _DECODE_CHUNK):  # (k, S, S) -> (k, S, S, 3)
                            rgb[j : min(i, j + _DECODE_CHUNK)] = out[j : min(i, j + _DECODE_CHUNK), ..., None]
                        del out
                        tmp_grey.unlink()
                        out, grey = rgb, False
                    out[i] = img if grey or img.ndim == 3 else img[..., None]
                if progress is not None:
                    progress(min(start + _DECODE_CHUNK, n), n)
        assert out is not None
        out.flush()
        del out
        if grey:
            os.replace(tmp_grey, tmp_images)
        with open(tmp_meta, "wb") as fh:
            rows = source.rows if source.rows is not None else np.zeros(0, np.int64)
            np.savez(fh, labels=source.labels, rows=rows, has_rows=np.asarray(source.rows is not None))
        os.replace(tmp_meta, meta_path)
        os.replace(tmp_images, images_path)  # last: its presence marks a complete cache
    except OSError as exc:  # a full disk, a read-only or vanished cache folder: named, no traceback
        named = Path(os.fsdecode(exc.filename)) if isinstance(exc.filename, (str, bytes)) else None
        path, tmp = (meta_path, tmp_meta) if named == tmp_meta else (images_path, named)
        raise write_failure(exc, path, tmp) or DataError(f"{images_path}: {exc}") from None
    finally:
        for tmp in (tmp_images, tmp_grey, tmp_meta):
            tmp.unlink(missing_ok=True)


def _allocated_memmap(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A new uint8 ``.npy`` memory map at ``path`` whose disk space is reserved before a byte is written.

    ``open_memmap`` makes a sparse file; filling it on a full disk is a SIGBUS that kills the
    process with no message and leaves the temporaries.  ``posix_fallocate`` claims the blocks
    first, so a disk without room is an ENOSPC OSError here (glibc writes zeros itself on file
    systems without ``fallocate``; a platform without the call keeps the sparse file).
    """
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
        finally:
            os.close(fd)
    return out


def _load_cache(images_path: Path, meta_path: Path, source: _Source) -> ArraySplit | None:
    """The cached split, or None when there is no complete, consistent cache.

    Labels, class names and soft targets come from ``source`` (the manifest just read);
    the cache's own copy of the labels only confirms it holds the same images.
    """
    if not (images_path.is_file() and meta_path.is_file()):
        return None
    try:
        images = np.load(images_path, mmap_mode="r")
        with np.load(meta_path, allow_pickle=False) as meta:
            labels = meta["labels"].astype(np.int64)
            rows = meta["rows"].astype(np.int64) if bool(meta["has_rows"]) else None
    except (OSError, ValueError, KeyError):
        return None
    if images.dtype != np.uint8 or len(images) != len(labels) or not np.array_equal(labels, source.labels):
        return None
    if images.ndim not in (3, 4) or images.shape[1] != images.shape[2] or images.ndim == 4 and images.shape[3] != 3:
        return None  # damaged: rebuilt, not blamed on the recipe's size
    targets = torch.from_numpy(source.targets) if source.targets is not None else None
    return ArraySplit(
        images=images,
        labels=torch.from_numpy(labels),
        name=source.tag,
        class_names=source.classes,
        rows=rows,
        targets=targets,
    )


def _remove_stale(folder: Path, tag: str, key: str) -> None:
    """Delete caches of the same split with another key (the data they held changed)."""
    pattern = re.compile(rf"\.?{re.escape(tag)}-([0-9a-f]{{16}})\.(npy|meta\.npz|lock)")
    for path in folder.iterdir():
        match = pattern.fullmatch(path.name)
        if match and match.group(1) != key:
            path.unlink(missing_ok=True)


def _safe(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tag)


__all__: Sequence[str] = ("open_image_split", "folder_data", "CACHE_VERSION")
