"""The training engine: one stage of the paper's protocol (SPEC §4) per call.

:func:`train_stage` runs a stage of a recipe into ``RUN/<stage>/``::

    best.pt        the weights of the best validation accuracy (ties keep the earlier epoch)
    last.pt        weights + optimiser + early-stopping + RNG state after the last completed
                   epoch (``--resume`` continues from it; written at epoch 0 too); removed
                   when the stage finishes if ``train.keep`` is ``best``
    metrics.jsonl  one JSON line per epoch: epoch, train_loss, train_accuracy, val_loss,
                   val_accuracy, lr, seconds, images_per_s
    recipe.yaml    the resolved recipe;  curves.png  loss/accuracy curves (redrawn per epoch)
    summary.json   stage, status (finished | early_stopped | interrupted | diverged), seed,
                   epochs, best_epoch, best_val_accuracy, best_train_loss, init, and for
                   stage 4 the paper's selection rule

The loop itself is two plain functions, :func:`train_one_epoch` and :func:`evaluate`
(inference through :func:`fertool.evaluation.inference.predict_probs`), in the manner of
the torchvision classification reference.  Keras-faithful details: categorical
cross-entropy on softmax outputs, Adam with Keras' betas and ``eps`` from the recipe
(1e-7; Keras adds it to the uncorrected ``sqrt(v)``, PyTorch to the corrected one -- a
difference far below the noise of training), SGD without momentum, BatchNorm momentum
0.99 (handled by the model), early stopping on validation accuracy with restore-best,
and frozen layers' BatchNorm in inference mode (the controller stage).

Randomness: ``seed`` seeds Python, NumPy and torch (model initialisation, dropout) and
one CPU ``torch.Generator`` that draws the data order and the augmentation parameters.
``train.deterministic`` makes CPU runs bit-reproducible, and an interrupted stage resumed
from ``last.pt`` ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import CLASS_NAMES
from ..checkpoint import (check_same_classes, checkpoint_classes, lineage_entry, load_checkpoint, make_checkpoint,
                          save_checkpoint)
from ..data.datasets import ArraySplit, ImageSplit, batch_indices
from ..errors import CheckpointError, DataError, ModelError, RecipeError, TrainingError
from ..faults import pause_point
from ..locks import holding_lock
from ..progress import Progress
from ..recipe import Recipe, StageConfig, resume_changes, save_recipe, to_dict
from ..utils import append_jsonl, atomic_path, read_jsonl, seed_everything, write_json
from .distributed import DistContext, setup

__all__ = [
    "STAGES",
    "STAGE_DIRS",
    "FINISHED",
    "EarlyStopping",
    "normalise_stage",
    "stage_dir",
    "make_optimizer",
    "set_train_mode",
    "train_one_epoch",
    "evaluate",
    "train_stage",
]

#: Stage names in protocol order and the folder each one writes.
STAGES = ("1", "2", "3", "4", "controller")
STAGE_DIRS = {"1": "stage1", "2": "stage2", "3": "stage3", "4": "stage4", "controller": "controller"}
#: The stage whose best checkpoint a stage starts from by default.
PREVIOUS = {"2": "1", "3": "2", "4": "3", "controller": "4"}
#: Summary statuses of a stage that is done.
FINISHED = ("finished", "early_stopped")
#: Files of a stage folder that ``overwrite`` removes (``init.pt`` is kept).
STAGE_OUTPUTS = ("best.pt", "last.pt", "metrics.jsonl", "curves.png", "summary.json", "recipe.yaml")

Log = Callable[[str], None]


# --------------------------------------------------------------------------- small pieces


def normalise_stage(stage: str | int) -> str:
    """``1``, ``"stage1"``, ``"c"``, ``"controller"`` -> ``"1"`` ... ``"controller"``."""
    text = str(stage).strip().lower()
    if text.startswith("stage"):
        text = text[5:]
    if text in ("c", "ctrl", "controller"):
        return "controller"
    if text in STAGES:
        return text
    raise RecipeError(f"--stage {stage}: unknown stage (expected one of {', '.join(STAGES)})")


def stage_dir(run_dir: str | os.PathLike, stage: str | int) -> Path:
    """``RUN/stage1`` ... ``RUN/controller``."""
    return Path(run_dir) / STAGE_DIRS[normalise_stage(stage)]


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
        return {"patience": self.patience, "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "epoch": self.epoch}

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


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


# --------------------------------------------------------------------------- one epoch


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
    amp: bool = False,
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
    batches = list(batch_indices(len(split), batch_size, shuffle=True, generator=generator,
                                 rank=ctx.rank, world_size=ctx.world_size))
    total_images = sum(len(b) for b in batches)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    fields = dict(fields or {})
    start = time.perf_counter()

    soft = getattr(split, "targets", None)  # (N, C) vote distributions (FER+ probability mode) or None

    def load(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        targets = soft[idx].to(device, non_blocking=True) if soft is not None else None
        return split.load(idx, device), split.labels[idx].to(device, non_blocking=True), targets

    # On a GPU the next batch is read from the cache while the current one computes.
    pool = ThreadPoolExecutor(max_workers=1) if device.type == "cuda" else None
    try:
        pending = pool.submit(load, batches[0]) if (pool and batches) else None
        for i, idx in enumerate(batches):
            if pool is not None:
                x, y, t = pending.result()
                if i + 1 < len(batches):
                    pending = pool.submit(load, batches[i + 1])
            else:
                x, y, t = load(idx)
            if augment is not None and augment.active:
                x = augment(x, aug_generator)  # (B, 3, S, S), same device
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp):
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
                progress(seen, total_images, batch=i + 1, batches=len(batches),
                         loss=float(loss_sum) / seen, accuracy=int(correct) / seen, **fields)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    seconds = time.perf_counter() - start
    totals = ctx.all_reduce(torch.stack([loss_sum.cpu(), correct.cpu().double(), torch.tensor(float(seen), dtype=torch.float64)]))
    images = float(totals[2])
    return {
        "train_loss": float(totals[0]) / max(images, 1.0),
        "train_accuracy": float(totals[1]) / max(images, 1.0),
        "images": int(images),
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else float("nan"),
    }


def evaluate(
    model: nn.Module,
    split: ImageSplit,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    ctx: DistContext | None = None,
    progress: Progress | None = None,
) -> dict:
    """Mean loss (Keras categorical cross-entropy, clipped) and accuracy of ``model`` on ``split``.

    Inference goes through :func:`predict_probs` (eval mode, no gradients).  Under DDP each
    rank predicts every ``world_size``-th image and the sums are reduced over ranks.
    """
    from ..evaluation.inference import predict_probs
    from ..evaluation.metrics import EPSILON

    ctx = ctx or DistContext(device=torch.device(device))
    part: ImageSplit = split
    if ctx.distributed:
        part = _Shard(split, torch.arange(ctx.rank, len(split), ctx.world_size))
    if len(part):
        out = predict_probs(model, part, batch_size=batch_size, device=device, amp=amp,
                            channels_last=channels_last, progress=progress)
        probs = np.asarray(out["probs"], dtype=np.float64)  # (N, C)
        labels = part.labels.numpy()
        picked = np.clip(probs[np.arange(len(labels)), labels], EPSILON, 1.0 - EPSILON)
        sums = torch.tensor([-np.log(picked).sum(), float((probs.argmax(1) == labels).sum()), float(len(labels))],
                            dtype=torch.float64)
    else:
        sums = torch.zeros(3, dtype=torch.float64)
    sums = ctx.all_reduce(sums)
    n = max(float(sums[2]), 1.0)
    return {"loss": float(sums[0]) / n, "accuracy": float(sums[1]) / n, "images": int(sums[2])}


# --------------------------------------------------------------------------- RNG state


def _rng_state(extra_generator: torch.Generator | None) -> dict:
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


def _set_rng_state(state: Mapping[str, Any], extra_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if extra_generator is not None and state.get("aug_generator") is not None:
        extra_generator.set_state(state["aug_generator"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rank_seed(seed: int, rank: int) -> int:
    """Independent per-rank stream (dropout, augmentation) under DDP."""
    return int(np.random.SeedSequence([int(seed) % 2**63, 1 + int(rank)]).generate_state(1, dtype=np.uint64)[0] % 2**63)


# --------------------------------------------------------------------------- data


def _load_data(recipe: Recipe, *, csv: str | None, images: str | None, log: Log,
               progress: Progress | None) -> tuple[ImageSplit, ImageSplit, list[str]]:
    """(training split, validation split, notes) as SPEC §1 and the recipe's data section say."""
    data = recipe.data
    size = recipe.model.input_size
    notes: list[str] = []
    csv = csv or data.csv
    images = images or data.images
    if csv is not None and not Path(csv).is_file():
        raise DataError(f"{csv}: CSV file not found")
    if images is not None and not Path(images).is_dir():
        raise DataError(f"{images}: image folder not found")

    def cache_progress(done: int, total: int | None = None) -> None:
        if progress is not None:
            progress(done, total, phase="cache")

    if images is not None:
        from ..data.cache import open_image_split

        train = open_image_split(images, data.train_split, progress=cache_progress)
        log(f"training images: {images} ({data.train_split}, {len(train):,} images)")
    elif csv is not None:
        train = _csv_training_split(csv, data.train_split, size, truncate=recipe.prepare.truncate)
        log(f"training images: made in memory from {csv} the way `fertool prepare` does "
            f"(48x48 -> {size}x{size} float bilinear, {'floor' if recipe.prepare.truncate else 'round'}, no JPEG); "
            "run `fertool prepare` and pass --images for the reference JPEG round-trip")
    else:
        raise DataError("no training data: pass --images DIR (from `fertool prepare`, or class subfolders) "
                        "or --csv PATH (or set data.images / data.csv in the recipe)")

    fer2013 = tuple(train.class_names) == CLASS_NAMES  # else the CSV's labels do not apply (FER+, folders)
    if data.eval_source == "reference" and csv is not None and fer2013:
        from ..data.datasets import reference_split

        val = reference_split(csv, data.val_split, size)
        log(f"validation images: {data.val_split} of {csv}, made the reference way (float bilinear, no floor/JPEG)")
    elif images is not None:
        from ..data.cache import open_image_split

        val = open_image_split(images, data.val_split, progress=cache_progress)
        if data.eval_source == "reference":
            why = "no CSV given" if csv is None else f"the labels of {csv} are not those of its classes"
            note = (f"validation images: {data.val_split} from the image folder {images} ({why}, so not "
                    "the reference float images of SPEC §1)")
            notes.append(note)
            log(note)
        else:
            log(f"validation images: {data.val_split} from {images}")
    else:  # pragma: no cover - csv is set here (the training split came from it)
        raise DataError("data.eval_source: 'prepared' needs --images")

    for split, role in ((train, "training"), (val, "validation")):
        if len(split) == 0:
            raise DataError(f"{role} split '{split.name}' has no images")
        if split.size != size:
            raise DataError(
                f"{role} images ({split.name}) are {split.size}x{split.size} but model.input_size is {size}: "
                f"prepare the images at that size (prepare.size) or change model.input_size"
            )
        bad = int(((split.labels < 0) | (split.labels >= recipe.model.num_classes)).sum())
        if bad:
            raise DataError(f"{role} split '{split.name}': {bad} labels outside 0..{recipe.model.num_classes - 1}")
    return train, val, notes


def _data_info(recipe: Recipe, *, csv: str | None, images: str | None) -> tuple[dict, str]:
    """(what the data :func:`_load_data` will read is, where it is): data set, class names,
    label mode and how its images were prepared (recorded in every checkpoint's ``extra``)."""
    images = images or recipe.data.images
    if images is not None and Path(images).is_dir():
        from ..data.cache import folder_data

        return folder_data(images), str(images)
    return ({"dataset": "fer2013", "classes": list(CLASS_NAMES), "label_mode": "majority", "prepare": None},
            str(csv or recipe.data.csv or "FER2013"))


def with_data_classes(recipe: Recipe, classes: tuple[str, ...], where: str, log: Log) -> Recipe:
    """``recipe`` with ``model.num_classes`` = the number of ``classes``; ``data.classes``,
    when the recipe lists any, must be exactly these."""
    if recipe.data.classes and tuple(recipe.data.classes) != tuple(classes):
        raise DataError(f"data.classes: the recipe lists {len(recipe.data.classes)} classes "
                        f"({', '.join(recipe.data.classes)}) but {where} holds {len(classes)} ({', '.join(classes)})")
    if recipe.model.num_classes == len(classes):
        return recipe
    log(f"model.num_classes: {len(classes)} (was {recipe.model.num_classes}), the classes of {where}: "
        f"{', '.join(classes)}")
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, num_classes=len(classes)))


def _csv_training_split(csv: str, split: str, size: int, *, truncate: bool) -> ArraySplit:
    """The training split prepared in memory: TF-exact resize + floor, no JPEG (SPEC §1)."""
    from ..data.csv import load_split
    from ..data.resize import to_prepared_uint8

    arrays = load_split(csv, split)
    out = np.empty((len(arrays.images), size, size), dtype=np.uint8)
    for start in range(0, len(out), 512):  # chunks bound the float32 intermediate
        chunk = torch.from_numpy(arrays.images[start : start + 512])
        out[start : start + 512] = to_prepared_uint8(chunk, size, truncate=truncate).numpy()
    return ArraySplit(images=out, labels=torch.from_numpy(np.asarray(arrays.labels, dtype=np.int64)),
                      name=split, rows=np.asarray(arrays.rows))


# --------------------------------------------------------------------------- models


def checkpoint_kind(ckpt: Mapping[str, Any]) -> str:
    """``backbone``, ``lhc`` or ``controller``: which model of the protocol a checkpoint holds."""
    args = ckpt.get("arch_args") or {}
    if ckpt.get("arch") == "lhc_netc" or args.get("controller_init") is not None:
        return "controller"
    if ckpt.get("arch") == "lhc_net" or args.get("lhc"):
        return "lhc"
    return "backbone"


def _lhc_specs(recipe: Recipe) -> list[dict]:
    return [dataclasses.asdict(m) for m in recipe.model.lhc]


def _convert(ckpt: dict, want: str, recipe: Recipe, *, seed: int, source: str, stage: str) -> tuple[dict, bool]:
    """``ckpt`` as a model of kind ``want``, adding LHC modules / controllers when needed."""
    have = checkpoint_kind(ckpt)
    if have == want:
        return ckpt, False
    if (have, want) not in (("backbone", "lhc"), ("backbone", "controller"), ("lhc", "controller")):
        raise TrainingError(
            f"{source}: holds a {have} model ({ckpt.get('arch')}), but stage {stage} trains a {want} model "
            f"(train.stages.{stage}.model)"
        )
    from ..models.lhc_net import augment_lhc

    new = augment_lhc(
        ckpt,
        lhc=_lhc_specs(recipe) if have == "backbone" else None,
        controller_init=list(recipe.model.controller_init) if want == "controller" else None,
        seed=seed,
        source_path=source,
        recipe=to_dict(recipe),
    )
    parent_seed = (ckpt.get("extra") or {}).get("lhc_seed")
    if have == "lhc" and parent_seed is not None:  # the LHC modules keep their original init seed
        new["extra"]["lhc_seed"] = parent_seed
    return new, True


def _pretrained_checkpoint(recipe: Recipe, kind: str, seed: int, log: Log, classes: tuple[str, ...]) -> dict:
    """Stage 1's start: ``model.pretrained`` (Keras .h5[.gz], torchvision .pth or fertool checkpoint) or scratch."""
    from ..models import arch_from_recipe, build_model

    arch, args = arch_from_recipe(recipe.model, kind)
    torch.manual_seed(seed)
    model = build_model(arch, **args)
    lineage: list[dict] = []
    path = recipe.model.pretrained
    if path is None:
        log("warning: model.pretrained is not set: stage 1 starts from random weights, not ImageNet "
            "(see `fertool import`)")
    else:
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(
                f"model.pretrained: {p}: no such file (a local Keras .h5, torchvision .pth or fertool checkpoint; "
                "null trains from scratch)"
            )
        if p.suffix.lower() == ".pth" and recipe.model.backbone == "resnet34_tv":
            from ..models.resnet import load_torchvision_weights

            load_torchvision_weights(model, str(p))
            lineage.append({"path": str(p), "arch": "torchvision-resnet34", "stage": None, "epoch": None})
            log(f"stage 1 starts from the torchvision ImageNet weights of {p}")
        else:
            if p.name.lower().endswith((".h5", ".hdf5", ".h5.gz", ".hdf5.gz")):
                from ..models.keras import import_keras

                source = import_keras(p, input_size=recipe.model.input_size,
                                      num_classes=recipe.model.num_classes, seed=seed)
            else:
                source = load_checkpoint(p)
            head_copied = _load_backbone(model, source["state_dict"], str(p))
            lineage = list(source.get("lineage") or []) + [lineage_entry(p, source)]
            log(f"stage 1 starts from the pre-trained weights of {p} (classifier head "
                f"{'copied' if head_copied else 'newly initialised'})")
    return make_checkpoint(arch=arch, arch_args=args, state_dict=model.state_dict(), stage=None,
                           recipe=to_dict(recipe), class_names=classes, lineage=lineage, extra={})


def _load_backbone(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> bool:
    """Copy every backbone tensor of ``state`` (all must fit); the head only when it fits whole.

    Returns True when the classifier head was copied too.
    """
    target = model.state_dict()
    body = {k for k in target if not k.startswith(("head.", "lhc."))}
    missing = sorted(body - set(state))
    unexpected = sorted(k for k in state if k not in target and not k.startswith("head."))
    wrong = sorted(k for k in body & set(state) if tuple(state[k].shape) != tuple(target[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{name} {len(keys)} tensors ({', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''})"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape of", wrong)) if keys]
        raise CheckpointError(f"model.pretrained: {source}: weights do not fit the backbone: {'; '.join(parts)}")
    head = [k for k in target if k.startswith("head.")]
    head_fits = all(k in state and tuple(state[k].shape) == tuple(target[k].shape) for k in head)
    new = {k: state[k] for k in body}
    if head_fits:
        new.update({k: state[k] for k in head})
    model.load_state_dict({**target, **new})
    return head_fits


def _initial_checkpoint(
    recipe: Recipe, stage: str, cfg: StageConfig, run_dir: Path, sdir: Path, *, init: str | None,
    seed: int, overwrite: bool, ctx: DistContext, log: Log, classes: tuple[str, ...],
) -> tuple[dict, str, dict | None]:
    """(start checkpoint, where it came from, parent checkpoint when LHC modules were added here)."""
    if init is not None:
        source = Path(init)
        ckpt = load_checkpoint(source)
    elif stage == "1":
        return _pretrained_checkpoint(recipe, cfg.model, seed, log, classes), recipe.model.pretrained or "scratch", None
    elif stage in ("4", "controller") and (sdir / "init.pt").is_file():
        source = sdir / "init.pt"
        ckpt = load_checkpoint(source)
        log(f"stage {stage} starts from {source}")
    else:
        prev = PREVIOUS[stage]
        source = stage_dir(run_dir, prev) / "best.pt"
        if not source.is_file():
            raise TrainingError(
                f"{source}: not found: train stage {prev} first (fertool train --stage {prev} --run {run_dir}) "
                "or pass --init CKPT"
            )
        ckpt = load_checkpoint(source)
    converted, added = _convert(ckpt, cfg.model, recipe, seed=seed, source=str(source), stage=stage)
    if not added:
        if init is not None or stage not in ("4", "controller"):
            log(f"stage {stage} starts from {source}")
        return ckpt, str(source), None
    what = "LHC modules (model.lhc)" if checkpoint_kind(ckpt) == "backbone" else "controllers (model.controller_init)"
    target = sdir / "init.pt"
    if ctx.is_main and (not target.exists() or overwrite):
        save_checkpoint(target, converted)
        log(f"stage {stage}: added {what} to {source} with seed {seed} (as `fertool augment-lhc` does); saved {target}")
        return converted, str(target), ckpt
    log(f"stage {stage}: added {what} to {source} with seed {seed} (as `fertool augment-lhc` does)")
    return converted, f"{source} + {'lhc' if 'LHC' in what else 'controller'} (seed {seed})", ckpt


def _check_input_size(ckpt: Mapping[str, Any], recipe: Recipe, source: str) -> None:
    size = (ckpt.get("arch_args") or {}).get("input_size")
    if size is not None and int(size) != recipe.model.input_size:
        raise ModelError(
            f"{source}: the model takes {size}x{size} images but model.input_size is {recipe.model.input_size}"
        )


def _training_provenance(recipe: Recipe, *, csv: str | None, images: str | None) -> dict:
    """What the training images are (checkpoint ``data``): the prepared folder's CSV, or the CSV."""
    from ..data.provenance import csv_provenance, images_provenance

    seeds = (recipe.sample.seed, 0)
    images = images or recipe.data.images
    if images is not None:
        return images_provenance(images, sample_seeds=seeds)
    return csv_provenance(csv or recipe.data.csv, sample_seeds=seeds)


# --------------------------------------------------------------------------- the stage


class _Outputs:
    """Paths of the files of a stage folder."""

    def __init__(self, folder: Path):
        self.dir = folder
        self.best, self.last = folder / "best.pt", folder / "last.pt"
        self.metrics, self.curves = folder / "metrics.jsonl", folder / "curves.png"
        self.summary, self.recipe = folder / "summary.json", folder / "recipe.yaml"


def _read_summary(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _check_stage_folder(out: _Outputs, stage: str, *, resume: bool, overwrite: bool, log: Log) -> dict | None:
    """Refuse to clobber a stage; returns the summary of a finished stage to hand back, else None."""
    summary = _read_summary(out.summary)
    status = (summary or {}).get("status")
    if overwrite:
        if summary or out.last.exists() or out.best.exists():
            log(f"--overwrite: removing the previous outputs of stage {stage} in {out.dir}")
        return None
    if status in FINISHED:
        if resume:
            log(f"stage {stage} in {out.dir} is already done ({status}); nothing to resume")
            return summary
        raise TrainingError(
            f"{out.dir}: stage {stage} is already done ({status}, best val accuracy "
            f"{summary.get('best_val_accuracy')}); pass --overwrite to train it again"
        )
    if resume:
        if not out.last.is_file():
            raise TrainingError(f"{out.last}: nothing to resume (no last checkpoint of stage {stage})")
        return None
    if out.last.exists() or out.best.exists() or out.metrics.exists():
        raise TrainingError(
            f"{out.dir}: holds an unfinished run of stage {stage} (status {status or 'unknown'}); "
            "pass --resume to continue it or --overwrite to start again"
        )
    return None


def _locked_stage(args: Mapping[str, Any]) -> Path | None:
    """The stage folder a :func:`train_stage` call writes; under ``torchrun`` only rank 0 locks it."""
    return stage_dir(args["run_dir"], args["stage"]) if os.environ.get("RANK", "0") == "0" else None


@holding_lock(_locked_stage)  # one writer per stage folder, for the whole call
def train_stage(
    recipe: Recipe,
    stage: str | int,
    run_dir: str | os.PathLike,
    *,
    csv: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    allow_test_selection: bool = False,
    progress: Progress | None = None,
    log: Log | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    train_data: ImageSplit | None = None,
    val_data: ImageSplit | None = None,
) -> dict:
    """Train one stage of ``recipe`` into ``run_dir/<stage>/``; return its summary (SPEC §4).

    The stage starts from ``init``, else from the previous stage's ``best.pt`` (stage 4
    from ``stage4/init.pt``, or stage 3's best with LHC modules added here with ``seed``;
    the controller stage likewise from stage 4), and stage 1 from ``model.pretrained`` or
    scratch.  ``progress(done, total, **fields)`` reports batches (``phase="train"``) and
    validation images (``phase="val"``); ``log(message)`` one-line notes; ``on_epoch(row)``
    each epoch's metrics row (without it the row goes to ``log``).  ``train_data`` /
    ``val_data`` give ready splits instead of ``csv`` / ``images``.

    Raises :class:`TrainingError` on a non-finite loss (status ``diverged``, best.pt kept);
    Ctrl-C leaves a clean ``last.pt`` and status ``interrupted`` and re-raises.  Under
    ``torchrun`` every rank calls this; only rank 0 writes files.
    """
    stage = normalise_stage(stage)
    ctx = setup(device)
    try:
        return _StageRun(recipe, stage, Path(run_dir), ctx, csv=None if csv is None else str(csv),
                         images=None if images is None else str(images), init=None if init is None else str(init),
                         seed=int(seed), resume=resume, overwrite=overwrite, allow_test_selection=allow_test_selection,
                         progress=progress, log=log, on_epoch=on_epoch, train_data=train_data,
                         val_data=val_data).run()
    finally:
        ctx.close()


class _StageRun:
    """State of one :func:`train_stage` call (kept in one place so ``last.pt`` can hold it)."""

    def __init__(self, recipe: Recipe, stage: str, run_dir: Path, ctx: DistContext, *, csv, images, init, seed,
                 resume, overwrite, allow_test_selection, progress, log, on_epoch, train_data, val_data):
        if stage not in recipe.train.stages:
            raise RecipeError(f"train.stages.{stage}: the recipe has no such stage (has: {', '.join(recipe.train.stages)})")
        self.recipe, self.stage, self.run_dir, self.ctx = recipe, stage, run_dir, ctx
        self.cfg: StageConfig = recipe.train.stages[stage]
        self.csv, self.images, self.init, self.seed = csv, images, init, seed
        self.resume, self.overwrite, self.allow_test_selection = resume, overwrite, allow_test_selection
        self.on_epoch = on_epoch
        self.train_data, self.val_data = train_data, val_data
        self.data: dict | None = None  # provenance of the training images (given splits: unknown)
        main = ctx.is_main
        self.log: Log = (log or (lambda message: None)) if main else (lambda message: None)
        self.progress = progress if main else None
        self.out = _Outputs(stage_dir(run_dir, stage))
        self.warnings: list[str] = []
        self.device = ctx.device
        on_cuda = self.device.type == "cuda"
        self.amp = recipe.train.amp and on_cuda
        self.channels_last = recipe.train.channels_last and on_cuda

    # ------------------------------------------------------------------ setup

    def run(self) -> dict:
        recipe, stage, ctx = self.recipe, self.stage, self.ctx
        done = _check_stage_folder(self.out, stage, resume=self.resume, overwrite=self.overwrite, log=self.log)
        if done is not None:
            return done
        data = recipe.data
        if data.val_split == data.test_split:
            if not self.allow_test_selection:
                raise RecipeError(
                    f"data.val_split: '{data.val_split}' is the test split (data.test_split): selecting the model "
                    "on the test set inflates the reported accuracy; pass --allow-test-selection to do it anyway"
                )
            self.warnings.append(f"model selection on the test split {data.test_split} (--allow-test-selection): "
                                 "test accuracy of this run is optimistic")
            self.log("warning: " + self.warnings[-1])

        if (self.train_data is None) != (self.val_data is None):
            raise DataError("train_stage: give both train_data and val_data, or neither")
        if self.train_data is not None:
            self.data_info = {"dataset": None, "classes": list(self.train_data.class_names)}
            where = f"the training split {self.train_data.name}"
        else:
            self.data_info, where = _data_info(recipe, csv=self.csv, images=self.images)
        self.classes = tuple(self.data_info["classes"])
        recipe = self.recipe = with_data_classes(recipe, self.classes, where, self.log)
        gen = seed_everything(self.seed, deterministic=recipe.train.deterministic)

        if self.resume:
            last = load_checkpoint(self.out.last)
            if last.get("stage") != stage:
                raise CheckpointError(f"{self.out.last}: is a checkpoint of stage {last.get('stage')}, not {stage}")
            self._check_resume_recipe(last)
            state = last["extra"]["resume"]
            if state["seed"] != self.seed:
                self.log(f"resuming with the run's seed {state['seed']} (--seed {self.seed} ignored)")
                self.seed = int(state["seed"])
                gen = seed_everything(self.seed, deterministic=recipe.train.deterministic)
            start_ckpt, self.init_label = last, state["init"]
            self.lineage, self.init_extra = list(last.get("lineage") or []), dict(state["init_extra"])
            self.reference = state.get("selection_reference")
            self.warnings = list(dict.fromkeys(state.get("warnings", []) + self.warnings))
        else:
            start_ckpt, self.init_label, parent = _initial_checkpoint(
                recipe, stage, self.cfg, self.run_dir, self.out.dir, init=self.init, seed=self.seed,
                overwrite=self.overwrite, ctx=ctx, log=self.log, classes=self.classes)
            self.lineage = list(start_ckpt.get("lineage") or []) + [lineage_entry(self.init_label, start_ckpt)]
            self.init_extra = {k: v for k, v in (start_ckpt.get("extra") or {}).items() if k == "lhc_seed"}
            self.reference = None
            self.parent = parent
        _check_input_size(start_ckpt, recipe, self.init_label)
        check_same_classes(checkpoint_classes(start_ckpt), self.classes, model=self.init_label, data=where)

        if self.train_data is not None:
            train_split, val_split = self.train_data, self.val_data
        else:
            train_split, val_split, notes = _load_data(recipe, csv=self.csv, images=self.images, log=self.log,
                                                       progress=self.progress)
            self.warnings.extend(notes)
            self.data = _training_provenance(recipe, csv=self.csv, images=self.images)
        self.train_split, self.val_split = train_split, val_split

        from ..models import build_model, freeze_except_controllers

        self.arch, self.arch_args = start_ckpt["arch"], dict(start_ckpt["arch_args"])
        model = build_model(self.arch, **self.arch_args)
        missing, unexpected = model.load_state_dict(start_ckpt["state_dict"], strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{self.init_label}: weights do not fit '{self.arch}' "
                                  f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
        if self.cfg.model == "controller":
            params = freeze_except_controllers(model)
        else:
            params = [p for p in model.parameters() if p.requires_grad]
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = make_optimizer(params, self.cfg)
        self.es = EarlyStopping(self.cfg.patience)
        self.best_row: dict | None = None
        self.start_epoch = self.saved_epoch = 0
        if self.resume:
            if last.get("optimizer_state") is not None:
                self.optimizer.load_state_dict(last["optimizer_state"])
            self.es.load_state_dict(state["early_stopping"])
            self.best_row = state.get("best_row")
            self.start_epoch = self.saved_epoch = int(last["epoch"])
        self.net = self._wrap(model)

        # Separate per-rank streams for dropout and augmentation under DDP; the data-order
        # generator stays identical on every rank so the shards partition the epoch.
        self.gen = gen
        self.aug_gen = None
        if ctx.distributed:
            torch.manual_seed(_rank_seed(self.seed, ctx.rank))
            self.aug_gen = torch.Generator().manual_seed(_rank_seed(self.seed, ctx.rank + ctx.world_size))

        # Everything checked: only now may --overwrite remove the previous results.
        ctx.barrier()
        if self.overwrite and ctx.is_main:
            for name in STAGE_OUTPUTS:
                (self.out.dir / name).unlink(missing_ok=True)
        if ctx.is_main:
            self.out.dir.mkdir(parents=True, exist_ok=True)
            save_recipe(recipe, self.run_dir / "recipe.yaml")
            save_recipe(recipe, self.out.recipe)
        if stage == "4" and self.reference is None and not self.resume:
            self.reference = self._reference_loss(start_ckpt)

        if self.resume:
            self._restore_rng(last)
            if ctx.is_main and self.out.metrics.is_file():  # drop epochs that last.pt does not hold
                rows = [r for r in read_jsonl(self.out.metrics) if r.get("epoch", 0) <= self.start_epoch]
                with atomic_path(self.out.metrics) as tmp:
                    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            self.log(f"stage {stage}: resuming after epoch {self.start_epoch} from {self.out.last}")
        else:
            self._save_last(0)
        return self._loop()

    def _check_resume_recipe(self, last: Mapping[str, Any]) -> None:
        """--resume continues the run that ``last`` holds: refuse a recipe that would change it."""
        refused, accepted = resume_changes(last.get("recipe") or {}, self.recipe, self.stage,
                                           epochs_done=int(last.get("epoch") or 0))
        if refused:
            raise RecipeError([f"{self.out.last}: stage {self.stage} was started with another recipe; --resume "
                               f"continues it with the same one (saved in {self.out.recipe}), changed here:",
                               *(f"  {change}" for change in refused)])
        for change in accepted:
            self.warnings.append(f"resumed with a changed recipe: {change}")
            self.log("note: " + self.warnings[-1])

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP (with optional SyncBatchNorm) and torch.compile around ``model`` as the recipe asks."""
        net: nn.Module = model
        ctx, train = self.ctx, self.recipe.train
        if ctx.distributed:
            if train.sync_bn:
                if self.device.type == "cuda":
                    net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
                    self.model = model = net
                else:
                    self.log("train.sync_bn: SyncBatchNorm needs CUDA; each CPU rank keeps its own batch statistics")
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if train.compile:
            net = torch.compile(net)
        return net

    def _restore_rng(self, last: Mapping[str, Any]) -> None:
        state = last["extra"]["resume"]
        ranks = state["rng"]
        self.gen.set_state(state["order_generator"])
        if len(ranks) != self.ctx.world_size:
            self.log(f"resuming with {self.ctx.world_size} processes where the run had {len(ranks)}: "
                     "the random streams continue from a fresh seed, not bit-exactly")
            return
        _set_rng_state(ranks[self.ctx.rank], self.aug_gen)

    # ------------------------------------------------------------------ stage 4 selection rule

    def _reference_loss(self, start: Mapping[str, Any]) -> dict:
        """Training loss of the starting network, for the paper's stage-4 rule.

        Preferred: the starting ResNet's recorded training loss at its best epoch (what a
        Keras history holds, and what stage 4's epochs record): the start checkpoint's own
        metrics, else its parent's (the stage-3 best.pt it was made from).  When no record
        exists the loss is measured: the mean loss of the starting network in eval mode over
        the training set, and stage 4's best model is then measured the same way.
        """
        candidates: list[tuple[Mapping[str, Any], str]] = [(start, self.init_label)]
        if getattr(self, "parent", None) is not None:
            candidates.append((self.parent, str((start.get("lineage") or [{}])[-1].get("path"))))
        elif start.get("lineage"):
            path = Path(str(start["lineage"][-1].get("path")))
            if path.is_file():
                try:
                    candidates.append((load_checkpoint(path), str(path)))
                except CheckpointError:
                    pass
        for ckpt, where in candidates:
            value = (ckpt.get("metrics") or {}).get("train_loss")
            if value is not None and math.isfinite(float(value)):
                self.log(f"selection rule: reference training loss {float(value):.4f} recorded in {where}")
                return {"train_loss": float(value), "method": "recorded", "source": where}
        value = self._measure_train_loss()
        self.log(f"selection rule: no recorded training loss of the starting network; measured {value:.4f} "
                 "(eval mode, whole training set)")
        return {"train_loss": value, "method": "measured", "source": self.init_label}

    def _measure_train_loss(self) -> float:
        train = self.recipe.train
        return evaluate(self.model, self.train_split, batch_size=train.eval_batch_size, device=self.device,
                        amp=self.amp, channels_last=self.channels_last, ctx=self.ctx)["loss"]

    def _selection(self) -> dict | None:
        if self.reference is None or self.best_row is None:
            return None
        if self.reference["method"] == "recorded":
            loss = float(self.best_row["train_loss"])
        else:
            best = load_checkpoint(self.out.best) if self.ctx.is_main else None
            state = self.ctx.broadcast_object(best["state_dict"] if best else None)
            self.model.load_state_dict(state)
            loss = self._measure_train_loss()
        ref = self.reference["train_loss"]
        factor = self.recipe.train.selection_factor
        ratio = loss / ref if ref > 0 else math.inf
        accepted = bool(ratio < factor)
        self.log(f"selection rule: stage-4 training loss {loss:.4f} vs starting network {ref:.4f} "
                 f"(ratio {ratio:.3f}, factor {factor}): {'accepted' if accepted else 'REJECTED'}")
        return {"reference_train_loss": ref, "train_loss": loss, "ratio": ratio, "factor": factor,
                "accepted": accepted, "method": self.reference["method"], "reference_source": self.reference["source"]}

    # ------------------------------------------------------------------ checkpoints and summary

    def _checkpoint(self, epoch: int, metrics: Mapping[str, Any], *, with_state: bool) -> dict:
        extra: dict[str, Any] = {**self.init_extra, "seed": self.seed, "init": self.init_label, "data": {**self.data_info, "provenance": self.data}}
        if with_state:
            extra["resume"] = {
                "seed": self.seed,
                "init": self.init_label,
                "init_extra": self.init_extra,
                "early_stopping": self.es.state_dict(),
                "best_row": self.best_row,
                "selection_reference": self.reference,
                "warnings": self.warnings,
                "order_generator": self.gen.get_state(),
                "rng": None,  # filled below
            }
        return make_checkpoint(
            arch=self.arch, arch_args=self.arch_args, state_dict=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict() if with_state else None,
            stage=self.stage, epoch=epoch, metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            recipe=to_dict(self.recipe), class_names=self.classes, lineage=self.lineage, extra=extra,
        )

    def _save_last(self, epoch: int) -> None:
        """last.pt after ``epoch`` (a collective under DDP: every rank sends its RNG state)."""
        rng = self.ctx.all_gather_object(_rng_state(self.aug_gen))
        self.saved_epoch = epoch
        if not self.ctx.is_main:
            return
        ckpt = self._checkpoint(epoch, self.best_row or {}, with_state=True)
        ckpt["extra"]["resume"]["rng"] = rng
        save_checkpoint(self.out.last, ckpt)

    def _summary(self, status: str, epoch: int, **more: Any) -> dict:
        row = self.best_row or {}
        summary = {
            "stage": self.stage,
            "status": status,
            "seed": self.seed,
            "epochs": epoch,
            "max_epochs": self.cfg.max_epochs,
            "patience": self.cfg.patience,
            "best_epoch": self.es.best_epoch or None,
            "best_val_accuracy": row.get("val_accuracy"),
            "best_val_loss": row.get("val_loss"),
            "best_train_loss": row.get("train_loss"),
            "best_train_accuracy": row.get("train_accuracy"),
            "init": self.init_label,
            "arch": self.arch,
            "device": str(self.device),
            "world_size": self.ctx.world_size,
            "warnings": self.warnings,
            **more,
        }
        if self.ctx.is_main:
            write_json(self.out.summary, summary)
        return summary

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> dict:
        recipe, cfg, ctx, stage = self.recipe, self.cfg, self.ctx, self.stage
        from ..data.augment import KerasAugment

        augment = KerasAugment(cfg.augment)
        batch_size = max(1, cfg.batch_size // ctx.world_size)
        if ctx.distributed and cfg.batch_size % ctx.world_size:
            self.log(f"batch size {cfg.batch_size} is not divisible by {ctx.world_size} processes: {batch_size} per process")
        sync_every = 1 if self.device.type == "cpu" else 25
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.log(f"stage {stage}: {self.arch}, {trainable:,} trainable parameters, {cfg.optimizer} lr {cfg.lr}, "
                 f"batch {cfg.batch_size}, patience {cfg.patience}, up to {cfg.max_epochs} epochs, "
                 f"{len(self.train_split):,} training / {len(self.val_split):,} validation images, "
                 f"augmentation {augment if augment.active else 'none'}, device {self.device}"
                 + (f" x {ctx.world_size} processes" if ctx.distributed else ""))
        epoch = self.start_epoch
        status = "early_stopped" if self.es.should_stop else "finished"
        total_seconds, rates = 0.0, []
        try:
            while status == "finished" and epoch < cfg.max_epochs:
                epoch += 1
                fields = {"phase": "train", "epoch": epoch, "epochs": cfg.max_epochs, "stage": stage}
                set_train_mode(self.net)
                try:
                    t = train_one_epoch(
                        self.net, self.train_split, self.optimizer, batch_size=batch_size, device=self.device,
                        generator=self.gen, augment=augment, aug_generator=self.aug_gen, amp=self.amp,
                        channels_last=self.channels_last, ctx=ctx, sync_every=sync_every,
                        progress=self.progress, fields=fields)
                except NonFiniteLossError as exc:
                    return self._diverged(epoch, exc)
                pause_point("epoch")  # fault tests: killed with the epoch trained, not yet saved
                ctx.average_buffers(self.model)  # the same BatchNorm statistics on every rank
                v = evaluate(self.model, self.val_split, batch_size=recipe.train.eval_batch_size, device=self.device,
                             amp=self.amp, channels_last=self.channels_last, ctx=ctx,
                             progress=self._val_progress(epoch))
                total_seconds += t["seconds"]
                rates.append(t["images_per_s"])
                row = {
                    "epoch": epoch,
                    "train_loss": t["train_loss"],
                    "train_accuracy": t["train_accuracy"],
                    "val_loss": v["loss"],
                    "val_accuracy": v["accuracy"],
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "seconds": t["seconds"],
                    "images_per_s": t["images_per_s"],
                    "images": t["images"],
                }
                improved = self.es.update(v["accuracy"], epoch)
                if improved:
                    self.best_row = dict(row)
                row["best"] = improved
                if ctx.broadcast_flag(self.es.should_stop):  # rank 0 decides for all
                    status = "early_stopped"
                if ctx.is_main:
                    append_jsonl(self.out.metrics, row)
                    if improved:
                        save_checkpoint(self.out.best, self._checkpoint(epoch, row, with_state=False))
                self._save_last(epoch)
                if ctx.is_main:
                    self._plot()
                self._report(row)
        except KeyboardInterrupt:
            self._summary("interrupted", self.saved_epoch)
            self.log(f"stage {stage}: interrupted; {self.out.last} holds epoch {self.saved_epoch} "
                     "(continue with --resume)")
            raise
        if status == "early_stopped":
            self.log(f"stage {stage}: early stop after epoch {epoch}: no val accuracy gain for {cfg.patience} epochs; "
                     f"best {self.es.best:.4f} at epoch {self.es.best_epoch} ({self.out.best})")
        else:
            self.log(f"stage {stage}: finished {epoch} epochs; best val accuracy {self.es.best:.4f} at epoch "
                     f"{self.es.best_epoch} ({self.out.best})")
        extra: dict[str, Any] = {
            "seconds": total_seconds,
            "images_per_s": float(np.mean(rates)) if rates else None,
        }
        if stage == "4":
            extra["selection"] = self._selection()
        if ctx.distributed:
            extra["ranks_consistent"] = self._check_ranks()
        summary = self._summary(status, epoch, **extra)
        if recipe.train.keep == "best" and ctx.is_main:
            self.out.last.unlink(missing_ok=True)  # a finished stage is never resumed
        return summary

    def _diverged(self, epoch: int, exc: NonFiniteLossError) -> dict:
        where = (f"{self.out.best} (epoch {self.es.best_epoch}, val accuracy {self.es.best:.4f}) is intact"
                 if self.es.best_epoch else "no best checkpoint was written yet")
        self._summary("diverged", self.saved_epoch, diverged_at={"epoch": epoch, "batch": exc.batch, "loss": exc.value})
        raise TrainingError(
            f"stage {self.stage}: the training loss became {exc.value} at epoch {epoch}, batch {exc.batch}; "
            f"stopped. {where}; try a lower train.stages.{self.stage}.lr"
        )

    def _check_ranks(self) -> bool:
        """Every rank must end with the same weights (a cheap checksum, gathered)."""
        with torch.no_grad():
            total = sum(float(t.double().sum()) for t in self.model.state_dict().values() if t.is_floating_point())
        sums = self.ctx.all_gather_object(total)
        if len(set(sums)) != 1:
            raise TrainingError(f"stage {self.stage}: DDP ranks ended with different weights (checksums {sums})")
        return True

    def _val_progress(self, epoch: int) -> Progress | None:
        if self.progress is None:
            return None
        progress, cfg = self.progress, self.cfg

        def report(done: int, total: int | None = None) -> None:
            progress(done, total, phase="val", epoch=epoch, epochs=cfg.max_epochs, stage=self.stage)

        return report

    def _plot(self) -> None:
        from .plots import plot_curves

        title = f"stage {self.stage} ({self.arch}, seed {self.seed})"
        plot_curves(self.out.metrics, self.out.curves, title=title)

    def _report(self, row: Mapping[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        if self.on_epoch is not None:
            self.on_epoch(dict(row, stage=self.stage, max_epochs=self.cfg.max_epochs,
                               best_epoch=self.es.best_epoch, wait=self.es.wait, patience=self.cfg.patience))
        else:
            self.log(format_epoch(row, self.cfg.max_epochs))


def format_epoch(row: Mapping[str, Any], max_epochs: int | None = None) -> str:
    """One line of an epoch's metrics, e.g. for ``--quiet`` logs."""
    of = f"/{max_epochs}" if max_epochs else ""
    mark = " *" if row.get("best") else ""
    return (f"epoch {row['epoch']}{of}: loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} | {row['images_per_s']:.0f} img/s "
            f"{row['seconds']:.1f}s{mark}")
