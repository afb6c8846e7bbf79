"""Small helpers shared by the whole package: seeding, devices, autocast.

File outputs (atomic writes, JSON) are in :mod:`fertool.files`.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator

import numpy as np
import torch

from .errors import FertoolError
from .recipe import PRECISIONS


def seed_everything(seed: int, *, data_seed: int | None = None, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch with ``seed``; return a torch generator for the data
    order and augmentation, seeded with ``data_seed`` (default ``seed``).

    ``deterministic`` is the single switch for bit-reproducible runs: deterministic
    algorithms on and cuDNN benchmarking off (as in the torchvision references).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        _deterministic_algorithms()
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    gen = torch.Generator()
    gen.manual_seed(seed if data_seed is None else data_seed)
    return gen


def _deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without importing Inductor.

    The public call imports ``torch._inductor`` (1.5 s of a 6 s tiny training process) only
    to set ``torch._inductor.config.deterministic``.  When Inductor is not loaded yet, its
    environment variable sets that flag on the import that ``torch.compile`` makes later.
    """
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1"
    torch._C._set_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def precision(device: torch.device | str, mode: str, *, autocast: bool = True) -> Iterator[None]:
    """Run the enclosed computation in ``mode`` (one of :data:`PRECISIONS`).

    TF32 is switched explicitly, never left to PyTorch's defaults: on for ``tf32`` and
    off otherwise, for matrix products (``torch.backends.cuda.matmul``) and cuDNN
    convolutions alike; the previous switches are restored on exit.  ``bf16`` adds
    bf16 autocast on the device (CUDA, or the CPU when asked there) unless ``autocast``
    is False (a training step: autocast covers the forward pass only, TF32 the backward too).  Losses and
    softmaxes are taken in float32 by the callers.
    """
    if mode not in PRECISIONS:
        raise FertoolError(f"precision: must be one of {', '.join(PRECISIONS)}, got {mode!r}")
    device = torch.device(device)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        with (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if mode == "bf16" and autocast
            else contextlib.nullcontext()
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


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
