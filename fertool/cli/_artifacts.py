"""The one place where a command turns a registry name into a path (``-c lhc-net``,
``--csv fer2013``), fetching it on first use with a note and a byte progress bar, and where
the authors' FER2013 split files become a CSV every command reads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..errors import printable
from ._common import err, log_line


@contextmanager
def byte_progress(quiet: bool = False) -> Iterator:
    """A progress callback drawing one Rich bar per file with size and rate (stderr).

    On a non-terminal stderr, one line per finished file.
    """
    if quiet:
        yield lambda done, total=None, **fields: None
        return
    if not err.is_terminal:
        seen: dict = {}

        def log(done, total=None, **fields):
            key = fields.get("description", "")
            if total and done >= total and key not in seen:
                seen[key] = True
                err.print(f"{printable(key)}: {_size(done)}", highlight=False, markup=False, soft_wrap=True)

        yield log
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
    )
    tasks: dict = {}

    def callback(done, total=None, **fields):
        key = fields.get("description", "downloading")
        if key not in tasks:
            tasks[key] = bar.add_task(key, total=total)
        bar.update(tasks[key], completed=done, total=total)

    with bar:
        yield callback


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def fetch_artifact(name: str, *, quiet: bool = False) -> Path:
    """``artifacts.fetch`` with the note and the progress bar (the cache is answered silently)."""
    from .. import artifacts

    cached = artifacts.cached_path(name)
    if cached is not None:
        return cached
    with byte_progress(quiet) as progress:
        return artifacts.fetch(name, progress, note=log_line)


def resolve_checkpoint(value: Path | None, *, quiet: bool = False) -> Path | None:
    """A checkpoint option: an existing path as given, a model name (lhc-net, ...) fetched if needed."""
    from .. import artifacts

    if value is None or not artifacts.is_name(value) or str(value) not in artifacts.MODEL_NAMES:
        return value
    return fetch_artifact(str(value), quiet=quiet)


def resolve_csv(value: Path | None, *, quiet: bool = False) -> Path | None:
    """A FER2013 CSV option: ``fer2013`` (fetched if needed), the authors' split files (a folder
    or one file, converted once to Kaggle's layout in the cache), or any other CSV as given."""
    from .. import artifacts
    from ..data.authors_split import is_split_source, to_kaggle_csv

    if value is None:
        return None
    if artifacts.is_name(value) and artifacts.entry(str(value)).kind == "fer2013-split":
        value = fetch_artifact(str(value), quiet=quiet)
    if not is_split_source(value):
        return value
    from ._common import progress_callback

    with progress_callback("converting", quiet=quiet, unit="B", transient=True) as progress:
        converted = to_kaggle_csv(value, artifacts.cache_dir() / "converted", progress)
    if not quiet:
        log_line(f"{value}: the authors' split files, read as {converted}")
    return converted


def checkpoint_file(value: str | os.PathLike) -> None:
    """:func:`fertool.precheck.checkpoint_file` (before the heavy imports), letting an
    artefact's name through: :func:`resolve_checkpoint` fetches it later."""
    from .. import artifacts, precheck

    if not artifacts.is_name(value):
        precheck.checkpoint_file(value)


def existing_file(value: str | os.PathLike | None, what: str = "file") -> None:
    """:func:`fertool.precheck.existing_file`, letting an artefact's name (``fer2013``) through."""
    from .. import artifacts, precheck

    if value is None or not artifacts.is_name(value):
        precheck.existing_file(value, what)
