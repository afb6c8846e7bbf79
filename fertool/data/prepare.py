"""``fertool prepare``: a FER2013 CSV -> one JPEG per row, a manifest and a summary (docs/protocol.md §1).

(Kept as one file: the streaming worker pool, the pixel pipeline and the output folder
are one command's machinery; photo folders are in :mod:`fertool.data.prepare_images`.)

Output layout of ``DIR``::

    DIR/<Usage>/<Class>/<row>.jpg   row = 0-based data row of the CSV, 5 digits
    DIR/manifest.csv                row,split,label,class,path,pixels_sha256[,votes]
    DIR/prepare.json                dataset, classes, recipe, source CSV + sha256, counts,
                                    skipped rows, checks
    DIR/recipe.yaml                 the resolved recipe

``pixels_sha256`` is the sha256 of the 2304 source bytes (48x48 uint8, row-major), so an
image can be traced back to its CSV row.

With a FER+ label file (:mod:`fertool.data.ferplus`) the pixels are made exactly the
same way; labels and class names are FER+'s, the rows FER+ drops are not written
(``prepare.json`` lists them, with each split's rule and counts per reason), and
``votes`` holds each image's eight emotion vote counts: in the ``crossentropy`` label
mode those FER+ trains against (after its outlier and top-3 rules), else the raw votes.  Image folders and RAF-DB
are prepared into the same layout by :mod:`fertool.data.prepare_images`.

Pixels: 48x48 grey -> ``size`` float32 bilinear with half-pixel centres (TF
``tf.image.resize``), floor to uint8, grey -> RGB by replication, JPEG (quality 100,
4:4:4 for the reference).  The resize is :class:`fertool.data.resize.TFBilinear`, the
float32 formula of docs/protocol.md §1 in NumPy; tests pin it to the fixture bit for bit.
It is NumPy rather than torch on purpose: importing torch (CUDA build) costs ~520 MB of
resident memory per process, more than the whole memory budget of ``prepare``, and
nothing else here needs it.

The CSV is streamed: the parent process reads it once (hashing it on the way) and hands
out byte ranges of ``CHUNK_ROWS`` rows; worker processes read their range, parse,
resize, encode and write it; at most a few chunks are in flight, so memory stays flat
however long the CSV is.  Everything is built in a
hidden temporary sibling of ``DIR`` that is renamed into place only when complete, so an
interrupted run never leaves a dataset that looks finished, and ``overwrite`` keeps the
old ``DIR`` until the new one is complete, then replaces fertool's own files in it and
removes nothing it did not write.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv as csvlib
import dataclasses
import datetime
import hashlib
import json
import multiprocessing
import os
import select
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .. import CLASS_NAMES, __version__
from ..errors import DataError, printable
from ..faults import pause_point
from ..files import install_dir, output_kind, write_failure
from ..locks import holding_lock
from ..progress import Progress
from ..tempfiles import pid_alive, temp_dir
from .csv import SPLITS, BadRow, Layout, Span, bad_rows_error, count_lines, iter_spans, open_csv, parse_chunk, read_span
from .ferplus import FERPLUS_CLASSES, SOFT_MODES, FerPlusLabels, read_ferplus
from .resize import TFBilinear

if TYPE_CHECKING:
    from ..recipe import PrepareConfig, Recipe

#: The canonical Kaggle FER2013 (docs/protocol.md §1).
CANONICAL_FER2013 = {
    "rows": 35_887,
    "splits": {"Training": 28_709, "PublicTest": 3_589, "PrivateTest": 3_589},
    "training_classes": (3995, 436, 4097, 7215, 4830, 3171, 4965),
}
MANIFEST_HEADER = "row,split,label,class,path,pixels_sha256"
#: The extra manifest column of FER+: the eight emotion vote counts, space-separated.
VOTES_COLUMN = "votes"
#: How the summary's warnings about the canonical check begin.
CANONICAL_PREFIX = "not the canonical FER2013"
#: Rows per task sent to a worker: large enough to amortise the per-task cost, small
#: enough that the vectorised parse and resize stay in cache.
CHUNK_ROWS = 64
#: Images resized at once: (8, 224, 224) float32 intermediates fit in a core's cache.
RESIZE_BLOCK = 8
#: With ``workers=None``, one worker process per this many rows at most: tiny CSVs
#: are done in-process (a pool costs a fork per worker and a few chunks of latency).
ROWS_PER_AUTO_WORKER = 500

_SAMPLING = {
    "4:4:4": "IMWRITE_JPEG_SAMPLING_FACTOR_444",
    "4:2:2": "IMWRITE_JPEG_SAMPLING_FACTOR_422",
    "4:2:0": "IMWRITE_JPEG_SAMPLING_FACTOR_420",
}


# --------------------------------------------------------------------------- pixels


def prepare_pixels(grey: np.ndarray, *, size: int = 224, rgb: bool = True, truncate: bool = True) -> np.ndarray:
    """48x48 grey uint8 (n, 48, 48) -> the training images, uint8 (n, size, size[, 3]).

    ``truncate`` floors like the reference (``np.floor(rgb).astype('uint8')``); False
    rounds half to even.  Bilinear values of 0..255 inputs lie in [0, 255] up to a float
    rounding (never below -1 nor above 256), so float -> uint8 truncation is exactly
    floor-then-clip and needs no extra pass.  Works in blocks of :data:`RESIZE_BLOCK`
    images so that the float32 intermediates stay in cache.
    """
    grey = np.asarray(grey)
    images = np.empty((len(grey), size, size), np.uint8)
    resize = TFBilinear(grey.shape[1], grey.shape[2], size, RESIZE_BLOCK)
    for start in range(0, len(grey), RESIZE_BLOCK):
        out = resize(grey[start : start + RESIZE_BLOCK])
        if not truncate:
            np.rint(out, out=out)
            np.clip(out, 0, 255, out=out)
        np.copyto(images[start : start + RESIZE_BLOCK], out, casting="unsafe")  # C cast: truncation
    if rgb:
        images = np.repeat(images[..., None], 3, axis=-1)  # (n, S, S) -> (n, S, S, 3)
    return images


def jpeg_params(quality: int, subsampling: str) -> list[int]:
    """OpenCV ``imencode`` parameters: quality and chroma sampling (4:4:4 = none)."""
    return [
        cv2.IMWRITE_JPEG_QUALITY,
        int(quality),
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        int(getattr(cv2, _SAMPLING[subsampling])),
    ]


def encode_jpeg(image: np.ndarray, params: list[int]) -> bytes:
    """uint8 (S, S) grey or (S, S, 3) RGB -> JPEG bytes (channel order is irrelevant:
    prepared images have three equal channels)."""
    ok, buf = cv2.imencode(".jpg", image, params)
    if not ok:  # pragma: no cover - OpenCV only fails on invalid arguments
        raise DataError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def image_relpath(split: str, label: int, row: int, classes: tuple[str, ...] = CLASS_NAMES) -> str:
    """``<Usage>/<Class>/<row>.jpg``, relative to the output folder."""
    return f"{split}/{classes[label]}/{row:05d}.jpg"


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class _Task:
    layout: Layout
    csv: str
    span: Span  # the lines to do: workers read them from the CSV themselves
    root: str  # the temporary output folder
    size: int
    rgb: bool
    truncate: bool
    params: tuple[int, ...]  # JPEG parameters
    write: bool  # False: only validate (a bad row was found and nothing will be kept)
    classes: tuple[str, ...] = CLASS_NAMES
    # FER+: the new labels (-1 = drop) and the label file's Usage codes of the rows
    # span.first_row, span.first_row + 1, ... (shorter when the label file ends early).
    relabel: np.ndarray | None = None
    usage: np.ndarray | None = None


@dataclass(frozen=True)
class _Result:
    rows: np.ndarray  # int64 (n,)
    labels: np.ndarray  # int64 (n,)
    splits: np.ndarray  # int8 (n,)
    digests: bytes  # n * 32 bytes: sha256 of each row's source pixels
    bad: list[BadRow]
    read: int  # data rows in the chunk, good or bad
    source_labels: np.ndarray  # FER2013 labels and split codes of every good row, before any FER+ drop
    source_splits: np.ndarray
    mismatch: list[tuple[int, int, int]]  # FER+: (row, CSV split code, label file split code or -1)


def _init_worker_process(parent: int) -> None:
    import signal

    cv2.setNumThreads(1)  # one process per core already
    # Ctrl-C goes to the whole process group: the parent handles it (cancels the
    # pending chunks, removes the temporary folder); workers just finish their chunk.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker waits for tasks on a queue whose write end it holds itself, so it would
    # wait forever once the parent is killed (kill -9 gives the parent no chance to
    # stop it): it watches the parent and exits with it.
    threading.Thread(target=_exit_with, args=(parent,), name="fertool-parent-watch", daemon=True).start()


def _exit_with(pid: int) -> None:
    """Block until process ``pid`` is gone, then end this process at once.

    Linux: a pidfd becomes readable when the process exits.  Elsewhere (macOS): poll.
    Watching the pid rather than the parent works on every start method (a forkserver
    worker's parent is the fork server, not ``pid``).
    """
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
    else:
        while pid_alive(pid):
            time.sleep(0.25)
    os._exit(1)


def _mp_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` where it exists, else ``spawn``; never plain ``fork``.

    The caller usually has threads running (PyTorch's and OpenCV's pools, ONNX Runtime,
    a progress bar): a ``fork`` copies their locks in whatever state they are in, and a
    worker that touches one waits forever.  The fork server is a fresh single-threaded
    process started once; workers are forked from it with this module preloaded, so they
    start fast and run only NumPy/OpenCV code.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def _work(task: _Task) -> _Result:
    """Parse, resize, encode and write one chunk (runs in a worker process)."""
    fd = os.open(task.csv, os.O_RDONLY)
    try:
        chunk = read_span(fd, task.span, task.layout.newline)
    finally:
        os.close(fd)
    parsed = parse_chunk(task.layout, chunk)
    rows, labels, splits, pixels = parsed.rows, parsed.labels, parsed.splits, parsed.pixels
    digests = [hashlib.sha256(p.tobytes()).digest() for p in pixels]
    mismatch: list[tuple[int, int, int]] = []
    if task.relabel is not None:
        rows, labels, splits, pixels, digests, mismatch = _relabel(task, rows, splits, pixels, digests)
    if task.write and len(pixels):
        images = prepare_pixels(pixels, size=task.size, rgb=False, truncate=task.truncate)
        params = list(task.params)
        paths = [
            image_relpath(SPLITS[s], label, row, task.classes)
            for row, label, s in zip(rows.tolist(), labels.tolist(), splits.tolist())
        ]
        for folder in {os.path.dirname(p) for p in paths}:
            os.makedirs(os.path.join(task.root, folder), exist_ok=True)
        for image, rel in zip(images, paths):
            if task.rgb:  # grey -> RGB by replication per image (cheaper than np.repeat on the chunk)
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            with open(os.path.join(task.root, rel), "wb") as fh:
                fh.write(encode_jpeg(image, params))
    return _Result(
        rows, labels, splits, b"".join(digests), parsed.bad, len(chunk.rows), parsed.labels, parsed.splits, mismatch
    )


def _relabel(task: _Task, rows: np.ndarray, splits: np.ndarray, pixels: np.ndarray, digests: list[bytes]):
    """FER+: the rows the label file keeps, with its labels; Usage disagreements listed."""
    offset = rows - task.span.first_row
    known = offset < len(task.relabel)
    ferplus_split = np.full(len(rows), -1, np.int64)
    ferplus_split[known] = task.usage[offset[known]]
    wrong = np.flatnonzero(known & (ferplus_split != splits))
    mismatch = [(int(rows[i]), int(splits[i]), int(ferplus_split[i])) for i in wrong]
    labels = np.full(len(rows), -1, np.int64)
    labels[known] = task.relabel[offset[known]]
    keep = labels >= 0
    return (rows[keep], labels[keep], splits[keep], pixels[keep], [d for d, k in zip(digests, keep) if k], mismatch)


# --------------------------------------------------------------------------- checks


def canonical_differences(counts: dict[str, list[int]]) -> list[str]:
    """How per-split class counts differ from the canonical FER2013 (empty: identical)."""
    diffs = []
    total = sum(sum(c) for c in counts.values())
    if total != CANONICAL_FER2013["rows"]:
        diffs.append(f"{total:,} rows, the canonical FER2013 has {CANONICAL_FER2013['rows']:,}")
    for split, expected in CANONICAL_FER2013["splits"].items():
        got = sum(counts.get(split, ()))
        if got != expected:
            diffs.append(f"{split}: {got:,} rows, canonical {expected:,}")
    training = counts.get("Training", [0] * len(CLASS_NAMES))
    for name, got, expected in zip(CLASS_NAMES, training, CANONICAL_FER2013["training_classes"]):
        if got != expected:
            diffs.append(f"Training/{name}: {got:,} images, canonical {expected:,}")
    return diffs


# --------------------------------------------------------------------------- prepare


def check_destination(out_dir: Path, source: Path, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that is not ours to fill (``source``: the input).

    A missing or empty folder is filled; a prepared folder (or any other) only with
    ``overwrite``, and then fertool replaces its own files and removes nothing else
    (:func:`_install`).  A folder holding the source itself is always refused.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{printable(out_dir)}: exists and is not a directory")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        if (out_dir / "prepare.json").is_file() or output_kind(out_dir) == PREPARED_KIND:
            raise DataError(f"{printable(out_dir)}: directory exists and is not empty (use --overwrite to replace it)")
        raise DataError(
            f"{printable(out_dir)}: exists and is not a fertool prepared dataset (no prepare.json); refusing to "
            "write into it (choose another --out, or --overwrite to add the prepared images to it: "
            "nothing else in it is removed)"
        )
    if out_dir.resolve() == source.resolve() or out_dir.resolve() in source.resolve().parents:
        kind = "the CSV" if source.is_file() else "the source folder"
        raise DataError(
            f"{printable(source)}: {kind} is inside {printable(out_dir)}; refusing to write the prepared "
            "dataset around its own source: move it first"
        )


def _auto_workers(workers: int | None, total: int) -> int:
    if workers is not None:
        if workers < 1:
            raise DataError(f"workers must be >= 1, got {workers}")
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, total // ROWS_PER_AUTO_WORKER))


#: The kind of output (:data:`fertool.files.OUTPUT_MARKER`) of a prepared folder.
PREPARED_KIND = "prepared dataset"


def _ours(out_dir: Path) -> tuple[str, ...]:
    """Files of an existing ``out_dir`` that fertool wrote without listing them in a marker:
    its image cache, and (a prepared folder written before markers existed) what its
    manifest and summary name."""
    ours = [p.relative_to(out_dir).as_posix() for p in (out_dir / ".cache").rglob("*") if not p.is_dir()]
    if output_kind(out_dir) is None and (out_dir / "prepare.json").is_file():
        ours += ["prepare.json", "recipe.yaml", "manifest.csv"]
        with contextlib.suppress(OSError, ValueError, KeyError, csvlib.Error):
            with open(out_dir / "manifest.csv", encoding="utf-8", newline="") as fh:
                ours += [row["path"] for row in csvlib.DictReader(fh) if row.get("path")]
    return tuple(ours)


def _install(tmp: Path, out_dir: Path, kind: str = PREPARED_KIND) -> None:
    """Put the finished ``tmp`` folder in place at ``out_dir``.

    A new (or empty) ``out_dir`` is ``tmp`` renamed.  Into an existing one fertool's own
    files are moved one by one and the old ones it no longer has removed; a file fertool did
    not write is never removed (:func:`fertool.files.install_dir`).  ``prepare.json`` goes
    first and comes back last, so a process killed meanwhile leaves a folder that does not
    look prepared, and the next ``--overwrite`` completes it.
    """
    ours = _ours(out_dir) if out_dir.is_dir() else ()
    install_dir(tmp, out_dir, kind, last="prepare.json", ours=ours, fault="prepare-install")


@contextlib.contextmanager
def build_folder(out_dir: Path, check: Callable[[], None] = lambda: None, kind: str = PREPARED_KIND) -> Iterator[Path]:
    """A hidden temporary sibling of ``out_dir`` to fill in the ``with`` block.

    When the block completes, ``check()`` runs (a last look at the destination) and the
    folder replaces ``out_dir`` (an old one is removed only then); when anything fails
    it is removed, and an OSError becomes a DataError saying that nothing was written.
    """
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(out_dir, ".partial")
    except OSError as exc:
        raise DataError(f"{out_dir}: cannot create it ({exc.strerror or exc})") from None
    try:
        yield tmp
        check()
        _install(tmp, out_dir, kind)
        shutil.rmtree(tmp, ignore_errors=True)  # what is left of it after a merge: empty folders
    except OSError as exc:  # disk full, permissions...
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(exc, out_dir, tmp)
        raise DataError(f"{failure}; nothing was written" if failure else f"{printable(out_dir)}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@holding_lock(lambda args: args["out_dir"] if Path(args["csv_path"]).is_file() else None)  # one writer
def prepare(
    csv_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: PrepareConfig,
    recipe: Recipe | None = None,
    overwrite: bool = False,
    skip_bad: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    ferplus: str | os.PathLike | None = None,
) -> dict:
    """Prepare a FER2013 CSV into ``out_dir`` (layout in the module docstring).

    ``config`` says how pixels are made (docs/protocol.md §1); ``recipe`` (default: the built-in
    one with this ``config``) is saved as ``recipe.yaml``.  Bad rows: by default nothing
    is written and one :class:`DataError` lists them (``FILE:LINE: problem``);
    ``skip_bad`` writes the good rows and records the bad ones in ``prepare.json``.
    ``workers`` processes (default: one per core, fewer for small CSVs; 1 = in this
    process).  ``progress(done, total)`` is called as rows are processed.
    Returns the summary written to ``prepare.json``; its ``warnings`` list says how the
    CSV differs from the canonical FER2013 and what was skipped.

    ``ferplus``: a FER+ label file (``fer2013new.csv``) giving the labels, in the label
    mode ``config.label_mode``; it must have one row per CSV row, in the same order
    with the same Usage, else nothing is written and a DataError says where they part.
    """
    from ..recipe import Recipe, dump_recipe, to_dict

    csv_path, out_dir = Path(csv_path), Path(out_dir)
    recipe = dataclasses.replace(recipe or Recipe(), prepare=config)
    layout, fh = open_csv(csv_path)  # header problems are reported before anything else
    fh.close()
    labels = read_ferplus(ferplus, config.label_mode) if ferplus is not None else None
    check_destination(out_dir, csv_path, overwrite)
    total = max(count_lines(csv_path, layout.newline) - 1, 0)  # upper bound on data rows (blank lines)
    nworkers = _auto_workers(workers, total)
    params = tuple(jpeg_params(config.jpeg_quality, config.subsampling))

    # the last check: nothing appeared at out_dir meanwhile
    with build_folder(out_dir, lambda: check_destination(out_dir, csv_path, overwrite)) as tmp:
        summary = _run(csv_path, tmp, layout, config, params, skip_bad, nworkers, total, progress, labels)
        summary["recipe"] = to_dict(recipe.prepare)
        summary["output"] = str(out_dir.resolve())
        (tmp / "recipe.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
        (tmp / "prepare.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


@dataclass
class _Tally:
    """What streaming the CSV found: counts per split and class, bad rows, rows read."""

    counts: np.ndarray  # (splits, classes) images written
    source_counts: np.ndarray  # (splits, FER2013 classes) rows as the CSV labels them
    mismatch: list = field(default_factory=list)  # FER+: (row, csv split, label-file split)
    bad: list = field(default_factory=list)
    done: int = 0
    sha256: str = ""


def _run(
    csv_path: Path,
    tmp: Path,
    layout: Layout,
    config: PrepareConfig,
    params: tuple[int, ...],
    skip_bad: bool,
    nworkers: int,
    total: int,
    progress: Progress | None,
    ferplus: FerPlusLabels | None = None,
) -> dict:
    """Stream the CSV through the workers into ``tmp``; write the manifest; summarise."""
    classes = CLASS_NAMES if ferplus is None else FERPLUS_CLASSES
    tally = _stream(csv_path, tmp, layout, config, params, skip_bad, nworkers, total, progress, ferplus, classes)
    _check_tally(csv_path, tally, skip_bad, ferplus)
    return _summary(csv_path, tally, layout, config, nworkers, ferplus, classes)


def _stream(
    csv_path: Path,
    tmp: Path,
    layout: Layout,
    config: PrepareConfig,
    params: tuple[int, ...],
    skip_bad: bool,
    nworkers: int,
    total: int,
    progress: Progress | None,
    ferplus: FerPlusLabels | None,
    classes: Sequence[str],
) -> _Tally:
    """The CSV's chunks through the worker pool: images into ``tmp``, one manifest line per image."""
    tally = _Tally(
        counts=np.zeros((len(SPLITS), len(classes)), np.int64),
        source_counts=np.zeros((len(SPLITS), len(CLASS_NAMES)), np.int64),
    )
    write = True
    hasher = hashlib.sha256()
    manifest = open(tmp / "manifest.csv", "w", encoding="utf-8", newline="\n")
    if ferplus is not None:  # the votes column: what training targets are made of in a soft mode, else the raw votes
        votes = ferplus.targets if ferplus.mode in SOFT_MODES else ferplus.votes[:, : len(classes)]

    def handle(result: _Result) -> None:
        nonlocal write
        if result.bad:
            tally.bad.extend(result.bad)
            write = write and skip_bad
        np.add.at(tally.counts, (result.splits.astype(np.int64), result.labels), 1)
        np.add.at(tally.source_counts, (result.source_splits.astype(np.int64), result.source_labels), 1)
        tally.mismatch.extend(result.mismatch)
        lines = []
        for i, (row, label, split) in enumerate(
            zip(result.rows.tolist(), result.labels.tolist(), result.splits.tolist())
        ):
            digest = result.digests[32 * i : 32 * (i + 1)].hex()
            name = SPLITS[split]
            line = f"{row},{name},{label},{classes[label]},{image_relpath(name, label, row, classes)},{digest}"
            if ferplus is not None:
                line += "," + " ".join(map(str, votes[row].tolist()))
            lines.append(line + "\n")
        manifest.write("".join(lines))
        tally.done += result.read
        pause_point("prepare-chunk")  # fault tests: killed with some chunks written
        if progress is not None:
            progress(tally.done, max(total, tally.done))

    executor = None
    try:
        manifest.write(MANIFEST_HEADER + (f",{VOTES_COLUMN}" if ferplus is not None else "") + "\n")
        if progress is not None:
            progress(0, total)
        if nworkers > 1:
            executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=nworkers,
                mp_context=_mp_context(),
                initializer=_init_worker_process,
                initargs=(os.getpid(),),
            )
        pending: collections.deque = collections.deque()
        _, fh = open_csv(csv_path)
        with fh:
            fh.seek(0)
            hasher.update(fh.readline())  # the header line; iter_chunks hashes the rest
            for span in iter_spans(fh, chunk_rows=CHUNK_ROWS, hasher=hasher):
                task = _Task(
                    layout,
                    str(csv_path),
                    span,
                    str(tmp),
                    config.size,
                    config.rgb,
                    config.truncate,
                    params,
                    write,
                    classes,
                )
                if ferplus is not None:
                    rows = slice(span.first_row, span.first_row + CHUNK_ROWS)
                    task = dataclasses.replace(task, relabel=ferplus.labels[rows], usage=ferplus.splits[rows])
                if executor is None:
                    handle(_work(task))
                    continue
                pending.append(executor.submit(_work, task))
                while len(pending) > 3 * nworkers or (pending and pending[0].done()):
                    handle(pending.popleft().result())
        while pending:
            handle(pending.popleft().result())
    finally:
        manifest.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    tally.sha256 = hasher.hexdigest()
    return tally


def _check_tally(csv_path: Path, tally: _Tally, skip_bad: bool, ferplus: FerPlusLabels | None) -> None:
    """Refuse an empty CSV, bad rows (unless skipped), a misaligned FER+ label file."""
    if tally.done == 0:
        raise DataError(f"{csv_path}: no data rows after the header (line 1)")
    if tally.bad and not skip_bad:
        raise bad_rows_error(csv_path, tally.bad, hint="; nothing was written (--skip-bad writes the good rows)")
    if ferplus is not None:
        _check_ferplus_alignment(csv_path, ferplus, tally.done, tally.mismatch)
    if not tally.counts.any():
        raise DataError(f"{csv_path}: all {tally.done:,} data rows are bad; nothing to prepare")


def _summary(
    csv_path: Path,
    tally: _Tally,
    layout: Layout,
    config: PrepareConfig,
    nworkers: int,
    ferplus: FerPlusLabels | None,
    classes: Sequence[str],
) -> dict:
    """prepare.json's content (``recipe`` and ``output`` filled in by :func:`prepare`)."""
    counts, bad = tally.counts, tally.bad
    per_split = {SPLITS[s]: counts[s].tolist() for s in range(len(SPLITS)) if counts[s].any()}
    source_split = {
        SPLITS[s]: tally.source_counts[s].tolist() for s in range(len(SPLITS)) if tally.source_counts[s].any()
    }
    differences = canonical_differences(source_split)
    warnings = [f"{CANONICAL_PREFIX}: {d}" for d in differences]
    if bad:
        warnings.insert(0, f"skipped {len(bad):,} bad row{'s' if len(bad) != 1 else ''} (listed in prepare.json)")
    extra: dict = {}
    if ferplus is not None:
        dropped = ferplus.dropped()
        extra["ferplus"] = {
            "labels": str(ferplus.path.resolve()),
            "sha256": ferplus.sha256,
            "label_mode": config.label_mode,
            "dropped": dropped,
        }
        rules = sorted({s["rule"] for s in dropped["per_split"].values()})
        warnings.append(
            f"FER+: dropped {dropped['count']:,} rows by the {' / '.join(rules)} rule "
            f"({', '.join(f'{n:,} {why}' for why, n in dropped['by_reason'].items() if n)}; "
            "per split in prepare.json)"
        )
    return {
        "fertool_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dataset": "ferplus" if ferplus is not None else "fer2013",
        "classes": list(classes),
        "label_mode": config.label_mode if ferplus is not None else "majority",
        "source": {
            "csv": str(csv_path.resolve()),
            "sha256": tally.sha256,
            "format": layout.format,
            "header": list(layout.header),
            "data_rows": tally.done,
        },
        "recipe": None,  # filled by prepare()
        "output": None,
        "images": int(counts.sum()),
        "counts": {split: dict(zip(classes, c)) for split, c in per_split.items()},
        "split_totals": {split: int(sum(c)) for split, c in per_split.items()},
        "skipped": [{"row": b.row, "line": b.line, "problem": b.problem} for b in bad],
        "canonical_fer2013": {"match": not differences, "differences": differences},
        "warnings": warnings,
        "workers": nworkers,
        **extra,
    }


def _check_ferplus_alignment(
    csv_path: Path, ferplus: FerPlusLabels, rows: int, mismatch: list[tuple[int, int, int]]
) -> None:
    """One row of the label file per CSV row, with the same Usage; else a DataError."""
    if rows != len(ferplus):
        raise DataError(
            f"{ferplus.path}: {len(ferplus):,} label rows but {csv_path} has {rows:,} data rows; the FER+ label "
            "file must have one row per FER2013 row, in the same order; nothing was written"
        )
    if mismatch:
        row, csv_split, ferplus_split = min(mismatch)
        raise DataError(
            f"{ferplus.path}: row {row} is {SPLITS[ferplus_split]} but row {row} of {csv_path} is "
            f"{SPLITS[csv_split]} ({len(mismatch):,} rows disagree): the two files are not in the same order; "
            "nothing was written"
        )
