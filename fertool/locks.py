"""One writer per output: advisory locks on run stages and output folders.

Every command that writes a folder (``train`` a run stage, ``prepare``, ``evaluate``,
``ablate``) holds :func:`folder_lock` on it for its whole life.  A second fertool process
that wants the same folder fails at once with ``RUN/stage1 is in use by another fertool
process (pid N on HOST)`` instead of interleaving its epochs with the first one's; or, when
the caller passes a :class:`Wait` (``fertool pipeline`` does: its processes cooperate on one
run folder), it waits for the folder, says so once (``waiting for RUN/stage2, held by pid N
on HOST``), and gives up after the wait's timeout.

The lock is ``flock(2)`` on a hidden sibling file ``.<name>.lock`` (beside the folder, not
inside it, so replacing the folder never drops the lock), which holds the owner's pid and
host name.  The kernel releases a ``flock`` when its process dies, however it dies, so the
lock of a killed run on this machine is simply taken over by the next one; the file itself
is removed when the lock is released.  A lock file left by a process on *another* host is
never taken over: fertool cannot tell whether that process still runs (its node may have
failed, or the file system's ``flock`` may not reach across machines), so it reports the
file to delete instead.

File systems: the processes that share a run folder must see each other's ``flock``.  That
holds on one machine (any local disk) and, across machines, on NFS v4 (``flock`` is mapped
to NFS byte-range locks; Linux >= 2.6.12), Lustre mounted with ``-o flock`` (not
``localflock``, which locks per node only) and IBM Storage Scale (GPFS).  NFS v3 needs the
lock daemon (``nolock`` mounts lock per node only); on such a mount run one machine's
processes per run folder.  Where ``fcntl`` does not exist (Windows) there is no lock.

Locks are re-entrant within one process (the pipeline holds a stage and calls the trainer,
which takes it again), and are advisory: they stop fertool processes, not other programs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FertoolError, InUseError, os_error_message, printable
from .tempfiles import pid_alive, sweep_stale

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "HOST",
    "Owner",
    "Wait",
    "folder_lock",
    "path_lock",
    "lock_holder",
    "cooperating",
    "holding_lock",
    "lock_path",
    "output_folder",
]

#: This machine's name, written beside the pid in every lock file.
HOST = socket.gethostname() or "localhost"
#: How long a call that does not wait retries a lock that another process probes
#: (:func:`lock_holder` takes it for an instant).
_BRIEF = 0.2

_held: dict[str, int] = {}  # lock file -> depth, in this process
_guard = threading.Lock()


@dataclass(frozen=True)
class Owner:
    """Who holds (or last held) a lock: a pid and the host it runs on (None in lock files
    written before fertool recorded hosts: taken as this host)."""

    pid: int
    host: str | None = None

    @property
    def here(self) -> bool:
        """Whether the owner ran on this machine (so its pid can be checked)."""
        return self.host is None or self.host == HOST

    def __str__(self) -> str:
        return f"pid {self.pid} on {printable(self.host or HOST)}"


@dataclass(frozen=True)
class Wait:
    """How to wait for a lock that another process holds: up to ``timeout`` seconds (None:
    as long as it takes), checking every ``poll`` seconds; ``log`` gets one line each time
    the holder changes (``waiting for RUN/stage2, held by pid N on HOST``)."""

    timeout: float | None = None
    log: Callable[[str], None] | None = None
    poll: float = 1.0


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: ``.<name>.lock`` beside it."""
    folder = Path(os.path.abspath(folder))
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, wait: Wait | None = None) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` for the ``with`` block.

    Raises :class:`InUseError` when another process holds it (with ``wait``: when it still
    holds it after ``wait.timeout`` seconds), and a :class:`FertoolError` when ``folder``
    exists but is not a folder or its parent (where the lock file lives, created if needed)
    cannot be made.
    """
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise FertoolError(f"{printable(os.fspath(folder))}: exists and is not a folder")
    with path_lock(folder, wait=wait):
        yield


@contextlib.contextmanager
def path_lock(target: str | os.PathLike, *, wait: Wait | None = None) -> Iterator[None]:
    """:func:`folder_lock` for any path (a file such as ``RUN/recipe.yaml`` too)."""
    path = lock_path(target)
    for parent in path.parents:  # the nearest existing ancestor must be a folder
        if os.path.lexists(parent):
            if not os.path.isdir(parent):
                raise FertoolError(
                    f"{printable(os.fspath(target))}: cannot create it "
                    f"({printable(os.fspath(parent))} is a file, not a folder)"
                )
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
        fd = _acquire(path, target, wait)
    except OSError as exc:
        raise FertoolError(
            f"{printable(os.fspath(target))}: cannot create or lock it ({os_error_message(exc)})"
        ) from None
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


def _acquire(path: Path, target: str | os.PathLike, wait: Wait | None) -> int:
    start = time.monotonic()
    told: list[Owner | None] = []
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            _wait_or_raise(_in_use_message(target, owner), target, owner, wait, start, told)
            continue
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
        owner = _read_owner(fd)
        if owner is not None and not owner.here:
            # Free here, but left by a process on another machine: it died with its node,
            # or this file system's flock does not reach across machines.  Never taken over.
            os.close(fd)  # releases our flock
            _wait_or_raise(_other_host_message(target, owner, path), target, owner, wait, start, told)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {HOST}\n".encode())
        return fd


def _wait_or_raise(
    message: str, target: str | os.PathLike, owner: Owner | None, wait: Wait | None, start: float, told: list
) -> None:
    """Sleep before the next try, or raise :class:`InUseError` when it is time to give up."""
    waited = time.monotonic() - start
    if wait is None:
        if waited < _BRIEF:  # another process may just be probing the lock (lock_holder)
            time.sleep(0.02)
            return
        raise InUseError(message)
    if wait.timeout is not None and waited >= wait.timeout:
        raise InUseError(f"{message}; gave up waiting after {wait.timeout:g} s")
    if wait.log is not None and (not told or told[-1] != owner):
        holder = f", held by {owner}" if owner is not None else ""
        wait.log(f"waiting for {printable(os.fspath(target))}{holder}")
        told.append(owner)
    pause = wait.poll if wait.timeout is None else min(wait.poll, max(wait.timeout - waited, 0.01))
    time.sleep(pause)


def _read_owner(fd: int) -> Owner | None:
    """The ``pid host`` a lock file holds (``pid`` alone in older files), or None."""
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    pid, _, host = text.partition(" ")
    return Owner(int(pid), host.strip() or None) if pid.isdigit() else None


def _in_use_message(target: str | os.PathLike, owner: Owner | None) -> str:
    where = printable(os.fspath(target))
    if owner is None:
        return f"{where} is in use by another fertool process"
    if owner.here and not pid_alive(owner.pid):  # a process it started (a data loader worker) still holds the file
        return (
            f"{where} is in use by another fertool process ({owner} has exited, "
            "but a process it started still holds the lock)"
        )
    return f"{where} is in use by another fertool process ({owner})"


def _other_host_message(target: str | os.PathLike, owner: Owner, path: Path) -> str:
    return (
        f"{printable(os.fspath(target))} is locked by {owner}, another machine: fertool cannot tell whether "
        f"that process still runs, so it never takes over another machine's lock; if it is gone "
        f"(a failed node), delete {printable(os.fspath(path))}"
    )


def lock_holder(target: str | os.PathLike) -> Owner | None:
    """Who holds the lock of ``target`` now, or None when nobody does.

    A lock file left by a process on another host counts as held by it (as
    :func:`folder_lock` treats it).  A holder that has not yet written its name reads as
    ``Owner(0)``.
    """
    path = lock_path(target)
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        owner = _read_owner(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return owner or Owner(0, HOST)
        return owner if owner is not None and not owner.here else None
    finally:
        os.close(fd)


def cooperating(
    *, wait: bool = True, timeout: float | None = None, log: Callable[[str], None] | None = None
) -> Callable[[str | os.PathLike], Any]:
    """``hold(target)``: the lock of one output of a run that several processes share.

    The caller checks under it whether the output is done, and makes it if not; another
    process that wants it meanwhile waits (``wait``; up to ``timeout`` seconds, saying so
    through ``log``) or fails at once, then finds it done.  Temporaries of ``target`` left
    beside it by dead processes are removed once the lock is held.
    """
    policy = Wait(timeout=timeout, log=log) if wait else None

    @contextlib.contextmanager
    def hold(target: str | os.PathLike) -> Iterator[None]:
        with path_lock(target, wait=policy):
            target_path = Path(os.path.abspath(target))
            sweep_stale(target_path.parent, target_path.name)
            yield

    return hold


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
