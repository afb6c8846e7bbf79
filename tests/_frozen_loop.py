"""A frozen copy of ``fertool.engine.loop.train_one_epoch`` as it was before the training
options of issue 23 (schedules, label smoothing, EMA, accumulation, fp16): the reference
that the paper recipe's training must still match bit for bit
(tests/test_training_options.py).  Do not edit it to follow the engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fertool.data.datasets import ImageSplit, batch_indices
from fertool.engine.distributed import DistContext
from fertool.engine.loop import NonFiniteLossError, _loaded_batches
from fertool.progress import Progress
from fertool.utils import precision as precision_mode


def train_one_epoch(
    model: nn.Module,
    split: ImageSplit,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
    augment: Any = None,
    aug_generator: torch.Generator | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    ctx: DistContext | None = None,
    sync_every: int = 1,
    progress: Progress | None = None,
    fields: Mapping[str, Any] | None = None,
) -> dict:
    """One pass over ``split`` in the order drawn from ``generator``; returns epoch metrics.

    ``augment`` (a :class:`fertool.data.augment.KerasAugment`) transforms each whole batch
    on the device, its parameters drawn from ``aug_generator`` (default ``generator``).
    A split with soft ``targets`` (FER+ ``probability``) is trained with the cross-entropy
    against them; accuracy is always against the hard labels.
    The loss is checked every ``sync_every`` batches (every batch on the CPU) *before*
    the backward pass, so a non-finite loss raises :class:`NonFiniteLossError` without
    touching the weights.  Loss and accuracy are sample-weighted means over the epoch,
    summed over ranks under DDP.  ``progress(images_done, images_total, **fields)``.
    """
    ctx = ctx or DistContext(device=device)
    aug_generator = aug_generator if aug_generator is not None else generator
    # The whole epoch's order is drawn first, then the augmentation draws follow batch by batch.
    batches = list(
        batch_indices(
            len(split), batch_size, shuffle=True, generator=generator, rank=ctx.rank, world_size=ctx.world_size
        )
    )
    total_images = sum(len(b) for b in batches)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    fields = dict(fields or {})
    start = time.perf_counter()

    batch_iter = _loaded_batches(split, batches, device)
    with precision_mode(device, precision, autocast=False):  # TF32 on or off for backward too
        try:
            for i, (x, y, t) in enumerate(batch_iter):
                if augment is not None and augment.active:
                    x = augment(x, aug_generator)  # (B, 3, S, S), same device
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with precision_mode(device, precision):
                    logits = model(x)  # (B, C)
                loss = F.cross_entropy(logits.float(), y if t is None else t)  # soft targets: against the distribution
                n = int(y.shape[0])
                check = (i + 1) % sync_every == 0 or i + 1 == len(batches)
                if check:
                    value = float(loss.detach())
                    if ctx.any_flag(not math.isfinite(value)):
                        raise NonFiniteLossError(value, i + 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach().double() * n
                correct += (logits.detach().argmax(dim=1) == y).sum()
                seen += n
                if progress is not None and check:
                    progress(
                        seen,
                        total_images,
                        batch=i + 1,
                        batches=len(batches),
                        loss=float(loss_sum) / seen,
                        accuracy=int(correct) / seen,
                        **fields,
                    )
        finally:
            batch_iter.close()  # stops the reading thread
    seconds = time.perf_counter() - start
    totals = ctx.all_reduce(
        torch.stack([loss_sum.cpu(), correct.cpu().double(), torch.tensor(float(seen), dtype=torch.float64)])
    )
    images = float(totals[2])
    return {
        "train_loss": float(totals[0]) / max(images, 1.0),
        "train_accuracy": float(totals[1]) / max(images, 1.0),
        "images": int(images),
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else float("nan"),
    }
