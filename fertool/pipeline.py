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
    RUN/**/eval-<split>/            evaluations; RUN/report/ the Table 7 report
    RUN/pipeline.json               the final table, and each seed's verdict

Seeds: seed S is the data seed (data order, augmentation) of the three stage-4-like runs
of ``seed-S``; their init seed (LHC modules, dropout) is S too (``pipeline.lhc_init:
per_seed``, as the authors' seeded script derives both from one seed) or
``train.init_seed`` for every seed (``fixed``).  Both are recorded in every summary.

Selection: an LHC-Net the paper's stage-4 rule rejects, or one that diverged
(:func:`fertool.analysis.verdict.stage4_verdict`, which ``fertool report`` reads too), is
not a candidate for the final table's best, not ablated and not extended to an LHC-NetC;
the table says how many runs each row was chosen from and which were left out, and why.
A diverged stage 4 does not stop the pipeline: its ``best.pt`` is renamed
``best.diverged.pt`` and the other seeds go on.

Re-running skips every step whose outputs say it finished, and resumes a stage that was
interrupted (its ``last.pt`` exists but its summary does not say it finished).

Several pipeline processes may work on one run directory at once (``--seeds 3`` and
``--seeds 4``, one per GPU or cluster node; docs/clusters.md): each step is done under the
lock of its output (``RUN/stage2``, ``RUN/seed-S``, ...) by whichever process gets there
first, and the others wait for it and then find it done (:func:`fertool.locks.cooperating`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from .analysis.verdict import EXCLUDED, stage4_verdict
from .errors import FertoolError, TrainingError
from .files import check_output_dir, read_json, sha256_file, write_json
from .locks import cooperating
from .progress import Progress
from .protocol import FINISHED, PAPER_PARAMS, PAPER_TABLE7, stage_dir
from .recipe import Recipe, load_recipe, save_run_recipe, to_dict
from .steps import StepTracker, pipeline_plan

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
        # which checkpoints are kept, and where the live logs go, change no result
        for key in ("keep", "log", "log_every", "mlflow_uri", "mlflow_experiment"):
            section["train"].pop(key, None)
    changed = sorted(
        key for key in set(saved) | set(current) if key != "pipeline" and saved.get(key) != current.get(key)
    )
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


def _release_memory() -> None:
    """Give the memory a finished step freed back to the system (glibc's ``malloc_trim``).

    The steps run in one process: training, then evaluation through another runtime with
    other allocation sizes.  glibc keeps what one step freed in its per-thread arenas, where
    the next step's allocations often do not fit, so the footprint would grow towards the sum
    of the steps' instead of the largest.  Elsewhere than glibc: nothing.
    """
    import ctypes
    import gc

    gc.collect()
    try:  # the running process's own symbols: glibc's when it is the C library
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclasses.dataclass
class _Run:
    """What every step of one pipeline call shares."""

    recipe: Recipe
    run_dir: Path
    device: str
    log: Log
    progress_factory: Callable[[str], Any] | None
    callbacks: Sequence[Any] = ()
    #: ``hold(target)``: the lock of one output, shared with cooperating processes
    hold: Callable[[str | os.PathLike], Any] = dataclasses.field(default_factory=lambda: cooperating())
    #: the step line (``step 4/15 stage 2 (ResNet34v2) ...``) and its estimate
    steps: StepTracker | None = None
    csv: Path | None = None
    images: Path | None = None

    @contextmanager
    def bar(self, description: str) -> Iterator[Progress]:
        with self.progress_factory(description) if self.progress_factory else nullcontext(None) as progress:
            yield self.steps.watch(progress) if self.steps else progress  # the step line counts the epochs

    @contextmanager
    def step(self, key: str) -> Iterator[None]:
        """One step of the plan (:func:`fertool.steps.pipeline_plan`) doing its work."""
        if self.steps:
            self.steps.start(key)
        yield
        _release_memory()
        if self.steps:
            self.steps.end(key)

    def skip(self, key: str, why: str | None = None) -> None:
        """A step of the plan with nothing to do: its outputs are there, or ``why``."""
        if self.steps:
            self.steps.end(key, skipped=True, why=why)

    def train(
        self,
        stage: str,
        where: Path,
        *,
        seed: int,
        init: Path | None = None,
        init_seed: int | None = None,
        stage_recipe: Recipe | None = None,
    ) -> Path:
        """Train (or resume, or skip when finished) one stage; returns its ``best.pt``."""
        from .engine.train import train_stage

        folder = stage_dir(where, stage)
        key = f"train {folder.relative_to(self.run_dir).as_posix()}"
        with self.hold(folder):
            status = (read_json(folder / "summary.json") or {}).get("status")
            if status in FINISHED:
                self.log(f"{folder}: already {status}, skipped")
                self.skip(key)
            else:
                resume = (folder / "last.pt").is_file()
                self.log(f"{folder}: {'resuming' if resume else 'training'}")
                with self.step(key), self.bar(f"{folder.relative_to(self.run_dir)}") as progress:
                    train_stage(
                        stage_recipe or self.recipe,
                        stage,
                        where,
                        csv=self.csv,
                        images=self.images,
                        init=init,
                        seed=seed,
                        init_seed=init_seed,
                        resume=resume,
                        device=self.device,
                        progress=progress,
                        log=self.log,
                        callbacks=self.callbacks,
                    )
        return folder / "best.pt"

    def train_stage4(self, where: Path, **kwargs) -> tuple[Path | None, dict]:
        """A stage 4 (LHC-Net or ResNet control) and its verdict (:func:`stage4_verdict`).

        A stage that diverges is recorded, not fatal: its ``best.pt`` (from before the
        divergence) is renamed ``best.diverged.pt`` so that nothing takes it for the stage's
        result, and the pipeline goes on with the other seeds.  A re-run does not train it
        again (it would diverge the same way): delete the folder to try again."""
        folder = stage_dir(where, "4")
        if (read_json(folder / "summary.json") or {}).get("status") != "diverged":
            try:
                best = self.train("4", where, **kwargs)
            except TrainingError:
                if (read_json(folder / "summary.json") or {}).get("status") != "diverged":
                    raise
        verdict = stage4_verdict(folder)
        if verdict["status"] != "diverged":
            return best, verdict
        if (folder / "best.pt").is_file():
            os.replace(folder / "best.pt", folder / DIVERGED_BEST)
        self.log(f"{folder}: {verdict['reason']}; left out (delete the folder to train it again)")
        return None, verdict


#: What a diverged stage's best checkpoint (from before the divergence) is renamed to.
DIVERGED_BEST = "best.diverged.pt"


@dataclasses.dataclass
class _Seed:
    """One seed's models: LHC-Net (set C), LHC-NetC, the ResNet control (set A)."""

    seed: int
    init_seed: int
    lhc: Path | None
    lhc_verdict: dict
    controller: Path | None
    control: Path | None
    control_verdict: dict

    def record(self) -> dict:
        return {
            "seed": self.seed,
            "init_seed": self.init_seed,
            "lhc_net": self.lhc_verdict,
            "resnet_control": self.control_verdict,
        }


def run_pipeline(
    recipe: Recipe,
    run_dir: str | os.PathLike,
    *,
    csv: str | os.PathLike | None = None,
    seeds: Sequence[int] | None = None,
    device: str = "auto",
    log: Log | None = None,
    progress_factory: Callable[[str], Any] | None = None,
    callbacks: Sequence[Any] = (),
    wait: bool = True,
    wait_timeout: float | None = None,
    shared_only: bool = False,
) -> dict:
    """Run (or finish) the whole protocol; return the final table as a dict.

    ``progress_factory(description)`` returns a context manager yielding a progress
    callback (the CLI passes Rich bars); ``log`` receives one-line messages; ``callbacks``
    (:class:`fertool.engine.callbacks.Callback`) receive every trained stage's events.
    ``wait``: wait (up to ``wait_timeout`` seconds) for a step another process is doing,
    instead of failing at once.  ``shared_only``: stop after stages 1-3 (the parent of
    ``fertool pipeline --jobs`` does, then runs the seeds as processes of their own) and
    return ``{"run", "csv"}``.
    """
    log = log or (lambda message: None)
    seeds = list(seeds or recipe.pipeline.seeds)
    plan = pipeline_plan(recipe, seeds, ablate=recipe.pipeline.ablate)
    if shared_only:
        plan = [step for step in plan if step.key in ("prepare", "train stage1", "train stage2", "train stage3")]
    run = _Run(
        recipe,
        Path(run_dir),
        device,
        log,
        progress_factory,
        callbacks=callbacks,
        hold=cooperating(wait=wait, timeout=wait_timeout, log=log),
        steps=StepTracker(plan, log),
    )
    if not seeds:
        raise FertoolError("pipeline: needs at least one seed (--seeds or pipeline.seeds)")
    if csv is not None and not Path(csv).is_file():
        raise FertoolError(f"{csv}: no such CSV file")
    with run.hold(run.run_dir / "recipe.yaml"):
        _check_same_recipe(recipe, run.run_dir)
        check_output_dir(run.run_dir / "report", "report", legacy="report.json")  # before hours of training
        run.run_dir.mkdir(parents=True, exist_ok=True)
        if not save_run_recipe(recipe, run.run_dir / "recipe.yaml"):
            log(f"{run.run_dir / 'recipe.yaml'}: not written by fertool, left as it is")

    _prepare_data(run, csv)
    resnet_best = _train_resnet(run, first_seed=seeds[0])
    if shared_only:  # fertool pipeline --jobs: the seeds run in processes of their own
        return {"run": str(run.run_dir), "csv": str(run.csv)}
    outcomes = [_train_seed(run, seed, resnet_best) for seed in seeds]
    results = _evaluate(run, outcomes)
    _ablate_best(run, results)
    return _write_results(run, seeds, outcomes, results)


def _prepare_data(run: _Run, csv: str | os.PathLike | None) -> None:
    """Step 1: the CSV (the synthetic sample when none is given) -> ``RUN/data/prepared``."""
    from .data.prepare import prepare
    from .data.sample import generate_sample

    data_dir = run.run_dir / "data"
    run.images = data_dir / "prepared"
    with run.hold(run.images):
        if csv is None:
            csv = data_dir / "sample.csv"
            if not Path(csv).is_file():
                run.log(f"no --csv given: generating the synthetic sample data set in {csv}")
                generate_sample(csv, per_class=run.recipe.sample.per_class, seed=run.recipe.sample.seed)
        run.csv = Path(csv)
        if (run.images / "prepare.json").is_file():
            _check_same_csv(run.images / "prepare.json", run.csv, run.run_dir)
            run.skip("prepare")
        else:
            with run.step("prepare"), run.bar("prepare") as progress:
                prepare(
                    run.csv,
                    run.images,
                    config=run.recipe.prepare,
                    recipe=run.recipe,
                    overwrite=run.images.exists(),
                    progress=progress,
                )


def _train_resnet(run: _Run, *, first_seed: int) -> Path:
    """Step 2: the ResNet34v2 stages 1-3, shared by every seed; returns stage 3's best."""
    for stage in ("1", "2", "3"):
        best = run.train(stage, run.run_dir, seed=first_seed)
    return best


def _train_seed(run: _Run, seed: int, resnet_best: Path) -> _Seed:
    """Step 3, one seed: LHC-Net (stage 4), LHC-NetC (only from an LHC-Net the selection
    rule accepted), and the ResNet control (stage 4 without LHC modules, set A), trained
    as long as the LHC-Net so that the final table compares like with like."""
    seed_dir = run.run_dir / f"seed-{seed}"
    with run.hold(seed_dir):  # one process per seed
        return _train_seed_models(run, seed, seed_dir, resnet_best)


def _train_seed_models(run: _Run, seed: int, seed_dir: Path, resnet_best: Path) -> _Seed:
    init_seed = seed if run.recipe.pipeline.lhc_init == "per_seed" else run.recipe.train.init_seed
    lhc, lhc_verdict = run.train_stage4(seed_dir, seed=seed, init=resnet_best, init_seed=init_seed)
    controller = None
    if lhc_verdict["status"] in EXCLUDED:
        run.log(f"seed {seed}: LHC-Net {lhc_verdict['status']} ({lhc_verdict['reason']}): no LHC-NetC from it")
        controller_folder = stage_dir(seed_dir, "controller").relative_to(run.run_dir).as_posix()
        for step in ("train", "evaluate"):
            run.skip(f"{step} {controller_folder}", why=f"its LHC-Net {lhc_verdict['status']}")
    else:
        controller = run.train("controller", seed_dir, seed=seed, init=lhc, init_seed=init_seed)
    control, control_verdict = run.train_stage4(
        seed_dir / "resnet",
        seed=seed,
        init=resnet_best,
        init_seed=init_seed,
        stage_recipe=_with_stage_model(run.recipe, "4", "backbone"),
    )
    if control_verdict["status"] != "diverged":  # the rule judges LHC-Nets only
        control_verdict = {"status": "used", "reason": None}
    return _Seed(seed, init_seed, lhc, lhc_verdict, controller, control, control_verdict)


def _evaluate(run: _Run, outcomes: list[_Seed]) -> dict[str, list[dict]]:
    """Step 4: every trained model, plain and TTA, reused when up to date.  Rejected
    LHC-Nets are evaluated too (the report lists them); each result carries its seed and
    whether it ``counts`` (:func:`stage4_verdict`)."""
    from .evaluation.evaluate import evaluate_checkpoint

    split = run.recipe.data.test_split
    tta = run.recipe.tta.preset if run.recipe.pipeline.tta else None

    def via_lhc(v: dict) -> dict:  # an LHC-NetC not made: say why
        return v if v["status"] not in EXCLUDED else {**v, "reason": f"its LHC-Net: {v['reason']}"}

    models = {
        "ResNet34v2": [(o, o.control, o.control_verdict) for o in outcomes],
        "LHC-Net": [(o, o.lhc, o.lhc_verdict) for o in outcomes],
        "LHC-NetC": [(o, o.controller, via_lhc(o.lhc_verdict)) for o in outcomes],
    }
    results: dict[str, list[dict]] = {name: [] for name in models}
    for name, entries in models.items():
        params = None
        for outcome, path, verdict in entries:
            counts = verdict["status"] not in EXCLUDED
            base = {
                "seed": outcome.seed,
                "init_seed": outcome.init_seed,
                "counts": counts,
                "verdict": verdict["status"],
                "reason": verdict["reason"],
            }
            if path is None:  # diverged, or an LHC-NetC not made from a rejected LHC-Net
                results[name].append({**base, "accuracy": None, "tta": None, "params": None})
                continue
            params = params or keras_param_count(path)
            out = path.parent / f"eval-{split}"
            metrics_file = out / "metrics.json"
            key = f"evaluate {path.parent.relative_to(run.run_dir).as_posix()}"
            with run.hold(out):
                # Reused when newer than the checkpoint and with TTA figures if TTA is wanted.
                metrics = read_json(metrics_file)
                if (
                    metrics is not None
                    and metrics_file.stat().st_mtime >= path.stat().st_mtime
                    and (tta is None or metrics.get("tta"))
                ):
                    run.skip(key)
                else:
                    with run.step(key), run.bar(f"evaluate {path.parent.relative_to(run.run_dir)}") as progress:
                        metrics = evaluate_checkpoint(
                            path, csv=run.csv, split=split, tta=tta, out_dir=out, device=run.device, progress=progress
                        )
            results[name].append({**metrics, **base, "params": params, "checkpoint": str(path)})
    return results


def _ablate_best(run: _Run, results: dict[str, list[dict]]) -> None:
    """Step 5: the ablation of the best LHC-Net among those that count."""
    from .analysis.ablation import ablate

    counted = [r for r in results["LHC-Net"] if r["counts"] and r["accuracy"] is not None]
    if not run.recipe.pipeline.ablate or not results["LHC-Net"]:
        return
    if not counted:
        run.log("ablate: no LHC-Net passed the selection rule; nothing to ablate")
        run.skip("ablate", why="no LHC-Net passed the selection rule")
        return
    best = Path(max(counted, key=lambda r: r["accuracy"])["checkpoint"])
    split = run.recipe.data.test_split
    out = best.parent / f"ablate-{split}"
    with run.hold(out):
        if (out / "ablation.json").is_file():
            run.skip("ablate")
            return
        cfg = run.recipe.ablate
        with run.step("ablate"), run.bar("ablate") as progress:
            ablate(
                best,
                csv=run.csv,
                split=split,
                modes=cfg.modes,
                sets=cfg.sets,
                tolerance=cfg.tolerance,
                out_dir=out,
                device=run.device,
                progress=progress,
            )


def _write_results(run: _Run, seeds: list[int], outcomes: list[_Seed], results: dict[str, list[dict]]) -> dict:
    """Step 6: ``pipeline.json`` (the final table) and the report, which read the same verdicts."""
    from .analysis.report import report
    from .data.provenance import images_provenance, is_synthetic

    synthetic = is_synthetic(images_provenance(run.images, sample_seeds=(run.recipe.sample.seed, 0)))
    table = final_table(results)
    result = {
        "run": str(run.run_dir),
        "csv": str(run.csv),
        "synthetic": synthetic,
        "seeds": seeds,
        "lhc_init": run.recipe.pipeline.lhc_init,
        "seed_runs": [o.record() for o in outcomes],
        "table": table,
        "notes": table_notes(table, synthetic=synthetic),
    }
    with run.hold(run.run_dir / "report"):  # pipeline.json and RUN/report/: the last process to finish writes them
        write_json(run.run_dir / "pipeline.json", result)
        with run.step("report"):
            report([run.run_dir], out_dir=run.run_dir / "report", html=True)
    return result


def keras_param_count(checkpoint: Path) -> int:
    """Parameters as Keras ``count_params()`` counts them (BatchNorm moving statistics
    included), the convention of the paper's 27.6M / 32.4M."""
    from .checkpoint import load_checkpoint
    from .models.summary import summarize
    from .surgery import model_from_checkpoint

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
    """Sentences that belong under the final table: synthetic data, runs left out, TTA that hurt."""
    notes = []
    if synthetic:
        notes.append(
            "These results are on SYNTHETIC sample faces (cartoons from `fertool sample-data`); the "
            "paper's numbers are for FER2013 at 224 px and are shown for reference only."
        )
    for r in table:
        if r.get("excluded"):
            why = "; ".join(f"seed {e['seed']}: {e['reason']}" for e in r["excluded"])
            notes.append(
                f"{r['model']}: best of {r['runs']} run{'s' if r['runs'] != 1 else ''}; "
                f"{len(r['excluded'])} left out ({why})."
            )
    hurt = [
        f"{r['model']} {r['accuracy']:.2f}% -> {r['tta_accuracy']:.2f}%"
        for r in table
        if r["tta_accuracy"] is not None and r["accuracy"] is not None and r["tta_accuracy"] < r["accuracy"]
    ]
    if hurt:
        notes.append(f"TTA lowered the accuracy of {', '.join(hurt)}. {TTA_HURTS}")
    return notes


def final_table(results: dict[str, list[dict]]) -> list[dict]:
    """Rows in the shape of the paper's Table A2: best run per model, beside the paper.

    Only results that count (``counts`` not False: accepted by the selection rule, not
    diverged) are candidates; ``runs`` says how many there were and ``excluded`` which
    seeds were left out and why (a row with no run that counts has no accuracy)."""
    rows = []
    for name, runs in results.items():
        if not runs:
            continue
        counted = [m for m in runs if m.get("counts", True) and m.get("accuracy") is not None]
        excluded = [
            {"seed": m.get("seed"), "status": m.get("verdict"), "reason": m.get("reason")}
            for m in runs
            if not m.get("counts", True)
        ]
        best = max(counted, key=lambda m: m["accuracy"]) if counted else {}
        tta = (best.get("tta") or {}).get("accuracy")
        paper = PAPER_TABLE7[name]
        rows.append(
            {
                "model": name,
                "runs": len(counted),
                "rejected": len(excluded),
                "excluded": excluded,
                "seed": best.get("seed"),
                "accuracy": 100 * best["accuracy"] if best else None,
                "tta_accuracy": None if tta is None else 100 * tta,
                "params": best.get("params"),
                "paper_accuracy": paper["best"],
                "paper_tta_accuracy": paper["best_tta"],
                "paper_params": PAPER_PARAMS[name],
            }
        )
    return rows
