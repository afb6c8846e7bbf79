"""Temporary siblings of outputs: owner's pid in the name, umask permissions, swept when stale.

fertool builds every output in a hidden temporary sibling and renames it into place, so
an interrupted command never leaves a file that looks complete.  The temporaries here:

* are named ``.<name>.<pid>-<random><suffix>`` (suffix ``.tmp``, ``.partial``, ``.old``),
  so a later command can tell one whose process is gone (killed, machine crash) and
  remove it: :func:`sweep_stale`;
* get the permissions an ordinary file or folder written by the user would get
  (``0o666`` / ``0o777`` less the umask), not the private ``0o600`` / ``0o700`` of
  :mod:`tempfile`, because they become the outputs.

No torch import: ``prepare`` and ``report`` use this module.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

__all__ = ["temp_file", "temp_dir", "sweep_stale", "umask", "pid_alive"]

_STALE = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+(?:-[a-z]+)?\.(?:tmp|partial|old)")
_umask_guard = threading.Lock()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def umask() -> int:
    """The process umask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_guard:  # elsewhere: set and restore (the only portable way)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def temp_file(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """Create an empty temporary sibling of ``path`` (its folder must exist)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
    finally:
        os.close(fd)
    return Path(tmp)


def temp_dir(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """Create an empty temporary sibling folder of ``path`` (its parent must exist)."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=suffix, dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def sweep_stale(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove temporaries in ``folder`` (of output ``name``, or of any) whose owner is dead.

    Returns what was removed.  Temporaries of live processes (another command writing
    next to this one) are left alone; so are files of any other form.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _STALE.fullmatch(entry.name)
        if match is None or (name is not None and match["name"] != name) or pid_alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
