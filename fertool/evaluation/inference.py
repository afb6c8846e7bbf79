"""Batched inference: softmax probabilities of a split, plain and with TTA (SPEC §5).

Every inference in fertool (validation during training, evaluation, ablation, analysis)
goes through :func:`predict_probs`.  It runs under ``torch.inference_mode()`` with the
model in eval mode, loads batches with :func:`fertool.data.datasets.iter_split` straight
onto the device, and computes the TTA views there from the batch already loaded.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.datasets import ImageSplit, iter_split
from ..recipe import TTAPreset
from .tta import apply_view, tta_divisor, tta_plan

__all__ = ["predict_probs"]

Progress = Callable[[int, "int | None"], None]


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predict_probs(
    model: nn.Module,
    split: ImageSplit,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    tta: TTAPreset | None = None,
    progress: Progress | None = None,
) -> dict:
    """Softmax probabilities of every image of ``split``, in split order.

    Returns ``{"probs": float32 (N, C), "tta_probs": float32 (N, C) or None,
    "labels": int64 (N,)}``.  With ``tta`` the TTA probability is
    ``(w_id * p(x) + sum_v w_v * p(view_v(x))) / divisor`` (paper: ``(3 p + sum of 59) / 62``).
    ``amp`` runs the forward passes under bf16 autocast on CUDA only (ignored on CPU);
    the softmax is always taken in float32.  The model is moved to ``device`` (and to
    channels-last memory when asked); its train/eval mode is restored afterwards.
    ``progress(done, total)`` counts images.
    """
    device = torch.device(device)
    n = len(split)
    views = tta_plan(tta, split.size) if tta is not None else []
    divisor = tta_divisor(tta, views) if tta is not None else 1.0
    probs: torch.Tensor | None = None
    tta_probs: torch.Tensor | None = None
    was_training = model.training
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(x)
        return torch.softmax(logits.float(), dim=-1)  # (B, C) float32

    done = 0
    if progress is not None:
        progress(0, n)
    try:
        with torch.inference_mode():
            for x, _, idx in iter_split(split, batch_size, device):
                p = forward(x)  # (B, C)
                if probs is None:
                    probs = torch.empty(n, p.shape[1], dtype=torch.float32)
                    tta_probs = torch.empty_like(probs) if tta is not None else None
                probs[idx] = p.cpu()
                if tta is not None:
                    acc = p * float(tta.identity_weight)
                    for view in views:
                        acc += forward(apply_view(x, view)) * float(view.weight)
                    tta_probs[idx] = (acc / divisor).cpu()
                done += len(idx)
                if progress is not None:
                    progress(done, n)
    finally:
        model.train(was_training)
    if probs is None:  # empty split
        probs = torch.empty(0, len(split.class_names), dtype=torch.float32)
        tta_probs = torch.empty_like(probs) if tta is not None else None
    return {
        "probs": probs.numpy(),
        "tta_probs": tta_probs.numpy() if tta_probs is not None else None,
        "labels": split.labels.cpu().numpy().astype(np.int64),
    }
