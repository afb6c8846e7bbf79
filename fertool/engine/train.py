"""The training engine: one stage of the paper's protocol (Section 4.1) per call.

:func:`train_stage` reads as three steps -- resolve the start (:mod:`.start`), build the
model, optimiser and data into a :class:`~.stage.Stage` record, loop over epochs -- and the
loop body is the two plain functions of :mod:`.loop`, ``train_one_epoch`` and ``evaluate``.
What a stage folder holds is listed in :mod:`.stage`.

Randomness, as in the paper's run sets: ``init_seed`` (``train.init_seed``, fixed by
default) seeds Python, NumPy and torch -- new weights such as LHC modules, dropout -- and
``seed``, the data seed, one CPU ``torch.Generator`` that draws the data order and the
augmentation parameters.
``train.deterministic`` makes CPU runs bit-reproducible, and an interrupted stage resumed
from ``last.pt`` ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import check_same_classes, checkpoint_classes
from ..data.augment import KerasAugment
from ..data.datasets import ImageSplit
from ..errors import CheckpointError, DataError, RecipeError, TrainingError
from ..faults import pause_point
from ..files import atomic_path, read_jsonl
from ..locks import holding_lock
from ..models import build_model, freeze_except_controllers
from ..progress import Progress
from ..protocol import normalise_stage as _normalise_stage
from ..protocol import stage_dir
from ..recipe import Recipe, save_recipe, save_run_recipe
from ..utils import seed_everything
from .callbacks import Callback, CallbackList, EpochFunction, MetricsFile, ProgressBar
from .data import data_info, load_stage_data, training_provenance, with_data_classes
from .distributed import DistContext, setup
from .loggers import check_loggers
from .loop import (
    EarlyStopping,
    NonFiniteLossError,
    evaluate,
    format_epoch,
    make_optimizer,
    set_train_mode,
    train_one_epoch,
)
from .rng import rank_seed, set_rng_state
from .schedule import (
    active_options,
    describe_options,
    has_schedule,
    learning_rate,
    make_ema,
    scaler_for,
    steps_per_epoch,
)
from .selection import reference_loss, selection
from .stage import STAGE_OUTPUTS, Stage, StageOutputs, check_stage_folder, save_best, save_last, write_summary
from .start import Start, resolve_start

__all__ = ["StageRequest", "normalise_stage", "train_stage", "format_epoch", "Callback"]

Log = Callable[[str], None]


def normalise_stage(stage: str | int) -> str:
    """``1``, ``"stage1"``, ``"c"``, ``"controller"`` -> ``"1"`` ... ``"controller"``."""
    try:
        return _normalise_stage(stage)
    except ValueError as exc:
        raise RecipeError(f"--stage {stage}: {exc}") from None


@dataclass(frozen=True)
class StageRequest:
    """What the caller of :func:`train_stage` asked for."""

    recipe: Recipe
    stage: str
    run_dir: Path
    csv: str | None = None
    images: str | None = None
    init: str | None = None
    seed: int = 0  # data order and augmentation
    init_seed: int = 0  # new weights and dropout
    resume: bool = False
    overwrite: bool = False
    allow_test_selection: bool = False


def _locked_stage(args: Mapping[str, Any]) -> Path | None:
    """The stage folder a :func:`train_stage` call writes; under ``torchrun`` only rank 0 locks it."""
    return stage_dir(args["run_dir"], normalise_stage(args["stage"])) if os.environ.get("RANK", "0") == "0" else None


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
    init_seed: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    allow_test_selection: bool = False,
    progress: Progress | None = None,
    log: Log | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    train_data: ImageSplit | None = None,
    val_data: ImageSplit | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict:
    """Train one stage of ``recipe`` into ``run_dir/<stage>/``; return its summary.

    The stage starts from ``init``, else from the previous stage's ``best.pt`` (stage 4
    from ``stage4/init.pt``, or stage 3's best with LHC modules added here, drawn with
    ``init_seed`` (default ``train.init_seed``; ``seed`` is the data seed);
    the controller stage likewise from stage 4), and stage 1 from ``model.pretrained`` or
    scratch.  ``progress(done, total, **fields)`` reports batches (``phase="train"``) and
    validation images (``phase="val"``); ``log(message)`` one-line notes; ``on_epoch(row)``
    each epoch's metrics row (without it the row goes to ``log``); ``callbacks`` receive
    the training events (:mod:`.callbacks`; the loggers of ``train.log`` are added to
    them).  ``train_data`` / ``val_data`` give ready splits instead of ``csv`` / ``images``.

    Raises :class:`TrainingError` on a non-finite loss (status ``diverged``, best.pt kept);
    Ctrl-C leaves a clean ``last.pt`` and status ``interrupted`` and re-raises.  Under
    ``torchrun`` every rank calls this; only rank 0 writes files.
    """
    request = StageRequest(
        recipe=recipe,
        stage=normalise_stage(stage),
        run_dir=Path(run_dir),
        csv=None if csv is None else str(csv),
        images=None if images is None else str(images),
        init=None if init is None else str(init),
        seed=int(seed),
        init_seed=int(recipe.train.init_seed if init_seed is None else init_seed),
        resume=resume,
        overwrite=overwrite,
        allow_test_selection=allow_test_selection,
    )
    if request.stage not in recipe.train.stages:
        raise RecipeError(
            f"train.stages.{request.stage}: the recipe has no such stage (has: {', '.join(recipe.train.stages)})"
        )
    check_loggers(recipe)  # a missing extra fails before anything is written
    if (train_data is None) != (val_data is None):
        raise DataError("train_stage: give both train_data and val_data, or neither")
    ctx = setup(device)
    try:
        log = (log or (lambda message: None)) if ctx.is_main else (lambda message: None)
        out = StageOutputs(stage_dir(request.run_dir, request.stage))
        done = check_stage_folder(out, request.stage, resume=resume, overwrite=overwrite, log=log)
        if done is not None:
            return done
        warnings = _test_selection_warnings(recipe, allow_test_selection, log)
        info, where = _data_info(request, train_data)
        recipe = with_data_classes(recipe, tuple(info["classes"]), where, log)
        request = dataclasses.replace(request, recipe=recipe)
        gen = seed_everything(request.init_seed, data_seed=request.seed, deterministic=recipe.train.deterministic)
        start = resolve_start(
            recipe,
            request.stage,
            request.run_dir,
            init=request.init,
            seed=request.seed,
            init_seed=request.init_seed,
            resume=resume,
            overwrite=overwrite,
            is_main=ctx.is_main,
            log=log,
            classes=tuple(info["classes"]),
        )
        if (start.seed, start.init_seed) != (request.seed, request.init_seed):
            gen = seed_everything(start.init_seed, data_seed=start.seed, deterministic=recipe.train.deterministic)
        check_same_classes(checkpoint_classes(start.ckpt), info["classes"], model=start.label, data=where)
        if train_data is None:
            train_data, val_data, notes = load_stage_data(
                recipe, csv=request.csv, images=request.images, log=log, progress=progress if ctx.is_main else None
            )
            info = {**info, "provenance": training_provenance(recipe, csv=request.csv, images=request.images)}
        else:
            notes = []
        run = build(
            request,
            start,
            ctx,
            out,
            gen,
            train_data,
            val_data,
            warnings=list(dict.fromkeys(start.warnings + warnings)) + notes,
            log=log,
            progress=progress if ctx.is_main else None,
            on_epoch=on_epoch,
        )
        run.classes, run.data_info = tuple(info["classes"]), info
        prepare_outputs(request, run)
        if ctx.is_main:
            run.callbacks = _callbacks(run, request, callbacks)
        run.callbacks.on_stage_start(run)
        return run_epochs(run)
    finally:
        ctx.close()


def _callbacks(run: Stage, request: StageRequest, extra: Sequence[Callback]) -> CallbackList:
    """metrics.jsonl and curves, the progress bar, the recipe's loggers, the caller's
    callbacks, and the epoch line (``on_epoch``, else ``log``), in that order."""
    from .loggers import make_loggers

    line = run.on_epoch or (lambda row: run.log(format_epoch(row, row["max_epochs"])))
    return CallbackList(
        [
            MetricsFile(run),
            *([ProgressBar(run.progress)] if run.progress is not None else []),
            *make_loggers(run.recipe, request.run_dir),
            *extra,
            EpochFunction(line),
        ]
    )


def _data_info(request: StageRequest, train_data: ImageSplit | None) -> tuple[dict, str]:
    """(what the training data is, where it is): ready splits, else :func:`data_info`."""
    if train_data is not None:
        return (
            {"dataset": None, "classes": list(train_data.class_names), "provenance": None},
            f"the training split {train_data.name}",
        )
    return data_info(request.recipe, csv=request.csv, images=request.images)


def _test_selection_warnings(recipe: Recipe, allowed: bool, log: Log) -> list[str]:
    data = recipe.data
    if data.val_split != data.test_split:
        return []
    if not allowed:
        raise RecipeError(
            f"data.val_split: '{data.val_split}' is the test split (data.test_split): selecting the model "
            "on the test set inflates the reported accuracy; pass --allow-test-selection to do it anyway"
        )
    warning = (
        f"model selection on the test split {data.test_split} (--allow-test-selection): "
        "test accuracy of this run is optimistic"
    )
    log("warning: " + warning)
    return [warning]


# --------------------------------------------------------------------------- build


def build(
    request: StageRequest,
    start: Start,
    ctx: DistContext,
    out: StageOutputs,
    gen: torch.Generator,
    train_split: ImageSplit,
    val_split: ImageSplit,
    *,
    warnings: list[str],
    log: Log,
    progress: Progress | None,
    on_epoch: Callable[[dict], None] | None,
) -> Stage:
    """The model (weights of ``start``, on the device, wrapped), optimiser and loop state."""
    recipe, stage = request.recipe, request.stage
    cfg = recipe.train.stages[stage]
    on_cuda = ctx.device.type == "cuda"
    channels_last = recipe.train.channels_last and on_cuda
    arch = start.ckpt["arch"]
    model = build_model(arch, **dict(start.ckpt["arch_args"]))
    missing, unexpected = model.load_state_dict(start.ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{start.label}: weights do not fit '{arch}' "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    params = (
        freeze_except_controllers(model)
        if cfg.model == "controller"
        else [p for p in model.parameters() if p.requires_grad]
    )
    model.to(ctx.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(params, cfg)
    scaler = scaler_for(ctx.device, recipe.train.precision)
    if scaler is not None and not on_cuda:
        log(
            "train.precision fp16 on the CPU: float16 autocast and the gradient scaler run, slowly "
            "(fp16 is meant for CUDA GPUs without bf16)"
        )
    run = Stage(
        recipe=recipe,
        stage=stage,
        cfg=cfg,
        ctx=ctx,
        out=out,
        start=start,
        model=model,
        net=model,
        optimizer=optimizer,
        train_split=train_split,
        val_split=val_split,
        gen=gen,
        aug_gen=None,
        precision=recipe.train.precision,
        eval_precision=recipe.train.eval_precision,
        channels_last=channels_last,
        log=log,
        progress=progress,
        on_epoch=on_epoch,
        es=EarlyStopping(cfg.patience),
        warnings=warnings,
        reference=start.reference,
        ema=make_ema(model, cfg.ema) if cfg.ema else None,
        scaler=scaler,
    )
    if start.resumed is not None:
        _resume_options(run, start.resumed.state)
        if start.resumed.optimizer_state is not None:
            optimizer.load_state_dict(start.resumed.optimizer_state)
        run.es.load_state_dict(start.resumed.early_stopping)
        run.best_row = start.resumed.best_row
        run.saved_epoch = start.resumed.epoch
    run.net = _wrap(run)
    # Separate per-rank streams for dropout and augmentation under DDP; the data-order
    # generator stays identical on every rank so the shards partition the epoch.
    if ctx.distributed:
        torch.manual_seed(rank_seed(start.init_seed, ctx.rank))
        run.aug_gen = torch.Generator().manual_seed(rank_seed(start.seed, ctx.rank + ctx.world_size))
    return run


def _resume_options(run: Stage, state: Mapping[str, Any]) -> None:
    """The EMA, the gradient scaler and the step counters from last.pt."""
    run.step, run.skipped_steps = int(state.get("step", 0)), int(state.get("skipped_steps", 0))
    if run.ema is not None:
        if "ema" not in state:
            raise CheckpointError(
                f"{run.out.last}: holds no EMA of the weights; train.stages.{run.stage}.ema "
                "cannot be switched on when resuming"
            )
        run.ema.load_state_dict(state["ema"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])


def _wrap(run: Stage) -> nn.Module:
    """DDP (with optional SyncBatchNorm) and torch.compile around the model as the recipe asks."""
    net: nn.Module = run.model
    ctx, train = run.ctx, run.recipe.train
    if ctx.distributed:
        if train.sync_bn:
            if run.device.type == "cuda":
                net = run.model = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            else:
                run.log("train.sync_bn: SyncBatchNorm needs CUDA; each CPU rank keeps its own batch statistics")
        net = DistributedDataParallel(net, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if train.compile:
        net = torch.compile(net)
    return net


def prepare_outputs(request: StageRequest, run: Stage) -> None:
    """Write the stage folder's starting state (or trim it to ``last.pt`` on resume).

    Everything was checked before this: only now may ``--overwrite`` remove earlier results.
    """
    ctx, out = run.ctx, run.out
    ctx.barrier()
    if request.overwrite and ctx.is_main:
        for name in STAGE_OUTPUTS:
            (out.dir / name).unlink(missing_ok=True)
    if ctx.is_main:
        out.dir.mkdir(parents=True, exist_ok=True)
        if not save_run_recipe(run.recipe, request.run_dir / "recipe.yaml"):
            run.log(
                f"{request.run_dir / 'recipe.yaml'}: not written by fertool, left as it is "
                f"(the resolved recipe is {out.recipe})"
            )
        save_recipe(run.recipe, out.recipe)
    resumed = run.start.resumed
    if run.stage == "4" and run.reference is None and resumed is None:
        run.reference = reference_loss(run)
    if resumed is None:
        save_last(run, 0)
        return
    _restore_rng(run, resumed.order_generator, resumed.rng)
    if ctx.is_main and out.metrics.is_file():  # drop epochs that last.pt does not hold
        rows = [r for r in read_jsonl(out.metrics) if r.get("epoch", 0) <= resumed.epoch]
        with atomic_path(out.metrics) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run.log(f"stage {run.stage}: resuming after epoch {resumed.epoch} from {out.last}")


def _restore_rng(run: Stage, order_generator: torch.Tensor, ranks: list) -> None:
    run.gen.set_state(order_generator)
    if len(ranks) != run.ctx.world_size:
        run.log(
            f"resuming with {run.ctx.world_size} processes where the run had {len(ranks)}: "
            "the random streams continue from a fresh seed, not bit-exactly"
        )
        return
    set_rng_state(ranks[run.ctx.rank], run.aug_gen)


# --------------------------------------------------------------------------- the loop


def run_epochs(run: Stage) -> dict:
    """Train until early stopping or ``max_epochs``; write the summary and return it."""
    cfg, ctx = run.cfg, run.ctx
    augment = KerasAugment(cfg.augment)
    batch_size = max(1, cfg.batch_size // ctx.world_size)
    if ctx.distributed and cfg.batch_size % ctx.world_size:
        run.log(f"batch size {cfg.batch_size} is not divisible by {ctx.world_size} processes: {batch_size} per process")
    _log_start(run, augment)
    epoch = run.saved_epoch
    status = "early_stopped" if run.es.should_stop else "finished"
    rates: list[tuple[float, float]] = []  # (seconds, images per second) of each epoch
    try:
        while status == "finished" and epoch < cfg.max_epochs:
            epoch += 1
            try:
                row = _one_epoch(run, epoch, augment, batch_size)
            except NonFiniteLossError as exc:
                return _diverged(run, epoch, exc)
            rates.append((row["seconds"], row["images_per_s"]))
            if ctx.broadcast_flag(run.es.should_stop):  # rank 0 decides for all
                status = "early_stopped"
            _record_epoch(run, epoch, row)
    except KeyboardInterrupt:
        run.callbacks.on_stage_end(write_summary(run, "interrupted", run.saved_epoch), run)
        run.log(
            f"stage {run.stage}: interrupted; {run.out.last} holds epoch {run.saved_epoch}, "
            "training can continue from it"
        )
        raise
    return _finish(run, status, epoch, rates)


def _log_start(run: Stage, augment: KerasAugment) -> None:
    cfg, ctx = run.cfg, run.ctx
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    run.log(
        f"stage {run.stage}: {run.arch}, {trainable:,} trainable parameters, {cfg.optimizer} lr {cfg.lr}, "
        f"batch {cfg.batch_size}, patience {cfg.patience}, up to {cfg.max_epochs} epochs, "
        f"{len(run.train_split):,} training / {len(run.val_split):,} validation images, "
        f"augmentation {augment if augment.active else 'none'}, device {run.device}"
        + (f" x {ctx.world_size} processes" if ctx.distributed else "")
        + (
            f"; options beyond the paper: {describe_options(options)}"
            if (options := active_options(cfg, run.precision))
            else ""
        )
    )


def _one_epoch(run: Stage, epoch: int, augment: KerasAugment, batch_size: int) -> dict:
    """Train one epoch, validate, update early stopping; the epoch's metrics row."""
    fields = {"phase": "train", "epoch": epoch, "epochs": run.cfg.max_epochs, "stage": run.stage}
    set_train_mode(run.net)
    cfg, train = run.cfg, run.recipe.train
    per_rank = math.ceil(len(run.train_split) / run.ctx.world_size)  # batch_indices pads to equal shares
    spe = steps_per_epoch(math.ceil(per_rank / batch_size), cfg.accumulate)
    t = train_one_epoch(
        run.net,
        run.train_split,
        run.optimizer,
        batch_size=batch_size,
        device=run.device,
        generator=run.gen,
        augment=augment,
        aug_generator=run.aug_gen,
        precision=run.precision,
        channels_last=run.channels_last,
        ctx=run.ctx,
        sync_every=1 if run.device.type == "cpu" else 25,
        fields=fields,
        label_smoothing=cfg.label_smoothing,
        accumulate=cfg.accumulate,
        scaler=run.scaler,
        lr_at=functools.partial(learning_rate, cfg, steps_per_epoch=spe) if has_schedule(cfg) else None,
        start_step=run.step,
        ema=run.ema,
        on_step=run.callbacks.on_step,
        log_every=train.log_every,
    )
    run.step += t["steps"]
    run.skipped_steps += t["skipped_steps"]
    pause_point("epoch")  # fault tests: killed with the epoch trained, not yet saved
    run.ctx.average_buffers(run.model)  # the same BatchNorm statistics on every rank
    if run.ema is not None:
        run.ctx.average_buffers(run.ema.module)
    v = evaluate(
        run.eval_model,
        run.val_split,
        batch_size=run.recipe.train.eval_batch_size,
        device=run.device,
        precision=run.eval_precision,
        channels_last=run.channels_last,
        ctx=run.ctx,
        progress=_val_progress(run, epoch),
    )
    row = {
        "epoch": epoch,
        "train_loss": t["train_loss"],
        "train_accuracy": t["train_accuracy"],
        "val_loss": v["loss"],
        "val_accuracy": v["accuracy"],
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": t["seconds"],
        "images_per_s": t["images_per_s"],
        "images": t["images"],
    }
    if run.scaler is not None:
        row["skipped_steps"] = t["skipped_steps"]
    improved = run.es.update(v["accuracy"], epoch)
    if improved:
        run.best_row = dict(row)
    row["best"] = improved
    return row


def _record_epoch(run: Stage, epoch: int, row: Mapping[str, Any]) -> None:
    """The epoch's callbacks (metrics.jsonl and curves.png first, the epoch's line for the
    user last), then best.pt and last.pt."""
    if run.ctx.is_main:
        run.callbacks.on_epoch_end(
            dict(
                row,
                stage=run.stage,
                max_epochs=run.cfg.max_epochs,
                best_epoch=run.es.best_epoch,
                wait=run.es.wait,
                patience=run.cfg.patience,
            )
        )
        if row["best"]:
            save_best(run, epoch, row)
    save_last(run, epoch)


def _finish(run: Stage, status: str, epoch: int, rates: list[tuple[float, float]]) -> dict:
    es = run.es
    if status == "early_stopped":
        run.log(
            f"stage {run.stage}: early stop after epoch {epoch}: no val accuracy gain for {run.cfg.patience} "
            f"epochs; best {es.best:.4f} at epoch {es.best_epoch} ({run.out.best})"
        )
    else:
        run.log(
            f"stage {run.stage}: finished {epoch} epoch{'s' if epoch != 1 else ''}; best val accuracy {es.best:.4f} at epoch "
            f"{es.best_epoch} ({run.out.best})"
        )
    extra: dict[str, Any] = {
        "seconds": sum(seconds for seconds, _ in rates),
        "images_per_s": float(np.mean([rate for _, rate in rates])) if rates else None,
    }
    if run.stage == "4":
        extra["selection"] = selection(run)
    if run.ctx.distributed:
        extra["ranks_consistent"] = _check_ranks(run)
    if run.scaler is not None:
        extra["skipped_steps"] = run.skipped_steps
    summary = write_summary(run, status, epoch, **extra)
    run.callbacks.on_stage_end(summary, run)
    if run.recipe.train.keep == "best" and run.ctx.is_main:
        run.out.last.unlink(missing_ok=True)  # a finished stage is never resumed
    return summary


def _diverged(run: Stage, epoch: int, exc: NonFiniteLossError) -> dict:
    es = run.es
    where = (
        f"{run.out.best} (epoch {es.best_epoch}, val accuracy {es.best:.4f}) is intact"
        if es.best_epoch
        else "no best checkpoint was written yet"
    )
    summary = write_summary(
        run, "diverged", run.saved_epoch, diverged_at={"epoch": epoch, "batch": exc.batch, "loss": exc.value}
    )
    run.callbacks.on_stage_end(summary, run)
    raise TrainingError(
        f"stage {run.stage}: the training loss became {exc.value} at epoch {epoch}, batch {exc.batch}; "
        f"stopped. {where}; try a lower train.stages.{run.stage}.lr"
    )


def _check_ranks(run: Stage) -> bool:
    """Every rank must end with the same weights (a cheap checksum, gathered)."""
    with torch.no_grad():
        total = sum(float(t.double().sum()) for t in run.model.state_dict().values() if t.is_floating_point())
    sums = run.ctx.all_gather_object(total)
    if len(set(sums)) != 1:
        raise TrainingError(f"stage {run.stage}: DDP ranks ended with different weights (checksums {sums})")
    return True


def _val_progress(run: Stage, epoch: int) -> Progress | None:
    if run.progress is None:
        return None
    progress, cfg = run.progress, run.cfg

    def report(done: int, total: int | None = None) -> None:
        progress(done, total, phase="val", epoch=epoch, epochs=cfg.max_epochs, stage=run.stage)

    return report
