"""The paper's FER2013 figures of the authors' published models (``fertool reproduce``):
both models evaluated on PrivateTest, plain and with the paper's TTA, beside the paper's
numbers (:data:`fertool.protocol.PAPER_TABLE7`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .progress import Progress

__all__ = ["estimate_seconds", "evaluate_published", "forward_passes"]


def forward_passes(checkpoint: str | os.PathLike, tta: bool) -> int:
    """Forward passes per image: 1 plain, plus one per view of the recipe's TTA preset (the paper's: 59)."""
    if not tta:
        return 1
    from .checkpoint import load_checkpoint
    from .evaluation.inputs import resolve_recipe, resolve_tta
    from .evaluation.tta import tta_plan

    ckpt = load_checkpoint(checkpoint)
    recipe = resolve_recipe(ckpt, None, ())
    _, preset = resolve_tta(recipe, True)
    return 1 + len(tta_plan(preset, ckpt["arch_args"].get("input_size", 224)))


def estimate_seconds(
    checkpoint: str | os.PathLike, csv: str | os.PathLike, *, tta: bool, device, models: int = 2, batch: int = 8
) -> tuple[float, int, float]:
    """(seconds, images, seconds per image pass): a timed batch of ``batch`` images, extrapolated
    to the PrivateTest images of ``csv`` x the forward passes x ``models``."""
    import torch

    from .checkpoint import load_checkpoint
    from .data.csv import load_split
    from .surgery import model_from_checkpoint

    n = len(load_split(csv, "PrivateTest").labels)
    ckpt = load_checkpoint(checkpoint)
    size = ckpt["arch_args"].get("input_size", 224)
    model = model_from_checkpoint(ckpt).eval().to(device)
    x = torch.rand(batch, 3, size, size, device=device) * 255
    with torch.inference_mode():
        model(x[:1])  # warm-up
        start = time.perf_counter()
        model(x)
        if getattr(device, "type", str(device)) == "cuda":
            torch.cuda.synchronize()
        per_image = (time.perf_counter() - start) / batch
    return per_image * n * forward_passes(checkpoint, tta) * models, n, per_image


def evaluate_published(
    checkpoint: str | os.PathLike,
    csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tta: bool,
    device,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> dict:
    """``evaluate_checkpoint`` on PrivateTest (the paper's TTA when ``tta``); metrics.json's dict."""
    from .evaluation.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(
        checkpoint,
        csv=csv,
        split="PrivateTest",
        tta=True if tta else None,
        out_dir=Path(out_dir),
        batch_size=batch_size,
        device=str(device),
        progress=progress,
    )
