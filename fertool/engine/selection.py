"""The paper's stage-4 selection rule (docs/protocol.md §4): an LHC-Net is kept only when its
training loss is below ``train.selection_factor`` (1.1) times the starting ResNet's.

Both losses are measured as the authors' evaluation scripts measure them (e.g. their
LHC_Eval.py: ``model.predict`` on the training split, then Keras' ``CategoricalCrossentropy``
of the predictions, the same quantity ``model.evaluate`` would give): the mean categorical
cross-entropy over the whole training split, in inference mode (dropout off, BatchNorm moving statistics), without
augmentation, in ``train.eval_precision`` (float32 by default).  The loss averaged during
training (dropout and augmentation on) is recorded beside them as extra information.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint
from ..errors import CheckpointError
from ..protocol import checkpoint_kind
from ..surgery import model_from_checkpoint
from .loop import evaluate
from .stage import Stage

__all__ = ["reference_loss", "selection", "training_loss"]

#: How the rule's losses are measured (recorded in the summary).
METHOD = "inference mode, whole training split, no augmentation"


def training_loss(run: Stage, model: torch.nn.Module) -> float:
    """Mean loss of ``model`` over the whole training split, measured like the authors'
    ``model.predict`` + ``CategoricalCrossentropy``."""
    return evaluate(
        model,
        run.train_split,
        batch_size=run.recipe.train.eval_batch_size,
        device=run.device,
        precision=run.eval_precision,
        channels_last=run.channels_last,
        ctx=run.ctx,
    )["loss"]


def _starting_resnet(run: Stage) -> tuple[Mapping[str, Any], str] | None:
    """The ResNet the LHC-Net was made from: the start itself (a ResNet re-run), the
    checkpoint the LHC modules were added to here, or the last entry of its lineage."""
    start = run.start
    if checkpoint_kind(start.ckpt) == "backbone":
        return start.ckpt, start.label
    where = str((start.ckpt.get("lineage") or [{}])[-1].get("path"))
    if start.parent is not None:
        return start.parent, where
    path = Path(where)
    if path.is_file():
        try:
            parent = load_checkpoint(path)
        except CheckpointError:
            return None
        if checkpoint_kind(parent) == "backbone":
            return parent, where
    return None


def reference_loss(run: Stage) -> dict:
    """The starting ResNet's training loss, measured once when stage 4 starts.

    Without a ResNet to measure (a stage 4 started from an LHC checkpoint whose parent is
    gone) the starting network itself is measured, and the record says so.
    """
    found = _starting_resnet(run)
    with torch.random.fork_rng(devices=[]):  # building a model must not move the training's random streams
        if found is None:
            ckpt, source, what = run.start.ckpt, run.start.label, "the starting network (its ResNet was not found)"
        else:
            (ckpt, source), what = found, "the starting ResNet"
        value = training_loss(run, model_from_checkpoint(ckpt))
    recorded = (ckpt.get("metrics") or {}).get("train_loss")
    run.log(f"selection rule: training loss of {what} {value:.4f} ({METHOD}; {source})")
    return {
        "train_loss": value,
        "source": source,
        "resnet_found": found is not None,
        "running_train_loss": float(recorded) if isinstance(recorded, (int, float)) else None,
    }


def selection(run: Stage) -> dict | None:
    """The rule's verdict on stage 4's best model (None when there is nothing to judge)."""
    if run.reference is None or run.best_row is None:
        return None
    best = load_checkpoint(run.out.best) if run.ctx.is_main else None
    state = run.ctx.broadcast_object(best["state_dict"] if best else None)
    run.model.load_state_dict(state)
    loss = training_loss(run, run.model)
    ref = run.reference["train_loss"]
    factor = run.recipe.train.selection_factor
    ratio = loss / ref if ref > 0 else math.inf
    accepted = bool(ratio < factor)
    run.log(
        f"selection rule: stage-4 training loss {loss:.4f} vs starting ResNet {ref:.4f} "
        f"(ratio {ratio:.3f}, factor {factor}): {'accepted' if accepted else 'REJECTED'}"
    )
    return {
        "train_loss": loss,
        "reference_train_loss": ref,
        "ratio": ratio,
        "factor": factor,
        "accepted": accepted,
        "method": METHOD,
        "reference_source": run.reference["source"],
        "reference_is_resnet": run.reference.get("resnet_found", True),
        "running_train_loss": float(run.best_row["train_loss"]),
        "reference_running_train_loss": run.reference.get("running_train_loss"),
    }
