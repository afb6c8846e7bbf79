"""The two plain functions a stage loops over, in the manner of the torchvision classification
reference: :func:`train_one_epoch` and :func:`evaluate`, with the pieces they need (early
stopping, the optimiser, Keras' frozen-BatchNorm mode, the epoch log line).

Keras-faithful details: categorical cross-entropy on softmax outputs, Adam with Keras' betas
and ``eps`` from the recipe (1e-7; Keras adds it to the uncorrected ``sqrt(v)``, PyTorch to
the corrected one -- a difference far below the noise of training), SGD without momentum,
early stopping on validation accuracy with restore-best, and frozen layers' BatchNorm in
inference mode (the controller stage).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import ImageSplit, batch_indices
from ..errors import RecipeError, TrainingError
from ..evaluation.inference import predict_probs
from ..evaluation.metrics import EPSILON
from ..progress import Progress
from ..recipe import StageConfig
from ..utils import precision as precision_mode
from .distributed import DistContext

__all__ = [
    "EarlyStopping",
    "NonFiniteLossError",
    "make_optimizer",
    "set_train_mode",
    "train_one_epoch",
    "evaluate",
    "format_epoch",
]


@dataclasses.dataclass
class EarlyStopping:
    """Keras ``EarlyStopping(monitor="val_accuracy", mode="max", restore_best_weights=True)``.

    An epoch improves when its value is strictly greater than the best so far (ties keep
    the earlier epoch); training stops once ``patience`` epochs in a row did not improve,
    checked from the second epoch on (Keras' ``epoch > 0``: with ``patience=0`` it stops
    after epoch 2 whatever happens).
    """

    patience: int
    best: float = -math.inf
    best_epoch: int = 0
    wait: int = 0
    epoch: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` of ``epoch`` (1-based); True when it is the new best."""
        self.epoch = int(epoch)
        if value > self.best:
            self.best, self.best_epoch, self.wait = float(value), int(epoch), 0
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.epoch > 1 and self.wait >= self.patience

    def state_dict(self) -> dict:
        return {
            "patience": self.patience,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.wait = int(state["wait"])
        self.epoch = int(state.get("epoch", self.best_epoch))


def make_optimizer(params: Iterable[nn.Parameter], cfg: StageConfig) -> torch.optim.Optimizer:
    """Adam (Keras betas 0.9/0.999, ``eps`` from the recipe) or SGD (``momentum`` 0 = plain)."""
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise RecipeError(f"optimizer: unknown optimiser {cfg.optimizer!r} (known: adam, sgd)")


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except BatchNorm layers with no trainable parameter stay in eval mode.

    Keras runs a frozen (``trainable=False``) BatchNorm in inference mode: its moving
    statistics neither update nor normalise the batch.  In the controller stage every
    BatchNorm is frozen; in stages 1-4 this is plain ``train()``.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite (the stage is stopped)."""

    def __init__(self, value: float, batch: int):
        self.value, self.batch = value, batch
        super().__init__(f"training loss became {value} at batch {batch}")


class _Shard(ImageSplit):
    """The images ``index`` of ``split`` (a rank's share of the validation set)."""

    def __init__(self, split: ImageSplit, index: torch.Tensor):
        self.split, self.index = split, index
        self.labels = split.labels[index]
        self.size, self.name, self.class_names = split.size, split.name, split.class_names

    def load(self, index: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.split.load(self.index[index], device)


def _loaded_batches(
    split: ImageSplit, batches: list[torch.Tensor], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """(images, labels, soft targets or None) of each batch on ``device``; on a GPU the next
    batch is read from the cache by a thread while the current one computes."""
    soft = getattr(split, "targets", None)  # (N, C) vote distributions (FER+ crossentropy mode) or None

    def load(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        targets = soft[idx].to(device, non_blocking=True) if soft is not None else None
        return split.load(idx, device), split.labels[idx].to(device, non_blocking=True), targets

    if device.type != "cuda":
        for idx in batches:
            yield load(idx)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, batches[0]) if batches else None
        for i in range(len(batches)):
            batch = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(load, batches[i + 1])
            yield batch


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
    label_smoothing: float = 0.0,
    accumulate: int = 1,
    scaler: torch.amp.GradScaler | None = None,
    lr_at: Callable[[int], float] | None = None,
    start_step: int = 0,
    ema: nn.Module | None = None,
    on_step: Callable[[dict], None] | None = None,
    log_every: int = 0,
) -> dict:
    """One pass over ``split`` in the order drawn from ``generator``; returns epoch metrics.

    ``augment`` (a :class:`fertool.data.augment.KerasAugment`) transforms each whole batch
    on the device, its parameters drawn from ``aug_generator`` (default ``generator``).
    A split with soft ``targets`` (FER+ ``crossentropy``) is trained with the cross-entropy
    against them; accuracy is always against the hard labels.
    The loss is checked every ``sync_every`` batches (every batch on the CPU) *before*
    the backward pass, so a non-finite loss raises :class:`NonFiniteLossError` without
    touching the weights.  Loss and accuracy are sample-weighted means over the epoch,
    summed over ranks under DDP.  ``progress(images_done, images_total, **fields)``.

    Options beyond the paper (their defaults leave the arithmetic above untouched):
    ``label_smoothing`` of the cross-entropy; ``accumulate`` batches per optimiser step,
    each batch's loss weighted by its share of the group's images (the gradient of one
    ``accumulate`` times larger batch, up to rounding, for a model without batch
    statistics); ``precision="fp16"`` float16 autocast with ``scaler`` (a
    ``torch.amp.GradScaler``: steps with inf/NaN gradients are skipped and counted);
    ``lr_at(step)`` the learning rate of each optimiser step, numbered from
    ``start_step``; ``ema`` (an ``AveragedModel``) updated after every optimiser step;
    ``on_step(step)`` at each checked batch (see :mod:`fertool.engine.callbacks`), and
    at every ``log_every``-th optimiser step.
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
    step, skipped, group_images = start_step, 0, 0
    fp16 = precision == "fp16"
    if fp16 and scaler is None:
        raise TrainingError("train_one_epoch: precision fp16 needs a gradient scaler")
    start = time.perf_counter()

    batch_iter = _loaded_batches(split, batches, device)
    with precision_mode(device, "fp32" if fp16 else precision, autocast=False):  # TF32 on or off for backward too
        try:
            for i, (x, y, t) in enumerate(batch_iter):
                if augment is not None and augment.active:
                    x = augment(x, aug_generator)  # (B, 3, S, S), same device
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.float16) if fp16 else precision_mode(device, precision):
                    logits = model(x)  # (B, C)
                # soft targets: against the distribution
                loss = F.cross_entropy(logits.float(), y if t is None else t, label_smoothing=label_smoothing)
                n = int(y.shape[0])
                first = i % accumulate == 0  # the first batch of an optimiser step's group
                if first:
                    group = batches[i : i + accumulate]
                    group_images = sum(len(b) for b in group)
                last = i + 1 == len(batches) or (i + 1) % accumulate == 0
                log_step = bool(log_every) and last and (step + 1) % log_every == 0
                check = (i + 1) % sync_every == 0 or i + 1 == len(batches) or log_step
                value = math.nan
                if check:
                    value = float(loss.detach())
                    if ctx.any_flag(not math.isfinite(value)):
                        raise NonFiniteLossError(value, i + 1)
                if first:
                    optimizer.zero_grad(set_to_none=True)
                part = loss if accumulate == 1 else loss * (n / group_images)
                with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
                    (part if scaler is None else scaler.scale(part)).backward()
                if last:
                    if lr_at is not None:
                        for g in optimizer.param_groups:
                            g["lr"] = lr_at(step)
                    if scaler is None:
                        optimizer.step()
                    else:
                        before = scaler.get_scale()
                        scaler.step(optimizer)  # skipped when a gradient is inf/NaN
                        scaler.update()
                        skipped += int(scaler.get_scale() < before)  # the scale backs off exactly then
                    if ema is not None:
                        ema.update_parameters(model)
                    step += 1
                loss_sum += loss.detach().double() * n
                correct += (logits.detach().argmax(dim=1) == y).sum()
                seen += n
                if check:
                    report = dict(
                        fields,
                        images=seen,
                        images_total=total_images,
                        batch=i + 1,
                        batches=len(batches),
                        step=step,
                        loss=float(loss_sum) / seen,
                        accuracy=int(correct) / seen,
                        batch_loss=value,
                        lr=optimizer.param_groups[0]["lr"],
                        skipped_steps=skipped,
                        log_step=log_step,
                    )
                    if progress is not None:
                        progress(
                            seen,
                            total_images,
                            batch=i + 1,
                            batches=len(batches),
                            loss=report["loss"],
                            accuracy=report["accuracy"],
                            **fields,
                        )
                    if on_step is not None:
                        on_step(report)
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
        "steps": step - start_step,
        "skipped_steps": skipped,
    }


def evaluate(
    model: nn.Module,
    split: ImageSplit,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    ctx: DistContext | None = None,
    progress: Progress | None = None,
) -> dict:
    """Mean loss (Keras categorical cross-entropy, clipped) and accuracy of ``model`` on ``split``.

    Inference goes through :func:`predict_probs` (eval mode, no gradients).  Under DDP each
    rank predicts every ``world_size``-th image and the sums are reduced over ranks.
    """
    ctx = ctx or DistContext(device=torch.device(device))
    part: ImageSplit = split
    if ctx.distributed:
        part = _Shard(split, torch.arange(ctx.rank, len(split), ctx.world_size))
    if len(part):
        out = predict_probs(
            model,
            part,
            batch_size=batch_size,
            device=device,
            precision=precision,
            channels_last=channels_last,
            progress=progress,
        )
        probs = np.asarray(out["probs"], dtype=np.float64)  # (N, C)
        labels = part.labels.numpy()
        picked = np.clip(probs[np.arange(len(labels)), labels], EPSILON, 1.0 - EPSILON)
        sums = torch.tensor(
            [-np.log(picked).sum(), float((probs.argmax(1) == labels).sum()), float(len(labels))], dtype=torch.float64
        )
    else:
        sums = torch.zeros(3, dtype=torch.float64)
    sums = ctx.all_reduce(sums)
    n = max(float(sums[2]), 1.0)
    return {"loss": float(sums[0]) / n, "accuracy": float(sums[1]) / n, "images": int(sums[2])}


def format_epoch(row: Mapping[str, Any], max_epochs: int | None = None) -> str:
    """One line of an epoch's metrics, e.g. for ``--quiet`` logs."""
    of = f"/{max_epochs}" if max_epochs else ""
    mark = " *" if row.get("best") else ""
    return (
        f"epoch {row['epoch']}{of}: loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
        f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} | {row['images_per_s']:.0f} img/s "
        f"{row['seconds']:.1f}s{mark}"
    )
