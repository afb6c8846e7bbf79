"""The paper's stage-4 selection rule (Section 4.1): an LHC-Net is kept only when its
training loss is below ``train.selection_factor`` (1.1) times the starting ResNet's."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from ..checkpoint import load_checkpoint
from ..errors import CheckpointError
from .loop import evaluate
from .stage import Stage

__all__ = ["reference_loss", "selection"]


def reference_loss(run: Stage) -> dict:
    """Training loss of the starting network, for the rule.

    Preferred: the starting ResNet's recorded training loss at its best epoch (what a
    Keras history holds, and what stage 4's epochs record): the start checkpoint's own
    metrics, else its parent's (the stage-3 best.pt it was made from).  When no record
    exists the loss is measured: the mean loss of the starting network in eval mode over
    the training set, and stage 4's best model is then measured the same way.
    """
    start = run.start.ckpt
    candidates: list[tuple[Mapping[str, Any], str]] = [(start, run.start.label)]
    if run.start.parent is not None:
        candidates.append((run.start.parent, str((start.get("lineage") or [{}])[-1].get("path"))))
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
            run.log(f"selection rule: reference training loss {float(value):.4f} recorded in {where}")
            return {"train_loss": float(value), "method": "recorded", "source": where}
    value = _measure_train_loss(run)
    run.log(f"selection rule: no recorded training loss of the starting network; measured {value:.4f} "
            "(eval mode, whole training set)")
    return {"train_loss": value, "method": "measured", "source": run.start.label}


def _measure_train_loss(run: Stage) -> float:
    return evaluate(run.model, run.train_split, batch_size=run.recipe.train.eval_batch_size, device=run.device,
                    amp=run.amp, channels_last=run.channels_last, ctx=run.ctx)["loss"]


def selection(run: Stage) -> dict | None:
    """The rule's verdict on stage 4's best model (None when there is nothing to judge)."""
    if run.reference is None or run.best_row is None:
        return None
    if run.reference["method"] == "recorded":
        loss = float(run.best_row["train_loss"])
    else:
        best = load_checkpoint(run.out.best) if run.ctx.is_main else None
        state = run.ctx.broadcast_object(best["state_dict"] if best else None)
        run.model.load_state_dict(state)
        loss = _measure_train_loss(run)
    ref = run.reference["train_loss"]
    factor = run.recipe.train.selection_factor
    ratio = loss / ref if ref > 0 else math.inf
    accepted = bool(ratio < factor)
    run.log(f"selection rule: stage-4 training loss {loss:.4f} vs starting network {ref:.4f} "
            f"(ratio {ratio:.3f}, factor {factor}): {'accepted' if accepted else 'REJECTED'}")
    return {"reference_train_loss": ref, "train_loss": loss, "ratio": ratio, "factor": factor,
            "accepted": accepted, "method": run.reference["method"], "reference_source": run.reference["source"]}
