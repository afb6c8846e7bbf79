"""RNG state of a training process, saved in ``last.pt`` so a resumed stage continues the
same random streams (bit-identical to an uninterrupted run on the CPU)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "rank_seed"]


def rng_state(extra_generator: torch.Generator | None) -> dict:
    """This process's RNG states in types ``torch.load(weights_only=True)`` accepts."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": list(random.getstate()),
        "aug_generator": extra_generator.get_state() if extra_generator is not None else None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any], extra_generator: torch.Generator | None) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if extra_generator is not None and state.get("aug_generator") is not None:
        extra_generator.set_state(state["aug_generator"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def rank_seed(seed: int, rank: int) -> int:
    """Independent per-rank stream (dropout, augmentation) under DDP."""
    return int(np.random.SeedSequence([int(seed) % 2**63, 1 + int(rank)]).generate_state(1, dtype=np.uint64)[0] % 2**63)
