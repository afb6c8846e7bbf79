"""Ablation of the LHC modules without retraining (docs/protocol.md §6), with head analysis and pictures.

(Kept as one file: the module sets, the passes and the report of one ablation run.)

``ablate(checkpoint)`` measures the test accuracy of an LHC-Net / LHC-NetC checkpoint with
sets of its LHC modules

* ``off``: bypassed, ``enabled = False`` (output = input);
* ``detrain``: reset to the untrained initial weights, ``model.reset_lhc(seed, names)`` with
  the seed ``augment-lhc`` recorded (``ckpt["extra"]["lhc_seed"]``): the same Keras-default
  initialiser and per-module seed streams, so the weights are bit-identical to the ones
  the module started training from (an LHC-NetC controller goes back to its initial w).
  Imported weights record no seed: ``detrain`` is then left out of the default modes,
  with a note in the report, and refused when asked for.

Sets (``sets``): ``single`` (each module alone), ``cumulative`` (from the first module,
{lhc1}, {lhc1, lhc2}, ...; and from the last, {lhc5}, {lhc4, lhc5}, ...), ``all`` (every
non-empty subset: 31 for five modules).  A set reached several ways is evaluated once.

For every ablated set S the complement K = modules - S is what was *kept*; the paper
reads the ablation that way ("the first two modules suffice").  ``smallest_kept`` is, per
mode and accuracy kind (plain, TTA), the smallest kept set whose accuracy is within
``tolerance`` of the full model (accuracy >= full - tolerance): fewest modules first, then
fewest heads, then highest accuracy; the full model (nothing ablated) is always a
candidate.  The search covers the sets that were evaluated: exhaustive with ``all``.

Head analysis (``heads=True``, on by default) runs on the full model during its plain
evaluation pass, with no extra inference: see :mod:`fertool.analysis.heads`.  Attention
pictures (``pictures`` images, evenly spaced in the split) show, per module, the input, the
module's output energy mean_c |A| per position with the stripe boundaries of the heads,
and each head's C x C attention weights.

Every inference goes through :func:`fertool.evaluation.inference.predict_probs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.datasets import ImageSplit
from ..errors import CheckpointError, FertoolError
from ..files import atomic_dir, check_output_dir
from ..locks import holding_lock, output_folder
from ..progress import Progress

__all__ = [
    "MODES",
    "SET_KINDS",
    "ablation_sets",
    "ablated",
    "smallest_kept",
    "SubsetSplit",
    "ablate",
    "default_out_dir",
]

MODES = ("off", "detrain")
SET_KINDS = ("single", "cumulative", "all")


# --------------------------------------------------------------------------- sets


def ablation_sets(names: Sequence[str], kinds: Sequence[str]) -> list[tuple[tuple[str, ...], list[str]]]:
    """The module sets to ablate, in network order, each once: ``[(set, [how it arose])]``.

    ``how``: ``single``, ``first`` (cumulative from the first module), ``last``
    (cumulative from the last), ``subset`` (from ``all``).
    """
    names = list(names)
    unknown = [k for k in kinds if k not in SET_KINDS]
    if unknown or not kinds:
        raise FertoolError(f"sets: must be some of {', '.join(SET_KINDS)}, got {', '.join(kinds) or 'nothing'}")
    found: dict[tuple[str, ...], list[str]] = {}

    def add(subset: Sequence[str], how: str) -> None:
        key = tuple(n for n in names if n in subset)  # network order
        found.setdefault(key, [])
        if how not in found[key]:
            found[key].append(how)

    if "single" in kinds:
        for n in names:
            add([n], "single")
    if "cumulative" in kinds:
        for k in range(1, len(names) + 1):
            add(names[:k], "first")
        for k in range(1, len(names) + 1):
            add(names[-k:], "last")
    if "all" in kinds:
        for k in range(1, len(names) + 1):
            for combo in itertools.combinations(names, k):
                add(combo, "subset")
    return list(found.items())


@contextlib.contextmanager
def ablated(model: nn.Module, mode: str, names: Sequence[str], *, seed: int | None = None) -> Iterator[nn.Module]:
    """Within the block, the LHC modules ``names`` of ``model`` are switched off or de-trained.

    ``off`` sets ``enabled = False``; ``detrain`` calls ``model.reset_lhc(seed, names)``.
    On exit the modules are restored bit for bit (flags and weights).
    """
    modules = model.lhc_modules()
    missing = [n for n in names if n not in modules]
    if missing:
        raise FertoolError(f"no LHC module named {missing[0]!r} (the model has: {', '.join(modules)})")
    if mode == "off":
        saved = {n: modules[n].enabled for n in names}
        try:
            for n in names:
                modules[n].enabled = False
            yield model
        finally:
            for n, flag in saved.items():
                modules[n].enabled = flag
    elif mode == "detrain":
        if seed is None:
            raise FertoolError("detrain needs the LHC initialisation seed")
        state = {n: {k: v.detach().clone() for k, v in modules[n].state_dict().items()} for n in names}
        try:
            with torch.no_grad():
                model.reset_lhc(int(seed), list(names))
            yield model
        finally:
            for n, sd in state.items():
                modules[n].load_state_dict(sd)
    else:
        raise FertoolError(f"modes: unknown mode {mode!r} (known: {', '.join(MODES)})")


def smallest_kept(
    rows: Sequence[Mapping[str, Any]],
    *,
    mode: str,
    names: Sequence[str],
    heads: Mapping[str, int],
    full: float,
    tolerance: float,
    key: str = "accuracy",
    exhaustive: bool = False,
) -> dict:
    """The smallest set of modules that, kept (the rest ablated in ``mode``), stays within tolerance.

    ``rows`` are result rows (``mode``, ``set``, ``kept``, ``key``); ``full`` is the full
    model's value of ``key``.  Ranking: fewest modules, then fewest heads, then the
    highest accuracy.  The full model is always a candidate (it is within tolerance of
    itself).
    """
    candidates = [(tuple(names), full)]
    candidates += [(tuple(r["kept"]), r[key]) for r in rows if r["mode"] == mode and r.get(key) is not None]
    eps = 1e-12  # accuracies are ratios of integers: guard the comparison against rounding
    ok = [(kept, acc) for kept, acc in candidates if acc >= full - tolerance - eps]
    kept, acc = min(ok, key=lambda c: (len(c[0]), sum(heads[n] for n in c[0]), -c[1]))
    return {
        "modules": list(kept),
        "heads": sum(heads[n] for n in kept),
        "total_heads": sum(heads.values()),
        key: acc,
        "delta": acc - full,
        "searched": "all subsets" if exhaustive else "evaluated sets",
    }


# --------------------------------------------------------------------------- data


class SubsetSplit(ImageSplit):
    """The first images of a split (``--max-images``), same interface."""

    def __init__(self, base: ImageSplit, count: int) -> None:
        self.base = base
        self.index = torch.arange(min(count, len(base)))
        self.labels = base.labels[self.index]
        self.name = base.name
        self.size = base.size
        self.class_names = base.class_names
        rows = getattr(base, "rows", None)
        self.rows = None if rows is None else np.asarray(rows)[: len(self.index)]

    def load(self, index: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.base.load(self.index[index.cpu()], device)


def default_out_dir(checkpoint_path: str | os.PathLike, split: str) -> Path:
    return Path(checkpoint_path).resolve().parent / f"ablate-{split}"


# --------------------------------------------------------------------------- main


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    from ..evaluation.metrics import accuracy, predictions

    return accuracy(predictions(probs), labels)


def _choose(values: Sequence[str] | str | None, default: Sequence[str], known: Sequence[str], option: str) -> tuple:
    if values is None:
        values = default
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",") if v.strip()]
    values = tuple(dict.fromkeys(values))
    bad = [v for v in values if v not in known]
    if bad or not values:
        raise FertoolError(f"{option}: must be some of {', '.join(known)}, got {', '.join(values) or 'nothing'}")
    return values


#: Why ``detrain`` cannot run on a checkpoint without ``extra.lhc_seed``.
NO_SEED = "records no LHC initialisation seed (extra.lhc_seed, written by augment-lhc; imported weights have none)"


def _runnable_modes(
    modes: Sequence[str] | str | None, default: Sequence[str], seed: int | None, checkpoint_path: Path
) -> tuple[tuple[str, ...], list[str]]:
    """The modes to run and notes on the ones left out.

    ``detrain`` needs the LHC initialisation seed: without one it is dropped from the
    default modes (the recipe's) with a note, and refused when asked for by name.
    """
    chosen = _choose(modes, default, MODES, "modes")
    if seed is not None or "detrain" not in chosen:
        return chosen, []
    if modes is not None or chosen == ("detrain",):
        raise CheckpointError(f"{checkpoint_path}: {NO_SEED}, which 'detrain' needs; use modes=off")
    return tuple(m for m in chosen if m != "detrain"), [f"detrain skipped: the checkpoint {NO_SEED}"]


@holding_lock(output_folder(default_out_dir))  # one writer per output folder
def ablate(
    checkpoint_path: str | os.PathLike,
    *,
    csv: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    split: str = "PrivateTest",
    modes: Sequence[str] | str | None = None,
    sets: Sequence[str] | str | None = None,
    tta: Any = None,
    tolerance: float | None = None,
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    max_images: int | None = None,
    heads: bool = True,
    pictures: int = 4,
    recipe: Any = None,
    overrides: Sequence[str] = (),
    precision: str | None = None,
    engine: str = "auto",
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict:
    """Ablate the LHC modules of a checkpoint on ``split`` and write the report (module docstring).

    ``modes`` / ``sets`` / ``tolerance`` default to the recipe's ``ablate`` section
    (off + detrain, single + cumulative, 0.005); a checkpoint without an LHC seed
    (imported weights) runs the default modes but ``detrain``, said in ``notes``.
    ``tta`` is a preset name of the recipe's ``tta.presets`` (or a
    :class:`~fertool.recipe.TTAPreset`), True for the recipe's ``tta.preset``, None for
    none.  The recipe is
    ``recipe`` if given, else the checkpoint's, with ``overrides``; data come from ``csv``
    (reference images) or ``images``, else from the recipe's ``data`` section.
    ``max_images`` keeps the first images of the split.  Outputs go to ``out_dir``
    (default ``<checkpoint dir>/ablate-<split>/``), built in a temporary folder and moved
    into place at the end: ``ablation.json``, ``ablation.png``, ``heads-<module>.png``,
    ``pictures/``, ``recipe.yaml``.  ``engine`` runs every pass but the one that records
    the heads (:mod:`fertool.evaluation.runtimes`).  Returns the ``ablation.json`` dict
    (with ``out_dir``).
    """
    from ..evaluation.inputs import load_eval_inputs
    from ..recipe import AblateConfig
    from .heads import controller_weights, head_summary

    if Path(checkpoint_path).is_file():  # refused before the work, not after it
        check_output_dir(
            out_dir if out_dir is not None else default_out_dir(checkpoint_path, split),
            "ablation",
            overwrite,
            legacy="ablation.json",
        )
    inputs = load_eval_inputs(checkpoint_path, recipe=recipe, overrides=overrides, tta=tta, device=device)
    ckpt, model, rcp, dev = inputs.ckpt, inputs.model, inputs.recipe, inputs.device
    checkpoint_path, tta_name, preset = inputs.checkpoint, inputs.tta_name, inputs.tta
    modules = model.lhc_modules() if hasattr(model, "lhc_modules") else {}
    if not modules:
        raise CheckpointError(f"{checkpoint_path}: has no LHC modules; ablate needs an LHC-Net or LHC-NetC checkpoint")
    names = list(modules)
    head_counts = {n: int(m.heads) for n, m in modules.items()}

    seed = (ckpt.get("extra") or {}).get("lhc_seed")
    seed = seed if isinstance(seed, int) else None
    modes, notes = _runnable_modes(modes, rcp.ablate.modes, seed, checkpoint_path)
    kinds = _choose(sets, rcp.ablate.sets, SET_KINDS, "sets")
    tolerance = rcp.ablate.tolerance if tolerance is None else float(tolerance)
    if not tolerance >= 0:
        raise FertoolError(f"tolerance: must be >= 0, got {tolerance}")
    if max_images is not None and max_images < 1:
        raise FertoolError(f"max_images: must be >= 1, got {max_images}")
    data = inputs.open_split(csv=csv, images=images, split=split, what="ablate")
    source = inputs.source
    if max_images is not None and max_images < len(data):
        data = SubsetSplit(data, max_images)
    n = len(data)

    precision = rcp.train.eval_precision if precision is None else precision
    infer = dict(
        batch_size=batch_size,
        device=dev,
        precision=precision,
        channels_last=rcp.train.channels_last and dev.type == "cuda",
    )
    start = time.perf_counter()
    full, rows, stats = _measure(
        model,
        data,
        modes=modes,
        set_list=ablation_sets(names, kinds),
        preset=preset,
        seed=seed,
        heads=heads,
        engine=engine,
        infer=infer,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    kept = _smallest_kept_table(
        rows,
        modes=modes,
        names=names,
        heads=head_counts,
        full=full,
        tolerance=tolerance,
        tta=preset is not None,
        exhaustive="all" in kinds,
    )

    report: dict[str, Any] = {
        "checkpoint": str(checkpoint_path),
        "arch": ckpt.get("arch"),
        "stage": ckpt.get("stage"),
        "split": split,
        **source,
        "n": n,
        "input_size": inputs.size,
        "tta": tta_name,
        "lhc_seed": seed,
        "modes": list(modes),
        "notes": notes,
        "sets": list(kinds),
        "tolerance": tolerance,
        "modules": [
            {
                "name": nm,
                "heads": head_counts[nm],
                "channels": int(m.channels),
                "size": list(m.spatial) if m.spatial else None,
                "after": next((pos for pos, v in getattr(model, "lhc_after", {}).items() if v == nm), None),
            }
            for nm, m in modules.items()
        ],
        "total_heads": sum(head_counts.values()),
        "full": full,
        "results": rows,
        "smallest_kept": kept,
        "device": str(dev),
        "seconds": seconds,
    }
    if heads:
        report["heads"] = head_summary(stats, modules)
        report["heads"]["controller"] = controller_weights(model)

    rcp_out = dataclasses.replace(rcp, ablate=AblateConfig(modes=tuple(modes), sets=tuple(kinds), tolerance=tolerance))
    out = Path(out_dir) if out_dir is not None else default_out_dir(checkpoint_path, split)
    _write_outputs(
        out,
        report,
        rows,
        rcp_out,
        model=model,
        data=data,
        pictures=pictures,
        device=dev,
        precision=precision,
        overwrite=overwrite,
        title=f"{ckpt.get('arch')} on {split} ({n} images): full {100 * full['accuracy']:.2f}%",
        progress=progress,
    )
    return {**report, "out_dir": str(out)}


def _measure(
    model: nn.Module,
    data: ImageSplit,
    *,
    modes: Sequence[str],
    set_list: list,
    preset: Any,
    seed: int | None,
    heads: bool,
    engine: str,
    infer: dict,
    progress: Progress | None,
) -> tuple:
    """The passes: the full model (plain, TTA), then every mode x set ablated.

    Returns (full accuracies, one row per ablated pass, the head statistics or None).
    """
    from ..evaluation.inference import predict_probs
    from ..evaluation.runtimes import build_engine
    from .heads import record_heads

    dev = infer["device"]
    modules = model.lhc_modules()
    names = list(modules)
    head_counts = {nm: int(m.heads) for nm, m in modules.items()}
    labels = data.labels.numpy()
    n = len(data)
    passes = 1 + len(modes) * len(set_list) + (1 if preset is not None else 0)
    done = [0]

    def step_progress(offset: int):
        if progress is None:
            return None

        def cb(k: int, total: int | None = None) -> None:
            progress(offset + k, passes * n)

        return cb

    def run(tta_preset=None, *, hooks: bool = False) -> dict:
        # An engine runs a copy (or an export) of the model as ablated now; the pass that
        # feeds the head analysis runs the model itself, whose hooks record the heads.
        runner = (
            None
            if hooks
            else build_engine(
                model,
                engine,
                device=dev,
                precision=infer["precision"],
                channels_last=infer["channels_last"] or dev.type == "cpu",
            )
        )
        result = predict_probs(model, data, tta=tta_preset, engine=runner, progress=step_progress(done[0]), **infer)
        done[0] += n
        return result

    # Full model: the plain pass also feeds the head analysis (hooks, sufficient statistics).
    with record_heads(model) if heads else contextlib.nullcontext() as stats:
        full_plain = run(hooks=heads)
    full = {"accuracy": _accuracy(full_plain["probs"], labels), "tta_accuracy": None}
    if preset is not None:
        full["tta_accuracy"] = _accuracy(run(preset)["tta_probs"], labels)

    rows: list[dict] = []
    for mode in modes:
        for subset, how in set_list:
            with ablated(model, mode, subset, seed=seed):
                result = run(preset)
            acc = _accuracy(result["probs"], labels)
            row = {
                "mode": mode,
                "set": list(subset),
                "kinds": how,
                "kept": [m for m in names if m not in subset],
                "heads_ablated": sum(head_counts[m] for m in subset),
                "heads_kept": sum(head_counts[m] for m in names if m not in subset),
                "accuracy": acc,
                "delta": acc - full["accuracy"],
                "tta_accuracy": None,
                "tta_delta": None,
            }
            if preset is not None:
                row["tta_accuracy"] = _accuracy(result["tta_probs"], labels)
                row["tta_delta"] = row["tta_accuracy"] - full["tta_accuracy"]
            rows.append(row)
    return full, rows, stats


def _smallest_kept_table(
    rows: list[dict],
    *,
    modes: Sequence[str],
    names: Sequence[str],
    heads: dict,
    full: dict,
    tolerance: float,
    tta: bool,
    exhaustive: bool,
) -> dict:
    """Per mode, the smallest set of kept modules within ``tolerance`` of the full model."""
    kept = {}
    for mode in modes:
        kept[mode] = {
            "accuracy": smallest_kept(
                rows,
                mode=mode,
                names=names,
                heads=heads,
                full=full["accuracy"],
                tolerance=tolerance,
                exhaustive=exhaustive,
            )
        }
        if tta:
            kept[mode]["tta_accuracy"] = smallest_kept(
                rows,
                mode=mode,
                names=names,
                heads=heads,
                full=full["tta_accuracy"],
                tolerance=tolerance,
                key="tta_accuracy",
                exhaustive=exhaustive,
            )
    return kept


def _write_outputs(
    out: Path,
    report: dict,
    rows: list[dict],
    rcp_out: Any,
    *,
    model: nn.Module,
    data: ImageSplit,
    pictures: int,
    device: torch.device,
    precision: str,
    overwrite: bool,
    title: str,
    progress: Progress | None = None,
) -> None:
    """``out``'s files (ablation.json, plots, pictures, recipe.yaml), built in a temporary folder.

    ``progress`` hears of every figure as its own phase ("figures"): the passes' phase ends
    when its images are done, and a command interrupted while drawing says so there.
    """
    from ..files import write_json
    from ..recipe import save_recipe
    from .plots import plot_ablation, plot_head_correlation

    with_corr = [e for e in report.get("heads", {}).get("modules", {}).values() if e["correlation"] is not None]
    drawn, total = (
        [0],
        1 + len(with_corr) + (min(pictures, len(data)) * len(model.lhc_modules()) if pictures > 0 else 0),
    )

    def tick(k: int = 1) -> None:
        drawn[0] += k
        if progress is not None:
            progress(min(drawn[0], total), total, description="figures")

    tick(0)
    with atomic_dir(out, "ablation", overwrite=overwrite, legacy="ablation.json") as tmp:
        plot_ablation(rows, tmp / "ablation.png", title=title)
        tick()
        files = ["ablation.json", "ablation.png"]
        if "heads" in report:
            for nm, entry in report["heads"]["modules"].items():
                if entry["correlation"] is not None:
                    corr = np.array([[np.nan if v is None else v for v in r] for r in entry["correlation"]])
                    value = entry["mean_abs_offdiag"]
                    plot_head_correlation(
                        corr,
                        tmp / f"heads-{nm}.png",
                        title=f"{nm}: head correlation, mean |off-diag| "
                        + ("n/a" if value is None else f"{value:.2f}"),
                    )
                    files.append(f"heads-{nm}.png")
                    tick()
        if pictures > 0:
            report["pictures"] = _pictures(model, data, pictures, tmp / "pictures", device, precision, tick)
            files += [f"pictures/{p}" for item in report["pictures"] for p in item["files"]]
        save_recipe(rcp_out, tmp / "recipe.yaml")
        files.append("recipe.yaml")
        report["files"] = files
        write_json(tmp / "ablation.json", report)
    tick(total)  # every figure written (fewer than counted when a module recorded nothing)


def _pictures(
    model: nn.Module,
    data: ImageSplit,
    count: int,
    folder: Path,
    device: torch.device,
    mode: str = "fp32",
    tick: Callable[[], None] = lambda: None,
) -> list[dict]:
    """Attention pictures of ``count`` images evenly spaced in ``data`` (see plot_attention),
    computed in precision ``mode`` as the accuracies are (TF32 switched explicitly)."""
    from ..evaluation.metrics import predictions
    from ..utils import precision
    from .plots import plot_attention

    folder.mkdir(parents=True, exist_ok=True)
    n = len(data)
    index = torch.from_numpy(np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64)))
    modules = model.lhc_modules()
    saved = {k: m.record for k, m in modules.items()}
    was_training = model.training
    model.to(device).eval()
    try:
        for m in modules.values():
            m.record = True
        with torch.inference_mode(), precision(device, mode):
            x = data.load(index, device)  # (P, 3, S, S)
            probs = torch.softmax(model(x).float(), dim=-1).cpu().numpy()
        recorded = {k: (m.last_attention, m.last_weights) for k, m in modules.items()}
    finally:
        for k, m in modules.items():
            m.record = saved[k]
            m.last_attention = m.last_weights = None
        model.train(was_training)
    pred = predictions(probs)
    images = x.permute(0, 2, 3, 1).float().cpu().numpy()  # (P, S, S, 3)
    class_names = list(data.class_names)
    rows = getattr(data, "rows", None)
    out = []
    for p, i in enumerate(index.tolist()):
        item = {
            "index": i,
            "row": None if rows is None else int(rows[i]),
            "label": class_names[int(data.labels[i])],
            "predicted": class_names[int(pred[p])],
            "files": [],
        }
        for name, (att, weights) in recorded.items():
            if att is None:
                continue
            module = modules[name]
            h, w = module.spatial
            # (heads, C, r) -> mean over channels (heads, r) -> stripes back in row-major order (H, W)
            energy = att[p].float().abs().mean(dim=1).reshape(h, w).cpu().numpy()
            stripe_rows = (h * w / module.heads) / w
            fname = f"img{i:05d}-{name}.png"
            plot_attention(
                images[p],
                weights[p].float().cpu().numpy(),
                energy,
                stripe_rows,
                folder / fname,
                title=f"image {i} ({item['label']}, predicted {item['predicted']}): {name}, "
                f"{module.heads} head(s), {module.channels} channels, {h}x{w}",
            )
            item["files"].append(fname)
            tick()
        out.append(item)
    return out
