"""Batched inference: softmax probabilities of a split, plain and with TTA (docs/protocol.md §5).

Every inference in fertool (validation during training, evaluation, ablation, analysis,
prediction) goes through :func:`predict_probs`.  It runs the forward passes through an
inference engine (:mod:`fertool.evaluation.runtimes`: eager PyTorch or ONNX Runtime),
loads batches with :func:`fertool.data.datasets.iter_split` straight onto the engine's
device, and computes the TTA views there from the batch already loaded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.datasets import ImageSplit, iter_split
from ..progress import Progress
from ..recipe import TTAPreset
from .runtimes import InferenceEngine, TorchEngine, build_engine
from .tta import apply_view, tta_divisor, tta_plan

__all__ = ["predict_probs"]


def predict_probs(
    model: nn.Module | None,
    split: ImageSplit,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    tta: TTAPreset | None = None,
    engine: str | InferenceEngine | None = None,
    progress: Progress | None = None,
) -> dict:
    """Softmax probabilities of every image of ``split``, in split order.

    Returns ``{"probs": float32 (N, C), "tta_probs": float32 (N, C) or None,
    "labels": int64 (N,)}``.  With ``tta`` the TTA probability is
    ``(w_id * p(x) + sum_v w_v * p(view_v(x))) / divisor`` (paper: ``(3 p + sum of 59) / 62``).

    ``engine``: None runs ``model`` itself in eager PyTorch in ``precision`` (``fp32``,
    ``tf32``, ``bf16``: :func:`fertool.utils.precision`; ``channels_last`` memory when
    asked), as validation during training does; its train/eval mode is restored
    afterwards.  An engine name (``auto``, ``torch``, ``onnxruntime``, see
    :mod:`fertool.evaluation.runtimes`) builds that engine for ``model`` on ``device`` in
    ``precision``; a built :class:`InferenceEngine` is used as it is (``model``,
    ``precision`` and ``channels_last`` are then ignored).  The softmax is always taken in
    float32.  ``progress(done, total)`` counts images.
    """
    device = torch.device(device)
    n = len(split)
    views = tta_plan(tta, split.size) if tta is not None else []
    divisor = tta_divisor(tta, views) if tta is not None else 1.0
    probs: torch.Tensor | None = None
    tta_probs: torch.Tensor | None = None
    was_training = model.training if model is not None else False
    if isinstance(engine, InferenceEngine):
        run = engine
    elif engine is None:
        run = TorchEngine(model, device=device, precision=precision, channels_last=channels_last, copy_model=False)
    else:
        run = build_engine(model, engine, device=device, precision=precision)
    device = run.device

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(run(x).float(), dim=-1)  # (B, C) float32

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
        if model is not None:
            model.train(was_training)
    if probs is None:  # empty split
        probs = torch.empty(0, len(split.class_names), dtype=torch.float32)
        tta_probs = torch.empty_like(probs) if tta is not None else None
    return {
        "probs": probs.numpy(),
        "tta_probs": tta_probs.numpy() if tta_probs is not None else None,
        "labels": split.labels.cpu().numpy().astype(np.int64),
    }
