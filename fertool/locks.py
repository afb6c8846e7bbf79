"""One writer per output: advisory locks on run stages and output folders.

Every command that writes a folder (``train`` a run stage, ``prepare``, ``evaluate``,
``ablate``, ``pipeline`` a run directory) holds :func:`folder_lock` on it for its whole
life.  A second fertool process that wants the same folder fails at once with
``RUN/stage1 is in use by another fertool process (pid N)`` instead of interleaving its
epochs with the first one's.

The lock is ``flock(2)`` on a hidden sibling file ``.<name>.lock`` (beside the folder, not
inside it, so replacing the folder never drops the lock), which holds the owner's pid.
The kernel releases a ``flock`` when its process dies, however it dies, so the lock of a
killed run is simply taken over by the next one; the file itself is removed when the lock
is released.  Works on Linux and macOS (and on local file systems; NFS ``flock`` support
depends on the server).  Where ``fcntl`` does not exist (Windows) there is no lock.

Locks are re-entrant within one process (the pipeline holds a run directory and the stages
inside it), and are advisory: they stop fertool processes, not other programs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .errors import FertoolError, InUseError, os_error_message, printable
from .tempfiles import pid_alive, sweep_stale

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["folder_lock", "holding_lock", "lock_path", "output_folder"]

_held: dict[str, int] = {}  # lock file -> depth, in this process
_guard = threading.Lock()


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: ``.<name>.lock`` beside it."""
    folder = Path(os.path.abspath(folder))
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` for the ``with`` block.

    Raises :class:`InUseError` when another process holds it, and a
    :class:`FertoolError` when ``folder`` exists but is not a folder or its parent (where
    the lock file lives, created if needed) cannot be made.
    """
    path = lock_path(folder)
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise FertoolError(f"{printable(os.fspath(folder))}: exists and is not a folder")
    for parent in path.parents:  # the nearest existing ancestor must be a folder
        if os.path.lexists(parent):
            if not os.path.isdir(parent):
                raise FertoolError(f"{printable(os.fspath(folder))}: cannot create it "
                                   f"({printable(os.fspath(parent))} is a file, not a folder)")
            break
    key = str(path)
    with _guard:
        depth = _held.get(key, 0)
        if depth:
            _held[key] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, folder)
    except OSError as exc:
        raise FertoolError(f"{printable(os.fspath(folder))}: cannot create or lock it "
                           f"({os_error_message(exc)})") from None
    with _guard:
        _held[key] = 1
    try:
        yield
    finally:
        with _guard:
            del _held[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still locked: the next owner creates a fresh file
        os.close(fd)


def _acquire(path: Path, folder: str | os.PathLike) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            raise InUseError(_in_use_message(folder, owner)) from None
        except BaseException:
            os.close(fd)
            raise
        # The previous owner unlinks the file before releasing it: if that happened
        # between our open and our flock, we hold a lock on a file nobody else will
        # open; start again with the file now at ``path``.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _in_use_message(folder: str | os.PathLike, owner: int | None) -> str:
    where = printable(os.fspath(folder))
    if owner is None:
        return f"{where} is in use by another fertool process"
    if not pid_alive(owner):  # a process it started (a data loader worker) still holds the file
        return (f"{where} is in use by another fertool process (pid {owner} has exited, "
                "but a process it started still holds the lock)")
    return f"{where} is in use by another fertool process (pid {owner})"


def holding_lock(folder_of: Callable[[Mapping[str, Any]], str | os.PathLike | None]) -> Callable:
    """Decorator: the function runs holding :func:`folder_lock` on its output folder.

    ``folder_of(arguments)`` names the folder from the call's arguments (by parameter
    name, defaults filled in), or returns None for no lock (e.g. when an input is missing
    and the call will fail anyway).  Under the lock, temporaries left beside the folder
    by dead processes are removed first (:func:`fertool.tempfiles.sweep_stale`).
    """

    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def locked(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            folder = folder_of(bound.arguments)
            if folder is None:
                return func(*args, **kwargs)
            with folder_lock(folder):
                folder = Path(os.path.abspath(folder))
                sweep_stale(folder.parent, folder.name)
                sweep_stale(folder)
                return func(*args, **kwargs)

        return locked

    return decorate


def output_folder(default: Callable[[Any, str], Path]) -> Callable[[Mapping[str, Any]], Path | None]:
    """``folder_of`` for :func:`holding_lock` of the commands that write ``out_dir``, by default
    ``default(checkpoint_path, split)``; no lock when the checkpoint is missing (the call fails
    before it writes anything, and must not create folders on the way)."""

    def folder_of(args: Mapping[str, Any]) -> Path | None:
        if not Path(args["checkpoint_path"]).is_file():
            return None
        return Path(args["out_dir"]) if args["out_dir"] is not None else default(args["checkpoint_path"], args["split"])

    return folder_of
