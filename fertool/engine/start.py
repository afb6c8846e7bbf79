"""Where a stage starts: the checkpoint its weights come from, or the ``last.pt`` it resumes.

Stage 1 starts from ``model.pretrained`` (a Keras .h5[.gz], a torchvision .pth or a fertool
checkpoint) or from scratch; every other stage from ``--init`` or the previous stage's
``best.pt``.  Stage 4 and the controller stage add LHC modules / controllers to it as
``fertool augment-lhc`` does, unless ``RUN/<stage>/init.pt`` already holds the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import CLASS_NAMES
from ..checkpoint import lineage_entry, load_checkpoint, make_checkpoint, save_checkpoint
from ..errors import CheckpointError, ModelError, RecipeError, TrainingError
from ..models import BACKBONES, arch_from_recipe, build_model
from ..models.keras import import_keras
from ..protocol import PREVIOUS, checkpoint_kind, stage_dir
from ..recipe import Recipe, resume_changes, to_dict
from ..surgery import augment_lhc, load_backbone

__all__ = ["Start", "Resumed", "resolve_start"]

Log = Callable[[str], None]


@dataclass
class Resumed:
    """What ``last.pt`` holds beyond the weights: the loop's state after ``epoch``."""

    epoch: int
    optimizer_state: dict | None
    early_stopping: dict
    best_row: dict | None
    order_generator: torch.Tensor
    rng: list  # one RNG state per rank
    state: dict = field(default_factory=dict)  # last.pt's whole resume record (EMA, scaler, step...)


@dataclass
class Start:
    """The checkpoint a stage builds its model from, and what the stage records about it."""

    ckpt: dict  # arch, arch_args and state_dict of the starting weights (last.pt on resume)
    label: str  # where they came from (summary ``init``)
    seed: int  # the data seed: data order and augmentation
    init_seed: int  # new weights (LHC modules, head) and dropout
    lineage: list[dict]
    init_extra: dict  # ``lhc_seed`` carried along
    parent: dict | None = None  # the checkpoint LHC modules were added to here
    reference: dict | None = None  # the stage-4 rule's reference loss (kept on resume)
    warnings: list[str] = field(default_factory=list)
    resumed: Resumed | None = None


def resolve_start(
    recipe: Recipe,
    stage: str,
    run_dir: Path,
    *,
    init: str | None,
    seed: int,
    init_seed: int,
    resume: bool,
    overwrite: bool,
    is_main: bool,
    log: Log,
    classes: tuple[str, ...] = CLASS_NAMES,
) -> Start:
    """The :class:`Start` of ``stage``: ``last.pt`` when resuming, else the initial checkpoint."""
    sdir = stage_dir(run_dir, stage)
    if resume:
        start = _resumed_start(sdir / "last.pt", recipe, stage, seed, init_seed, log)
    else:
        ckpt, label, parent = _initial_checkpoint(
            recipe,
            stage,
            run_dir,
            sdir,
            init=init,
            seed=init_seed,
            overwrite=overwrite,
            is_main=is_main,
            log=log,
            classes=classes,
        )
        start = Start(
            ckpt=ckpt,
            label=label,
            seed=seed,
            init_seed=init_seed,
            parent=parent,
            lineage=list(ckpt.get("lineage") or []) + [lineage_entry(label, ckpt)],
            init_extra={k: v for k, v in (ckpt.get("extra") or {}).items() if k == "lhc_seed"},
        )
    size = (start.ckpt.get("arch_args") or {}).get("input_size")
    if size is not None and int(size) != recipe.model.input_size:
        raise ModelError(
            f"{start.label}: the model takes {size}x{size} images but model.input_size is {recipe.model.input_size}"
        )
    return start


def _resumed_start(path: Path, recipe: Recipe, stage: str, seed: int, init_seed: int, log: Log) -> Start:
    last = load_checkpoint(path)
    if last.get("stage") != stage:
        raise CheckpointError(f"{path}: is a checkpoint of stage {last.get('stage')}, not {stage}")
    accepted = _check_resume_recipe(last, recipe, stage, path)
    for note in accepted:
        log("note: " + note)
    state = last["extra"]["resume"]
    saved_init_seed = int(state.get("init_seed", state["seed"]))  # one seed for both before
    if (state["seed"], saved_init_seed) != (seed, init_seed):
        log(
            f"resuming with the run's data seed {state['seed']} and init seed {saved_init_seed} "
            f"(--seed {seed} / --init-seed {init_seed} ignored)"
        )
    resumed = Resumed(
        epoch=int(last["epoch"]),
        optimizer_state=last.get("optimizer_state"),
        early_stopping=state["early_stopping"],
        best_row=state.get("best_row"),
        order_generator=state["order_generator"],
        rng=state["rng"],
        state=state,
    )
    return Start(
        ckpt=last,
        label=state["init"],
        seed=int(state["seed"]),
        init_seed=saved_init_seed,
        lineage=list(last.get("lineage") or []),
        init_extra=dict(state["init_extra"]),
        reference=state.get("selection_reference"),
        warnings=list(dict.fromkeys(list(state.get("warnings", [])) + accepted)),
        resumed=resumed,
    )


def _check_resume_recipe(last: Mapping[str, Any], recipe: Recipe, stage: str, path: Path) -> list[str]:
    """--resume continues the run that ``last`` holds: refuse a recipe that would change it;
    the changes that are safe come back as warnings."""
    refused, accepted = resume_changes(last.get("recipe") or {}, recipe, stage, epochs_done=int(last.get("epoch") or 0))
    if refused:
        raise RecipeError(
            [
                f"{path}: stage {stage} was started with another recipe; --resume continues it with "
                f"the same one (saved in {path.parent / 'recipe.yaml'}), changed here:",
                *(f"  {change}" for change in refused),
            ]
        )
    return [f"resumed with a changed recipe: {change}" for change in accepted]


def _initial_checkpoint(
    recipe: Recipe,
    stage: str,
    run_dir: Path,
    sdir: Path,
    *,
    init: str | None,
    seed: int,
    overwrite: bool,
    is_main: bool,
    log: Log,
    classes: tuple[str, ...],
) -> tuple[dict, str, dict | None]:
    """(start checkpoint, where it came from, parent checkpoint when LHC modules were added here)."""
    cfg = recipe.train.stages[stage]
    if init is not None:
        source = Path(init)
        ckpt = load_checkpoint(source)
    elif stage == "1":
        return (
            _pretrained_checkpoint(recipe, cfg.model, seed, log, classes),
            recipe.model.pretrained or "scratch",
            None,
        )
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
    converted = _convert(ckpt, cfg.model, recipe, seed=seed, source=str(source), stage=stage)
    if converted is None:
        if init is not None or stage not in ("4", "controller"):
            log(f"stage {stage} starts from {source}")
        return ckpt, str(source), None
    what = "LHC modules (model.lhc)" if checkpoint_kind(ckpt) == "backbone" else "controllers (model.controller_init)"
    target = sdir / "init.pt"
    if is_main and (not target.exists() or overwrite):
        save_checkpoint(target, converted)
        log(f"stage {stage}: added {what} to {source} with seed {seed} (as `fertool augment-lhc` does); saved {target}")
        return converted, str(target), ckpt
    log(f"stage {stage}: added {what} to {source} with seed {seed} (as `fertool augment-lhc` does)")
    return converted, f"{source} + {'lhc' if 'LHC' in what else 'controller'} (seed {seed})", ckpt


def _convert(ckpt: dict, want: str, recipe: Recipe, *, seed: int, source: str, stage: str) -> dict | None:
    """``ckpt`` as a model of kind ``want`` with LHC modules / controllers added; None when it is one."""
    have = checkpoint_kind(ckpt)
    if have == want:
        return None
    if (have, want) not in (("backbone", "lhc"), ("backbone", "controller"), ("lhc", "controller")):
        raise TrainingError(
            f"{source}: holds a {have} model ({ckpt.get('arch')}), but stage {stage} trains a {want} model "
            f"(train.stages.{stage}.model)"
        )
    new = augment_lhc(
        ckpt,
        lhc=[dataclasses.asdict(m) for m in recipe.model.lhc] if have == "backbone" else None,
        controller_init=list(recipe.model.controller_init) if want == "controller" else None,
        seed=seed,
        source_path=source,
        recipe=to_dict(recipe),
    )
    parent_seed = (ckpt.get("extra") or {}).get("lhc_seed")
    if have == "lhc" and parent_seed is not None:  # the LHC modules keep their original init seed
        new["extra"]["lhc_seed"] = parent_seed
    return new


def _pretrained_checkpoint(recipe: Recipe, kind: str, seed: int, log: Log, classes: tuple[str, ...]) -> dict:
    """Stage 1's start: ``model.pretrained`` or random weights."""
    arch, args = arch_from_recipe(recipe.model, kind)
    torch.manual_seed(seed)
    model = build_model(arch, **args)
    lineage = _load_pretrained(model, recipe, seed, log)
    return make_checkpoint(
        arch=arch,
        arch_args=args,
        state_dict=model.state_dict(),
        stage=None,
        recipe=to_dict(recipe),
        class_names=classes,
        lineage=lineage,
        extra={},
    )


def _load_pretrained(model: torch.nn.Module, recipe: Recipe, seed: int, log: Log) -> list[dict]:
    """Loads ``model.pretrained`` into ``model`` (nothing when it is unset); returns the lineage."""
    path = recipe.model.pretrained
    if path is None:
        log(
            "warning: model.pretrained is not set: stage 1 starts from random weights, not ImageNet "
            "(see `fertool import`)"
        )
        return []
    p = Path(path)
    if not p.is_file() and path in ("imagenet", "resnet34-imagenet"):
        from ..artifacts import fetch  # the registry's ImageNet start, fetched once and cached

        p = fetch("resnet34-imagenet", note=log)
    if not p.is_file():
        raise CheckpointError(
            f"model.pretrained: {p}: no such file (a local Keras .h5, torchvision .pth or fertool checkpoint, "
            "'imagenet' for the classification_models ResNet34 weights; null trains from scratch)"
        )
    reader = BACKBONES[recipe.model.backbone].load_pretrained
    label = reader(model, p) if reader is not None else None  # a file of the backbone's own kind
    if label is not None:
        log(f"stage 1 starts from the pre-trained weights of {p} ({label})")
        return [{"path": str(p), "arch": label, "stage": None, "epoch": None}]
    if p.name.lower().endswith((".h5", ".hdf5", ".h5.gz", ".hdf5.gz")):
        source = import_keras(p, input_size=recipe.model.input_size, num_classes=recipe.model.num_classes, seed=seed)
    else:
        source = load_checkpoint(p)
    head_copied = load_backbone(model, source["state_dict"], str(p))
    log(
        f"stage 1 starts from the pre-trained weights of {p} (classifier head "
        f"{'copied' if head_copied else 'newly initialised'})"
    )
    return list(source.get("lineage") or []) + [lineage_entry(p, source)]
