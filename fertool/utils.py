"""Small helpers shared by the whole package: seeding, devices, autocast.

File outputs (atomic writes, JSON) are in :mod:`fertool.files`.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from .errors import FertoolError


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
