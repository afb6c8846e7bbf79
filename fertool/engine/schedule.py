"""The per-stage training options beyond the paper (all off in ``recipes/paper.yaml``).

* :func:`learning_rate`: the learning rate of an optimiser step (``schedule``,
  ``warmup_epochs``, ``min_lr``, ``step_epochs``, ``gamma``);
* :func:`make_ema`: the exponential moving average of the weights (``ema``), a
  ``torch.optim.swa_utils.AveragedModel``;
* :func:`active_options`: the options a stage has switched on (summaries, logs, ``info``).

Label smoothing, gradient accumulation and fp16 with a gradient scaler are applied inside
:func:`fertool.engine.loop.train_one_epoch`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..recipe import StageConfig

__all__ = ["learning_rate", "steps_per_epoch", "has_schedule", "make_ema", "active_options"]


def steps_per_epoch(batches: int, accumulate: int) -> int:
    """Optimiser steps of an epoch of ``batches`` batches (a last, short group is a step too)."""
    return max(1, math.ceil(batches / accumulate))


def has_schedule(cfg: StageConfig) -> bool:
    """Whether the learning rate ever differs from ``cfg.lr`` (else it is never touched)."""
    return cfg.schedule != "constant" or cfg.warmup_epochs > 0


def learning_rate(cfg: StageConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based, counted from the stage's start).

    Linear warmup from ``lr / warmup_steps`` to ``lr`` over ``warmup_epochs`` epochs, then
    ``constant`` ``lr``; ``cosine`` from ``lr`` down to ``min_lr`` at the end of
    ``max_epochs`` (half a cosine over the steps after the warmup); ``step`` ``lr`` times
    ``gamma`` for every ``step_epochs`` epochs completed.
    """
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "cosine":
        total = max(1, cfg.max_epochs * steps_per_epoch - warmup)
        progress = min(1.0, (step - warmup) / total)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
    return cfg.lr


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model``: ``ema = decay * ema + (1 - decay) * weights`` after every
    optimiser step, BatchNorm statistics included (the first update copies the weights)."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def active_options(cfg: StageConfig, precision: str = "fp32") -> dict[str, Any]:
    """The options beyond the paper that a stage uses (empty for the paper's recipe)."""
    out: dict[str, Any] = {}
    if has_schedule(cfg):
        out["schedule"] = cfg.schedule
        if cfg.warmup_epochs:
            out["warmup_epochs"] = cfg.warmup_epochs
        if cfg.schedule == "cosine" and cfg.min_lr:
            out["min_lr"] = cfg.min_lr
        if cfg.schedule == "step":
            out["step_epochs"], out["gamma"] = cfg.step_epochs, cfg.gamma
    if cfg.label_smoothing:
        out["label_smoothing"] = cfg.label_smoothing
    if cfg.ema:
        out["ema"] = cfg.ema
    if cfg.accumulate > 1:
        out["accumulate"] = cfg.accumulate
    if precision == "fp16":
        out["precision"] = "fp16"
    return out


def describe_options(options: dict[str, Any]) -> str:
    """``schedule cosine, warmup_epochs 1, ema 0.999`` or ``none``."""
    return ", ".join(f"{k} {v}" for k, v in options.items()) or "none"


def scaler_for(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for ``fp16`` training, else None."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
