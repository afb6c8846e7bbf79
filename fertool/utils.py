"""Small helpers shared by the whole package: seeding, devices, atomic writes, hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .errors import DataError, FertoolError
from .faults import pause_point
from .tempfiles import temp_file


def seed_everything(seed: int, *, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order.

    ``deterministic`` is the single switch for bit-reproducible runs: deterministic
    algorithms on and cuDNN benchmarking off (as in the torchvision references).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp`` is set; a no-op context otherwise (and on the CPU)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FertoolError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise FertoolError(f"--device {name}: {exc}") from None


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


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


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
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
