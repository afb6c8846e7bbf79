"""``fertool evaluate``: a checkpoint on one split, plain and with the paper's TTA (docs/protocol.md §5).

Images come the reference way from the CSV (48x48 originals resized on the fly, float,
no floor, no JPEG; docs/protocol.md §1) or from a prepared / class-subfolder image folder.  Results
go to ``<checkpoint dir>/eval-<split>/`` by default:

* ``metrics.json``: accuracy, loss, balanced accuracy, macro-F1, per-class scores,
  confusion matrices, bootstrap interval, ties; ``"tta"`` holds the same for the TTA
  probabilities when TTA ran;
* ``probs.npz``: ``rows`` (source CSV rows or image indices), ``labels``, ``probs`` and
  ``tta_probs`` (plain and TTA softmax, float32), ``class_names``: every report can be
  redone from it without inference (:func:`metrics_from_probs`);
* ``confusion.png`` (plain and TTA side by side) and the resolved ``recipe.yaml``.

Every input problem is detected before anything is written; the outputs are built in a
temporary sibling folder that then replaces ``eval-<split>/`` as a whole.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.provenance import checkpoint_provenance, csv_provenance, images_provenance
from ..errors import ModelError
from ..files import atomic_dir, check_output_dir, write_json
from ..locks import holding_lock, output_folder
from ..progress import Progress
from ..recipe import Recipe, TTAPreset, save_recipe
from .inference import predict_probs
from .inputs import load_eval_inputs
from .runtimes import build_engine
from .tta import tta_divisor, tta_plan

__all__ = ["evaluate_checkpoint", "metrics_from_probs", "default_out_dir"]


def default_out_dir(checkpoint_path: str | os.PathLike, split: str) -> Path:
    return Path(checkpoint_path).resolve().parent / f"eval-{split}"


def _data_provenance(csv, images, rcp: Recipe) -> dict:
    seeds = (rcp.sample.seed, 0)
    return csv_provenance(csv, sample_seeds=seeds) if csv is not None else images_provenance(images, sample_seeds=seeds)


def metrics_from_probs(
    probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, resamples: int = 1000, seed: int = 0
) -> dict:
    """The figures of one set of probabilities (also used to redo a report from probs.npz)."""
    from .metrics import classification_metrics

    return classification_metrics(probs, labels, class_names=class_names, resamples=resamples, seed=seed)


@holding_lock(output_folder(default_out_dir))  # one writer per output folder
def evaluate_checkpoint(
    checkpoint_path: str | os.PathLike,
    *,
    csv: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    split: str = "PrivateTest",
    tta: str | bool | TTAPreset | None = None,
    out_dir: str | os.PathLike | None = None,
    recipe: Recipe | str | os.PathLike | Mapping | None = None,
    overrides: Sequence[str] = (),
    batch_size: int = 256,
    device: str = "cpu",
    precision: str | None = None,
    engine: str = "auto",
    resamples: int = 1000,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict:
    """Evaluate a checkpoint on ``split`` and write the report files; return metrics.json's dict.

    ``tta`` is a preset name of ``recipe.tta.presets`` (``"paper"``, ``"flip"``...) or True
    for the recipe's ``tta.preset`` (the paper's).  The
    recipe is ``recipe`` if given, else the one stored in the checkpoint, else the
    defaults, with ``overrides`` applied.  Without ``csv`` / ``images`` the recipe's
    ``data.csv`` (then ``data.images``) is used.  ``precision`` (fp32, tf32, bf16) defaults
    to the recipe's ``train.eval_precision`` (fp32).  ``engine`` (``auto``, ``torch``,
    ``onnxruntime``) runs the forward passes (:mod:`fertool.evaluation.runtimes`).  The
    returned dict also carries ``"out_dir"`` and ``"files"``.  An existing ``out_dir`` that is
    not a fertool evaluation is refused unless ``overwrite`` (:func:`fertool.files.check_output_dir`).
    """
    out = Path(out_dir) if out_dir is not None else default_out_dir(checkpoint_path, split)
    check_output_dir(out, "evaluation", overwrite, legacy="metrics.json")
    inputs = load_eval_inputs(checkpoint_path, recipe=recipe, overrides=overrides, tta=tta, device=device)
    inputs.open_split(csv=csv, images=images, split=split)
    ckpt, rcp, data, dev, size = inputs.ckpt, inputs.recipe, inputs.data, inputs.device, inputs.size
    class_names, preset, tta_name = inputs.class_names, inputs.tta, inputs.tta_name
    precision = rcp.train.eval_precision if precision is None else precision
    runner = build_engine(
        inputs.model,
        engine,
        device=dev,
        precision=precision,
        channels_last=rcp.train.channels_last or dev.type == "cpu",
    )
    start = time.perf_counter()
    result = predict_probs(None, data, batch_size=batch_size, tta=preset, engine=runner, progress=progress)
    seconds = time.perf_counter() - start
    for key in ("probs", "tta_probs"):  # never a NaN evaluation written as a result
        if result.get(key) is not None and not np.isfinite(result[key]).all():
            raise ModelError(
                f"{checkpoint_path}: the model outputs NaN or infinite probabilities on {split}; nothing written"
            )
    labels = data.labels.numpy()
    rows = getattr(data, "rows", None)
    rows = np.asarray(rows, dtype=np.int64) if rows is not None else np.arange(len(data), dtype=np.int64)

    report: dict[str, Any] = {
        "checkpoint": str(inputs.checkpoint),
        "arch": ckpt.get("arch"),
        "stage": ckpt.get("stage"),
        "epoch": ckpt.get("epoch"),
        "seed": (ckpt.get("extra") or {}).get("seed"),
        "split": split,
        **inputs.source,
        "input_size": size,
        "class_names": class_names,
        "device": str(dev),
        "precision": precision,
        "engine": runner.describe(),
        "seconds": seconds,
        "images_per_s": len(data) / seconds if seconds > 0 else None,
        # Provenance: what the model was trained on, and what it was evaluated on.
        "model_data": checkpoint_provenance(ckpt),
        "data": _data_provenance(inputs.source.get("csv"), inputs.source.get("images"), rcp),
    }
    report.update(metrics_from_probs(result["probs"], labels, class_names, resamples=resamples))
    if preset is not None:
        views = tta_plan(preset, size)
        report["tta"] = {
            "preset": tta_name,
            "views": len(views),
            "identity_weight": float(preset.identity_weight),
            "divisor": tta_divisor(preset, views),
            **metrics_from_probs(result["tta_probs"], labels, class_names, resamples=resamples),
        }
    else:
        report["tta"] = None

    files = _write_outputs(out, report, rcp, rows, labels, result, class_names, overwrite)
    return {**report, "out_dir": str(out), "files": files}


def _write_outputs(
    out: Path,
    report: dict,
    rcp: Recipe,
    rows: np.ndarray,
    labels: np.ndarray,
    result: dict,
    class_names: Sequence[str],
    overwrite: bool,
) -> list[str]:
    """Build every file in a temporary sibling folder, then move each into ``out``."""
    from .plots import plot_confusion

    with atomic_dir(out, "evaluation", overwrite=overwrite, legacy="metrics.json") as tmp:
        write_json(tmp / "metrics.json", report)
        arrays = {
            "rows": rows,
            "labels": labels.astype(np.int64),
            "probs": result["probs"],
            "class_names": np.asarray(class_names),
        }
        if result["tta_probs"] is not None:
            arrays["tta_probs"] = result["tta_probs"]
        np.savez_compressed(tmp / "probs.npz", **arrays)
        panels = [("plain" + f" ({100 * report['accuracy']:.2f}%)", np.asarray(report["confusion"]))]
        if report["tta"] is not None:
            panels.append(
                (
                    f"TTA {report['tta']['preset']} ({100 * report['tta']['accuracy']:.2f}%)",
                    np.asarray(report["tta"]["confusion"]),
                )
            )
        plot_confusion(panels, class_names, tmp / "confusion.png")
        save_recipe(rcp, tmp / "recipe.yaml")
        names = sorted(p.name for p in tmp.iterdir())
    return [str(out / name) for name in names]
