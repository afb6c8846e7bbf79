"""The record a stage run passes between its steps, and the files it writes.

``RUN/<stage>/`` holds::

    best.pt        the weights of the best validation accuracy (ties keep the earlier epoch)
    last.pt        weights + optimiser + early-stopping + RNG state after the last completed
                   epoch (``--resume`` continues from it; written at epoch 0 too)
    metrics.jsonl  one JSON line per epoch: epoch, train_loss, train_accuracy, val_loss,
                   val_accuracy, lr, seconds, images_per_s
    recipe.yaml    the resolved recipe;  curves.png  loss/accuracy curves (redrawn every 30 s and at the end)
    summary.json   stage, status (finished | early_stopped | interrupted | diverged), seed (data
                   seed), init_seed,
                   epochs, best_epoch, best_val_accuracy, best_train_loss, init, options (the
                   training options beyond the paper that are on; {} for the paper), skipped_steps
                   (fp16), and for stage 4 the paper's selection rule
    tensorboard/   TensorBoard events (``train.log: [tensorboard]``)

With ``ema`` on, best.pt holds the averaged weights (extra ``train_state_dict``: the trained
ones) and last.pt the trained weights (extra ``ema_state_dict`` and the EMA's state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import CLASS_NAMES
from ..checkpoint import make_checkpoint, save_checkpoint
from ..data.datasets import ImageSplit
from ..errors import TrainingError
from ..files import read_json, write_json
from ..progress import Progress
from ..protocol import FINISHED
from ..recipe import Recipe, StageConfig, to_dict
from .callbacks import CallbackList
from .distributed import DistContext
from .loop import EarlyStopping
from .rng import rng_state
from .schedule import active_options
from .start import Start

__all__ = ["StageOutputs", "Stage", "STAGE_OUTPUTS", "check_stage_folder", "save_best", "save_last", "write_summary"]

Log = Callable[[str], None]

#: Files of a stage folder that ``overwrite`` removes (``init.pt`` is kept).
STAGE_OUTPUTS = ("best.pt", "last.pt", "metrics.jsonl", "curves.png", "summary.json", "recipe.yaml")


class StageOutputs:
    """Paths of the files of a stage folder."""

    def __init__(self, folder: Path):
        self.dir = folder
        self.best, self.last = folder / "best.pt", folder / "last.pt"
        self.metrics, self.curves = folder / "metrics.jsonl", folder / "curves.png"
        self.summary, self.recipe = folder / "summary.json", folder / "recipe.yaml"


@dataclass
class Stage:
    """Everything one stage run needs once it is built: made by ``build``, read by the loop."""

    recipe: Recipe
    stage: str
    cfg: StageConfig
    ctx: DistContext
    out: StageOutputs
    start: Start
    model: nn.Module  # the bare model (weights, state dicts)
    net: nn.Module  # what the loop calls: the model under DDP / torch.compile
    optimizer: torch.optim.Optimizer
    train_split: ImageSplit
    val_split: ImageSplit
    gen: torch.Generator  # data order (the same on every rank)
    aug_gen: torch.Generator | None  # augmentation draws (per rank under DDP; None = ``gen``)
    precision: str  # training (train.precision)
    eval_precision: str  # validation and the stage-4 rule (train.eval_precision)
    channels_last: bool
    log: Log
    progress: Progress | None
    on_epoch: Callable[[dict], None] | None
    es: EarlyStopping
    warnings: list[str] = field(default_factory=list)
    classes: tuple[str, ...] = CLASS_NAMES  # the data's class names, index = output
    data_info: dict = field(default_factory=dict)  # what the training data is (checkpoint extra "data")
    best_row: dict | None = None
    saved_epoch: int = 0
    reference: dict | None = None  # stage 4: the starting network's training loss
    callbacks: CallbackList = field(default_factory=CallbackList)  # training events (main process)
    ema: nn.Module | None = None  # AveragedModel of the weights (cfg.ema > 0)
    scaler: torch.amp.GradScaler | None = None  # fp16
    step: int = 0  # optimiser steps since the stage began
    skipped_steps: int = 0  # fp16 steps skipped for inf/NaN gradients

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and kept as best.pt: the EMA when on."""
        return self.model if self.ema is None else self.ema.module

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def arch(self) -> str:
        return self.start.ckpt["arch"]


def check_stage_folder(out: StageOutputs, stage: str, *, resume: bool, overwrite: bool, log: Log) -> dict | None:
    """Refuse to clobber a stage; returns the summary of a finished stage to hand back, else None."""
    summary = read_json(out.summary)
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


def _checkpoint(run: Stage, epoch: int, metrics: Mapping[str, Any], *, with_state: bool) -> dict:
    start = run.start
    extra: dict[str, Any] = {
        **start.init_extra,
        "seed": start.seed,
        "init_seed": start.init_seed,
        "init": start.label,
        "data": run.data_info,
    }
    weights = run.model.state_dict()
    if run.ema is not None:
        # best.pt: the EMA weights (validated, used downstream) and the trained ones beside them;
        # last.pt: the trained weights (training continues from them) and the EMA's state.
        ema_weights = run.ema.module.state_dict()
        if with_state:
            extra["ema_state_dict"] = ema_weights
        else:
            extra["train_state_dict"], weights = weights, ema_weights
    if with_state:
        extra["resume"] = {
            "seed": start.seed,
            "init_seed": start.init_seed,
            "init": start.label,
            "init_extra": start.init_extra,
            "early_stopping": run.es.state_dict(),
            "best_row": run.best_row,
            "selection_reference": run.reference,
            "warnings": run.warnings,
            "order_generator": run.gen.get_state(),
            "rng": None,  # filled by save_last
            "step": run.step,
            "skipped_steps": run.skipped_steps,
        }
        if run.ema is not None:
            extra["resume"]["ema"] = run.ema.state_dict()
        if run.scaler is not None:
            extra["resume"]["scaler"] = run.scaler.state_dict()
    return make_checkpoint(
        arch=run.arch,
        arch_args=dict(start.ckpt["arch_args"]),
        state_dict=weights,
        optimizer_state=run.optimizer.state_dict() if with_state else None,
        stage=run.stage,
        epoch=epoch,
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        recipe=to_dict(run.recipe),
        class_names=run.classes,
        lineage=start.lineage,
        extra=extra,
    )


def save_best(run: Stage, epoch: int, row: Mapping[str, Any]) -> None:
    """best.pt: the weights of ``epoch`` (rank 0 only)."""
    save_checkpoint(run.out.best, _checkpoint(run, epoch, row, with_state=False))


def save_last(run: Stage, epoch: int) -> None:
    """last.pt after ``epoch`` (a collective under DDP: every rank sends its RNG state)."""
    rng = run.ctx.all_gather_object(rng_state(run.aug_gen))
    run.saved_epoch = epoch
    if not run.ctx.is_main:
        return
    ckpt = _checkpoint(run, epoch, run.best_row or {}, with_state=True)
    ckpt["extra"]["resume"]["rng"] = rng
    save_checkpoint(run.out.last, ckpt)


def write_summary(run: Stage, status: str, epoch: int, **more: Any) -> dict:
    """summary.json of the stage (rank 0 writes it; every rank returns it)."""
    row = run.best_row or {}
    summary = {
        "stage": run.stage,
        "status": status,
        "seed": run.start.seed,
        "init_seed": run.start.init_seed,
        "epochs": epoch,
        "max_epochs": run.cfg.max_epochs,
        "patience": run.cfg.patience,
        "best_epoch": run.es.best_epoch or None,
        "best_val_accuracy": row.get("val_accuracy"),
        "best_val_loss": row.get("val_loss"),
        "best_train_loss": row.get("train_loss"),
        "best_train_accuracy": row.get("train_accuracy"),
        "init": run.start.label,
        "arch": run.arch,
        "device": str(run.device),
        "precision": run.precision,
        "eval_precision": run.eval_precision,
        "world_size": run.ctx.world_size,
        "options": active_options(run.cfg, run.precision),
        "warnings": run.warnings,
        **more,
    }
    if run.ctx.is_main:
        write_json(run.out.summary, summary)
    return summary
