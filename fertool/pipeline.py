"""The whole protocol in one call: prepare -> stages 1-3 -> LHC -> stage 4 -> controller ->
evaluate (plain and TTA) -> ablate -> report.

Layout of a pipeline run directory::

    RUN/recipe.yaml                 the resolved recipe
    RUN/data/sample.csv             the synthetic sample (only when no CSV was given)
    RUN/data/prepared/              `fertool prepare` output (training images)
    RUN/stage1/ stage2/ stage3/     the ResNet34v2 stages (shared by every seed)
    RUN/seed-S/stage4/              LHC-Net trained with data seed S (the paper's set C)
    RUN/seed-S/controller/          LHC-NetC from that LHC-Net
    RUN/seed-S/resnet/stage4/       the ResNet control: stage 4 without LHC modules, data seed S
                                    (the paper's set A); run for every seed, one included

The LHC modules' initial weights come from ``train.init_seed`` for every seed (fixed, as
in the paper's run sets); the seeds vary the data order and augmentation.
    RUN/**/eval-<split>/            evaluations; RUN/report/ the Table 7 report
    RUN/pipeline.json               the final table

Re-running skips every step whose outputs say it finished, and resumes a stage that was
interrupted (its ``last.pt`` exists but its summary does not say it finished).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import FertoolError
from .files import check_output_dir, read_json, sha256_file, write_json
from .locks import holding_lock
from .protocol import FINISHED, PAPER_PARAMS, PAPER_TABLE7, stage_dir
from .recipe import Recipe, load_recipe, save_run_recipe, to_dict

Log = Callable[[str], None]


def _with_stage_model(recipe: Recipe, stage: str, model: str) -> Recipe:
    """A copy of ``recipe`` whose ``stage`` trains ``model`` (e.g. the ResNet control)."""
    stages = dict(recipe.train.stages)
    stages[stage] = dataclasses.replace(stages[stage], model=model)
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, stages=stages))


def _check_same_recipe(recipe: Recipe, run_dir: Path) -> None:
    """Refuse to continue a run directory that was started with a different recipe: its
    finished stages would be mixed with new ones.  The ``pipeline`` section (seeds, TTA,
    ablation switches) and ``train.keep`` may change between runs, e.g. to add seeds; keys
    added to fertool since the run started count with their defaults."""
    saved_file = run_dir / "recipe.yaml"
    if not saved_file.is_file():
        return
    try:
        saved = to_dict(load_recipe(saved_file, stored=True))
    except FertoolError:
        raise FertoolError(f"{saved_file}: unreadable; use a new --run directory") from None
    current = to_dict(recipe)
    for section in (saved, current):
        section["train"].pop("keep", None)  # which checkpoints are kept changes no result
    changed = sorted(key for key in set(saved) | set(current)
                     if key != "pipeline" and saved.get(key) != current.get(key))
    if changed:
        raise FertoolError(
            f"{run_dir}: was started with a different recipe (sections differ: {', '.join(changed)}); "
            "use a new --run directory, or delete this one to start over"
        )


def _check_same_csv(summary: Path, csv: Path, run_dir: Path) -> None:
    """Refuse to continue a run directory whose images were prepared from another CSV."""
    try:
        source = read_json(summary)["source"]["csv"]
        digest = read_json(summary)["source"].get("sha256")
    except (KeyError, TypeError, AttributeError):
        raise FertoolError(f"{summary}: unreadable; use a new --run directory") from None
    if Path(source).resolve() == csv.resolve():
        return
    # a run folder moved or copied elsewhere records its own data/ CSV at the old place:
    # the same bytes are the same CSV
    if isinstance(digest, str) and csv.is_file() and sha256_file(csv) == digest:
        return
    raise FertoolError(
        f"{run_dir}: was started with the CSV {source}, not {csv}; "
        "use a new --run directory, or delete this one to start over"
    )


@holding_lock(lambda args: args["run_dir"])  # one pipeline per run directory
def run_pipeline(
    recipe: Recipe,
    run_dir: str | os.PathLike,
    *,
    csv: str | os.PathLike | None = None,
    seeds: Sequence[int] | None = None,
    device: str = "auto",
    log: Log | None = None,
    progress_factory: Callable[[str], Any] | None = None,
) -> dict:
    """Run (or finish) the whole protocol; return the final table as a dict.

    ``progress_factory(description)`` returns a context manager yielding a progress
    callback (the CLI passes Rich bars); ``log`` receives one-line messages.
    """
    from contextlib import nullcontext

    from .analysis.ablation import ablate
    from .analysis.report import report
    from .data.prepare import prepare
    from .data.provenance import images_provenance, is_synthetic
    from .data.sample import generate_sample
    from .engine.train import train_stage
    from .evaluation.evaluate import evaluate_checkpoint

    log = log or (lambda message: None)

    def bar(description: str):
        return progress_factory(description) if progress_factory else nullcontext(None)

    run_dir = Path(run_dir)
    seeds = list(seeds or recipe.pipeline.seeds)
    if not seeds:
        raise FertoolError("pipeline: needs at least one seed (--seeds or pipeline.seeds)")
    if csv is not None and not Path(csv).is_file():
        raise FertoolError(f"{csv}: no such CSV file")
    _check_same_recipe(recipe, run_dir)
    check_output_dir(run_dir / "report", "report", legacy="report.json")  # before hours of training
    run_dir.mkdir(parents=True, exist_ok=True)
    if not save_run_recipe(recipe, run_dir / "recipe.yaml"):
        log(f"{run_dir / 'recipe.yaml'}: not written by fertool, left as it is")

    # 1. data --------------------------------------------------------------------------
    data_dir = run_dir / "data"
    if csv is None:
        csv = data_dir / "sample.csv"
        if not Path(csv).is_file():
            log(f"no --csv given: generating the synthetic sample data set in {csv}")
            generate_sample(csv, per_class=recipe.sample.per_class, seed=recipe.sample.seed)
    csv = Path(csv)
    images = data_dir / "prepared"
    if (images / "prepare.json").is_file():
        _check_same_csv(images / "prepare.json", csv, run_dir)
        log(f"prepare: {images} exists, skipped")
    else:
        with bar("prepare") as progress:
            prepare(csv, images, config=recipe.prepare, recipe=recipe, overwrite=images.exists(), progress=progress)

    def train(stage: str, where: Path, *, seed: int, init: Path | None = None, stage_recipe: Recipe = recipe) -> Path:
        folder = stage_dir(where, stage)
        status = (read_json(folder / "summary.json") or {}).get("status")
        if status in FINISHED:
            log(f"{folder}: already {status}, skipped")
        else:
            resume = (folder / "last.pt").is_file()
            log(f"{folder}: {'resuming' if resume else 'training'}")
            with bar(f"{folder.relative_to(run_dir)}") as progress:
                train_stage(stage_recipe, stage, where, csv=csv, images=images, init=init, seed=seed,
                            resume=resume, device=device, progress=progress, log=log)
        return folder / "best.pt"

    # 2. ResNet34v2 stages 1-3 (shared by every seed) -----------------------------------
    first_seed = seeds[0]
    for stage in ("1", "2", "3"):
        resnet_best = train(stage, run_dir, seed=first_seed)

    # 3. per seed: LHC-Net (stage 4), LHC-NetC (controller), ResNet control ------------
    # The ResNet34v2 results are the control re-runs (set A), trained as long as the
    # LHC-Nets (set C), so that the final table compares like with like.
    checkpoints: dict[str, list[Path]] = {"ResNet34v2": [], "LHC-Net": [], "LHC-NetC": []}
    for seed in seeds:
        seed_dir = run_dir / f"seed-{seed}"
        lhc_best = train("4", seed_dir, seed=seed, init=resnet_best)
        checkpoints["LHC-Net"].append(lhc_best)
        checkpoints["LHC-NetC"].append(train("controller", seed_dir, seed=seed, init=lhc_best))
        control = train("4", seed_dir / "resnet", seed=seed, init=resnet_best,
                        stage_recipe=_with_stage_model(recipe, "4", "backbone"))
        checkpoints["ResNet34v2"].append(control)

    # 4. evaluation, plain and TTA ------------------------------------------------------
    split = recipe.data.test_split
    tta = recipe.tta.preset if recipe.pipeline.tta else None
    results: dict[str, list[dict]] = {name: [] for name in checkpoints}
    for name, paths in checkpoints.items():
        params = keras_param_count(paths[0])
        for path in paths:
            out = path.parent / f"eval-{split}"
            metrics_file = out / "metrics.json"
            # Reused when newer than the checkpoint and with TTA figures if TTA is wanted.
            metrics = read_json(metrics_file)
            if (metrics is not None and metrics_file.stat().st_mtime >= path.stat().st_mtime
                    and (tta is None or metrics.get("tta"))):
                log(f"{out}: already evaluated, skipped")
            else:
                with bar(f"evaluate {path.parent.relative_to(run_dir)}") as progress:
                    metrics = evaluate_checkpoint(path, csv=csv, split=split, tta=tta, out_dir=out,
                                                  device=device, progress=progress)
            results[name].append({**metrics, "params": params})

    # 5. ablation of the best LHC-Net, and the Table 7 report ---------------------------
    if recipe.pipeline.ablate and checkpoints["LHC-Net"]:
        best_index = max(range(len(results["LHC-Net"])), key=lambda i: results["LHC-Net"][i]["accuracy"])
        lhc_best = checkpoints["LHC-Net"][best_index]
        out = lhc_best.parent / f"ablate-{split}"
        if (out / "ablation.json").is_file():
            log(f"{out}: already done, skipped")
        else:
            with bar("ablate") as progress:
                ablate(lhc_best, csv=csv, split=split, modes=recipe.ablate.modes, sets=recipe.ablate.sets,
                       tolerance=recipe.ablate.tolerance, out_dir=out, device=device, progress=progress)
    synthetic = is_synthetic(images_provenance(images, sample_seeds=(recipe.sample.seed, 0)))
    table = final_table(results)
    result = {"run": str(run_dir), "csv": str(csv), "synthetic": synthetic, "seeds": seeds, "table": table,
              "notes": table_notes(table, synthetic=synthetic)}
    write_json(run_dir / "pipeline.json", result)
    report([run_dir], out_dir=run_dir / "report", html=True)
    return result


def keras_param_count(checkpoint: Path) -> int:
    """Parameters as Keras ``count_params()`` counts them (BatchNorm moving statistics
    included), the convention of the paper's 27.6M / 32.4M."""
    from .checkpoint import load_checkpoint
    from .surgery import model_from_checkpoint
    from .models.summary import summarize

    ckpt = load_checkpoint(checkpoint)
    return summarize(model_from_checkpoint(ckpt), ckpt["arch_args"].get("input_size", 224)).keras_params


#: Why test-time augmentation can lower accuracy (said whenever it does).
TTA_HURTS = (
    "TTA averages the predictions for shifted, zoomed and rotated copies of each image; that only "
    "helps a model that has learned to be indifferent to those changes (the paper trains for many "
    "epochs with the same augmentation, at 224 px). A briefly trained model, or small images where a "
    "few pixels of shift move a mouth or an eye a long way, can lose accuracy instead."
)


def table_notes(table: list[dict], *, synthetic: bool) -> list[str]:
    """Sentences that belong under the final table: synthetic data, TTA that hurt."""
    notes = []
    if synthetic:
        notes.append("These results are on SYNTHETIC sample faces (cartoons from `fertool sample-data`); the "
                     "paper's numbers are for FER2013 at 224 px and are shown for reference only.")
    hurt = [f"{r['model']} {r['accuracy']:.2f}% -> {r['tta_accuracy']:.2f}%" for r in table
            if r["tta_accuracy"] is not None and r["tta_accuracy"] < r["accuracy"]]
    if hurt:
        notes.append(f"TTA lowered the accuracy of {', '.join(hurt)}. {TTA_HURTS}")
    return notes


def final_table(results: dict[str, list[dict]]) -> list[dict]:
    """Rows in the shape of the paper's Table A2: best run per model, beside the paper."""
    rows = []
    for name, runs in results.items():
        if not runs:
            continue
        best = max(runs, key=lambda m: m["accuracy"])
        tta = (best.get("tta") or {}).get("accuracy")
        paper = PAPER_TABLE7[name]
        rows.append({
            "model": name,
            "runs": len(runs),
            "accuracy": 100 * best["accuracy"],
            "tta_accuracy": None if tta is None else 100 * tta,
            "params": best.get("params"),
            "paper_accuracy": paper["best"],
            "paper_tta_accuracy": paper["best_tta"],
            "paper_params": PAPER_PARAMS[name],
        })
    return rows
