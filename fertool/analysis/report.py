"""Run statistics across seeds: Table 7 of the paper (docs/protocol.md §6, §7).

(Kept as one file: discovery and rendering of the one report read together.)

``report(run_dirs)`` walks the given folders for evaluation results
(``.../eval-<split>/metrics.json``, written by ``fertool evaluate`` next to a checkpoint)
and summarises the test accuracy of the runs per group.

What counts as a run
    A ``metrics.json`` under ``RUN/<stage>/eval-<split>/`` (``<stage>`` one of stage1,
    stage2, stage3, stage4, controller) belongs to run ``RUN``; the pipeline layout
    ``RUN/seed-<S>/<stage>/...`` is the same rule one level down, so every seed folder is a
    run.  A checkpoint evaluated outside a stage folder is a run of its own (the folder of
    the checkpoint).  With ``group_by="model"`` (or ``"recipe"``) a run contributes its
    *latest* evaluated stage to each group: stages 1-3 all produce a ResNet34v2, and the
    one that finished the backbone training (stage 3) is the run's ResNet34v2; the others
    are listed as superseded.  Likewise a result is superseded when another result of its
    group started from its checkpoint (the ``init`` of that stage's ``summary.json``): in
    the pipeline layout the shared ``RUN/stage3`` ResNet gives way to the per-seed ResNet
    re-runs ``RUN/seed-<S>/resnet/stage4`` that continue from it.

Groups
    Results of data sets with another class set than FER2013's (FER+, RAF-DB, class folders:
    the ``class_names`` of metrics.json) form groups of their own, named with the classes.
    ``model``: the architecture of the evaluated checkpoint (``arch`` in metrics.json, else
    implied by the stage folder): ResNet34v2 / LHC-Net / LHC-NetC.  ``stage``: the stage
    folder and the model, e.g. ``stage4 (LHC-Net)``.  ``recipe``: model + a fingerprint of the run's ``recipe.yaml`` (sha256 of the
    recipe without its ``pipeline`` section and data paths, first 8 hex digits), to compare
    training recipes.

Statistics (per group, on test accuracy; the same with TTA where every run has it)
    n, top 40%, top 40% without the best, top 25%, top 25% without the best, best, mean,
    std.  "Top k%" is the mean of the best ``m`` runs with ``m = round_half_up(k/100 * n)``
    and at least 1 (e.g. 20 runs -> 8 and 5, 5 runs -> 2 and 1; the paper gives no run
    count); "without the
    best" is the mean of runs 2..m and needs m >= 2 (else n/a).  std is the sample standard
    deviation (n - 1 in the denominator; n/a for one run).

Seeds
    The ``seed-<S>`` folders directly in a given folder (the pipeline layout) are counted
    apart: *finished*, *running* (a fertool process holds the seed's lock, e.g. another node
    of a cluster job; its results so far are in the tables) or *failed or interrupted* (no
    process holds it and a stage of it did not finish, or nothing of it was evaluated).

Selection rule
    Runs whose ``stage4/summary.json`` says ``selection.accepted: false`` (the paper's rule,
    docs/protocol.md §4: training loss not below 1.1x that of the starting ResNet) or
    ``status: diverged`` are rejected (:func:`fertool.analysis.verdict.stage4_verdict`, the
    verdict the pipeline's final table reads too): their stage-4 (LHC-Net) and controller
    (LHC-NetC) results are listed separately, with the reason, and left out of the
    statistics.  The backbone results of such a run are unaffected.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from ..data.provenance import SYNTHETIC
from ..errors import DataError, FertoolError
from ..files import atomic_dir, check_output_dir, parse_yaml, read_json, write_json
from ..protocol import MODEL_NAMES, PAPER_TABLE7, RUN_SETS, STAGE_ARCH, STAGE_FOLDERS, paper_set
from .stats import STAT_COLUMNS, pct, run_statistics, table_rows, top_count
from .verdict import EXCLUDED, stage4_verdict

__all__ = [
    "RunResult",
    "top_count",
    "run_statistics",
    "find_results",
    "report",
    "render_markdown",
    "seed_states",
]

GROUP_BY = ("model", "stage", "recipe")


@dataclass
class RunResult:
    """One evaluated checkpoint: a point of Table 7."""

    run: str  # the run folder
    stage: str | None  # stage folder (stage1..controller) or the metrics' "stage"
    arch: str | None
    group: str
    seed: int | None
    accuracy: float
    tta_accuracy: float | None
    metrics: str  # path of metrics.json
    recipe_id: str | None = None
    paper_set: str | None = None  # the paper's run set (A, B, C: protocol.RUN_SETS)
    status: str = "used"  # used | rejected | superseded
    note: str | None = None
    synthetic: bool = False  # trained or evaluated on the synthetic sample (metrics' data / model_data)


# --------------------------------------------------------------------------- discovery


def _read_json(path: Path) -> dict:
    return read_json(path, strict=True)


def _accuracy(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DataError(f"{where}: expected an accuracy between 0 and 1, got {value!r}")
    return float(value)


def _tta_accuracy(metrics: dict, where: str) -> float | None:
    tta = metrics.get("tta")
    if isinstance(tta, dict) and tta.get("accuracy") is not None:
        return _accuracy(tta["accuracy"], f"{where}: tta.accuracy")
    if metrics.get("tta_accuracy") is not None:
        return _accuracy(metrics["tta_accuracy"], f"{where}: tta_accuracy")
    return None


def _arch_title(arch: str | None) -> str:
    """Display name of an architecture outside the paper's three (from the model registry)."""
    if not arch:
        return "unknown"
    from ..models import arch_title  # imports torch: only for other backbones' runs

    return arch_title(arch)


def _seed(metrics: dict, stage_dir: Path | None, run_dir: Path) -> int | None:
    """The run's seed: metrics.json, else a stage summary.json of the run, else ``seed-<S>``."""
    if isinstance(metrics.get("seed"), int):
        return metrics["seed"]
    summaries = [stage_dir] if stage_dir is not None else []
    summaries += [run_dir / s for s in STAGE_FOLDERS if run_dir / s != stage_dir]
    for folder in summaries:
        if not (folder / "summary.json").is_file():
            continue
        seed = (read_json(folder / "summary.json") or {}).get("seed")
        if isinstance(seed, int):
            return seed
    match = re.fullmatch(r"seed-?(\d+)", run_dir.name)
    return int(match.group(1)) if match else None


def _run_recipe(*folders: Path | None) -> dict | None:
    """The ``recipe.yaml`` of the first of ``folders`` that has one, as raw data (None when
    there is none, or it is unreadable)."""
    for folder in folders:
        if folder is not None and (folder / "recipe.yaml").is_file():
            try:
                raw = parse_yaml((folder / "recipe.yaml").read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                return None
            return dict(raw) if isinstance(raw, dict) else None
    return None


def _recipe_id(run_dir: Path, stage_dir: Path | None) -> str | None:
    """Fingerprint of the run's recipe: sha256 of its JSON without ``pipeline`` and data paths."""
    raw = _run_recipe(run_dir, stage_dir, run_dir.parent)
    if raw is None:
        return None
    raw.pop("pipeline", None)
    if isinstance(raw.get("data"), dict):
        raw["data"] = {k: v for k, v in raw["data"].items() if k not in ("csv", "images")}
    text = json.dumps(raw, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def _class_set(metrics: dict) -> str:
    """`` [names...]`` for a class set other than FER2013's (results of different class sets
    are never pooled), else ``""``."""
    from .. import CLASS_NAMES

    names = metrics.get("class_names")
    if not isinstance(names, list) or tuple(names) == CLASS_NAMES:
        return ""
    return f" [{', '.join(map(str, names))}]"


def find_results(
    run_dirs: Sequence[str | os.PathLike],
    *,
    split: str = "PrivateTest",
    group_by: str = "model",
) -> list[RunResult]:
    """Every ``eval-<split>/metrics.json`` under ``run_dirs``, as :class:`RunResult` s.

    Marks rejected runs (selection rule) and superseded stages (see the module docstring).
    """
    if group_by not in GROUP_BY:
        raise FertoolError(f"--group-by: must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
    if not run_dirs:
        raise FertoolError("report: give at least one run folder")
    files: dict[Path, None] = {}
    for run_dir in run_dirs:
        root = Path(run_dir)
        if not root.is_dir():
            raise DataError(f"{root}: no such run folder")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if Path(dirpath).name == f"eval-{split}" and "metrics.json" in filenames:
                files[(Path(dirpath) / "metrics.json").resolve()] = None
    if not files:
        raise DataError(
            f"{', '.join(map(str, run_dirs))}: no evaluation results (eval-{split}/metrics.json); "
            "run fertool evaluate on the checkpoints first"
        )
    results = []
    where_from: dict[int, tuple[Path, tuple[str, ...] | None]] = {}  # checkpoint folder, init folder
    for path in files:
        metrics = _read_json(path)
        where = str(path)
        if "accuracy" not in metrics:
            raise DataError(f"{where}: no 'accuracy' key")
        ckpt_dir = path.parent.parent
        if ckpt_dir.name in STAGE_FOLDERS:
            stage_dir, run_dir, stage = ckpt_dir, ckpt_dir.parent, ckpt_dir.name
        else:
            stage_dir, run_dir = None, ckpt_dir
            stage = metrics.get("stage")
            stage = None if stage is None else str(stage)
        arch = metrics.get("arch") or STAGE_ARCH.get(stage or "")
        model = MODEL_NAMES.get(arch) or _arch_title(arch)
        recipe_id = _recipe_id(run_dir, stage_dir)
        group = {
            "model": model,
            "stage": f"{stage or 'unknown'} ({model})",
            "recipe": f"{model} @ {recipe_id or 'no recipe'}",
        }[group_by] + _class_set(metrics)
        result = RunResult(
            run=str(run_dir.resolve()),
            stage=stage,
            arch=arch,
            group=group,
            seed=_seed(metrics, stage_dir, run_dir),
            accuracy=_accuracy(metrics["accuracy"], f"{where}: accuracy"),
            tta_accuracy=_tta_accuracy(metrics, where),
            metrics=where,
            recipe_id=recipe_id,
            synthetic=SYNTHETIC
            in ((metrics.get("data") or {}).get("kind"), (metrics.get("model_data") or {}).get("kind")),
            paper_set=paper_set(arch, stage, _run_lhc(run_dir, stage_dir)),
        )
        where_from[id(result)] = (ckpt_dir, _init_dir(stage_dir))
        if arch in ("lhc_net", "lhc_netc"):
            verdict = stage4_verdict(run_dir / "stage4")  # the pipeline's final table reads the same verdict
            if verdict["status"] in EXCLUDED:
                result.status = "rejected"
                result.note = verdict["reason"]
        results.append(result)
    # A result whose checkpoint another result of its group continued from is superseded
    # (the pipeline's shared stage-3 ResNet when per-seed stage-4 ResNet re-runs exist).
    for r2 in results:
        init = where_from[id(r2)][1]
        if r2.status == "rejected" or init is None:
            continue
        for r1 in results:
            if r1 is not r2 and r1.group == r2.group and r1.status == "used" and _same_dir(where_from[id(r1)][0], init):
                r1.status = "superseded"
                r1.note = f"continued by {r2.run} ({r2.stage})"
    # One result per (run, group): the latest stage; earlier ones are superseded.
    order = {s: i for i, s in enumerate(STAGE_FOLDERS)}
    latest: dict[tuple[str, str], RunResult] = {}
    for r in results:
        if r.status != "used":
            continue
        key = (r.run, r.group)
        if key not in latest or order.get(r.stage or "", -1) > order.get(latest[key].stage or "", -1):
            latest[key] = r
    for r in results:
        if r.status == "used" and (r.run, r.group) in latest and latest[(r.run, r.group)] is not r:
            r.status = "superseded"
            r.note = f"{latest[(r.run, r.group)].stage} is this run's {r.group}"
    results.sort(key=lambda r: (_group_order(r.group), r.run, order.get(r.stage or "", -1)))
    # Show runs relative to the folder above the common parent of the given folders.
    base = Path(os.path.commonpath([str(Path(d).resolve()) for d in run_dirs])).parent
    for r in results:
        r.run = os.path.relpath(r.run, base)
    return results


def _init_dir(stage_dir: Path | None) -> tuple[str, ...] | None:
    """Folder of the checkpoint a stage started from (``init`` of its summary.json), as path parts.

    The engine writes the path as it was given (``RUN/stage3/best.pt``, possibly relative,
    or ``... + lhc (seed S)`` when it added modules).
    """
    if stage_dir is None or not (stage_dir / "summary.json").is_file():
        return None
    label = (read_json(stage_dir / "summary.json") or {}).get("init")
    if not isinstance(label, str) or not label.strip():
        return None
    path = Path(label.split(" + ")[0].strip())
    if path.is_absolute():
        return Path(os.path.normpath(path)).parent.parts
    parts = Path(os.path.normpath(path)).parent.parts
    return None if ".." in parts or not parts else parts


def _same_dir(folder: Path, init: tuple[str, ...]) -> bool:
    """Whether ``folder`` (resolved) is the folder ``init`` names (absolute, or a relative tail)."""
    parts = folder.parts
    if Path(*init).is_absolute():
        return parts == Path(os.path.realpath(Path(*init))).parts or parts == init
    return parts[-len(init) :] == init


# --------------------------------------------------------------------------- seeds

#: The trained folders of a pipeline seed (``RUN/seed-S/...``).
SEED_STAGES = ("stage4", "controller", "resnet/stage4")


def seed_states(run_dirs: Sequence[str | os.PathLike], *, split: str = "PrivateTest") -> dict:
    """The ``seed-<S>`` folders in ``run_dirs``: finished, running (with the lock's holder) or
    failed (with why); see the module docstring."""
    from ..locks import lock_holder
    from ..protocol import FINISHED

    states: dict[str, list] = {"finished": [], "running": [], "failed": []}
    for root in run_dirs:
        root = Path(root)
        try:
            folders = sorted(
                (p for p in root.iterdir() if re.fullmatch(r"seed-\d+", p.name) and p.is_dir()),
                key=lambda p: int(p.name[5:]),
            )
        except OSError:
            continue
        for folder in folders:
            name = os.path.relpath(folder, root.parent)
            holder = lock_holder(folder)
            if holder is not None:
                states["running"].append({"seed": name, "holder": str(holder)})
                continue
            why = None
            for stage in SEED_STAGES:
                stage_path = folder / stage
                summary = read_json(stage_path / "summary.json") if (stage_path / "summary.json").is_file() else None
                status = (summary or {}).get("status")
                if summary is not None and status not in FINISHED:
                    why = f"{stage} {status}"
                elif summary is None and (stage_path / "last.pt").is_file():
                    why = f"{stage} interrupted"
                if why:
                    break
            if why is None and not any(folder.glob(f"**/eval-{split}/metrics.json")):
                why = "nothing evaluated"
            if why is None:
                states["finished"].append(name)
            else:
                states["failed"].append({"seed": name, "why": why})
    return states


def seed_line(states: dict) -> str | None:
    """``seeds: 3 finished, 1 running (seed-4: pid N on HOST), 1 failed or interrupted (...)``,
    or None when every seed finished (or there are none)."""
    if not states["running"] and not states["failed"]:
        return None
    parts = [f"{len(states['finished'])} finished"]
    if states["running"]:
        parts.append(
            f"{len(states['running'])} running ("
            + ", ".join(f"{s['seed']}: {s['holder']}" for s in states["running"])
            + ")"
        )
    if states["failed"]:
        parts.append(
            f"{len(states['failed'])} failed or interrupted ("
            + ", ".join(f"{s['seed']}: {s['why']}" for s in states["failed"])
            + ")"
        )
    return "seeds: " + ", ".join(parts)


# --------------------------------------------------------------------------- report


def _default_out(run_dirs: Sequence[str | os.PathLike]) -> Path:
    resolved = [str(Path(d).resolve()) for d in run_dirs]
    return Path(os.path.commonpath(resolved)) / "report"


def report(
    run_dirs: Sequence[str | os.PathLike],
    *,
    group_by: str = "model",
    split: str = "PrivateTest",
    tta: bool | None = None,
    out_dir: str | os.PathLike | None = None,
    html: bool = False,
    overwrite: bool = False,
) -> dict:
    """Table 7 from the evaluated runs under ``run_dirs`` (module docstring has the rules).

    ``tta``: None includes the TTA statistics of a group when every used run of it has TTA
    metrics; False leaves TTA out; True requires them.  Writes ``report.md``,
    ``report.json`` and ``runs.png`` to ``out_dir`` (default: ``report/`` in the common
    parent of ``run_dirs``) atomically, and returns the report dict (``"out_dir"`` included).
    ``html`` adds ``index.html``: every result of the run folders on one self-contained page
    (:mod:`fertool.analysis.html`).
    """
    out = Path(out_dir) if out_dir is not None else _default_out(run_dirs)
    check_output_dir(out, "report", overwrite, legacy="report.json")
    results = find_results(run_dirs, split=split, group_by=group_by)
    groups: dict[str, dict] = {}
    for name in sorted({r.group for r in results}, key=_group_order):
        used = [r for r in results if r.group == name and r.status == "used"]
        entry: dict[str, Any] = {"plain": run_statistics([r.accuracy for r in used]), "tta": None}
        with_tta = [r.tta_accuracy for r in used if r.tta_accuracy is not None]
        if tta is not False and used and len(with_tta) == len(used):
            entry["tta"] = run_statistics(with_tta)
        elif tta is True:
            missing = next(r for r in used if r.tta_accuracy is None) if used else None
            if missing is not None:
                raise DataError(f"{missing.metrics}: has no TTA metrics (evaluate with --tta, or report --no-tta)")
        entry["rejected"] = sum(r.group == name and r.status == "rejected" for r in results)
        sets = {r.paper_set for r in used}
        entry["paper_set"] = sets.pop() if len(sets) == 1 else None  # one of the paper's run sets, or a mix
        groups[name] = entry
    data = {
        "split": split,
        "group_by": group_by,
        "rules": {
            "top_k": "mean of the best round_half_up(k% x n) runs, at least 1",
            "without_best": "the same runs without the best one; needs at least 2",
            "std": "sample standard deviation (n - 1)",
            "per_run": "the latest evaluated stage of a run represents it in each group",
            "rejected": (
                "stage4/summary.json selection.accepted == false or status == diverged: "
                "LHC-Net / LHC-NetC results excluded"
            ),
        },
        "groups": groups,
        "seeds": seed_states(run_dirs, split=split),
        "runs": [asdict(r) for r in results],
        "paper": PAPER_TABLE7,
        "out_dir": str(out),
    }
    from .plots import plot_runs

    with atomic_dir(out, "report", overwrite=overwrite, legacy="report.json") as tmp:
        write_json(tmp / "report.json", data)
        (tmp / "report.md").write_text(render_markdown(data), encoding="utf-8")
        plot_runs(
            results,
            tmp / "runs.png",
            groups=sorted({r.group for r in results}, key=_group_order),
            title=f"{split} accuracy per run",
        )
        if html:
            from .html import render_html

            (tmp / "index.html").write_text(render_html(run_dirs, data, runs_png=tmp / "runs.png"), encoding="utf-8")
    return data


def _group_label(name: str, entry: dict) -> str:
    """A group's name with the paper's run set, e.g. ``ResNet34v2 (set A)``."""
    return f"{name} (set {entry['paper_set']})" if entry.get("paper_set") else name


def _run_lhc(run_dir: Path, stage_dir: Path | None) -> list | None:
    """``model.lhc`` of the run's recipe.yaml (the stage's own first), None when there is none."""
    raw = _run_recipe(stage_dir, run_dir, run_dir.parent) or {}
    lhc = (raw.get("model") or {}).get("lhc") if isinstance(raw.get("model"), dict) else None
    return lhc if isinstance(lhc, list) else None


def _group_order(name: str) -> tuple:
    """The paper's models first, in its order; anything else after them."""
    known = list(PAPER_TABLE7)
    head = name.split(" @ ")[0]
    return (known.index(head) if head in known else len(known), name)


def _stat_cell(key: str, stats: dict) -> str:
    value = stats.get(key)
    if key == "n":
        return str(value)
    if key.startswith("top") and not key.endswith("wo_best") and value is not None:
        return f"{pct(value)} ({stats[key + '_runs']})"
    return pct(value)


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(data: dict) -> str:
    """``report.md``: the statistics tables, the paper's numbers, rejected runs, all runs."""
    groups, runs = data["groups"], data["runs"]
    used = [r for r in runs if r["status"] == "used"]
    lines = [
        f"# Test accuracy across runs ({data['split']})",
        "",
        f"{len(used)} results from {len({r['run'] for r in runs})} run folder(s), grouped by {data['group_by']}. "
        "Accuracies in percent. Top k% = mean of the best round-half-up(k% x n) runs (at least 1; "
        "the number of runs in brackets); w/o best drops the best of them (needs 2); std is the sample "
        "standard deviation. A run's latest evaluated stage represents it in each group.",
        "",
    ]
    seeds = seed_line(data.get("seeds") or {"running": [], "failed": []})
    if seeds:
        lines += [
            f"> **Not every seed finished.** {seeds}. Only what was evaluated is in the tables; "
            "re-run the pipeline command of a failed seed to resume it.",
            "",
        ]
    synthetic = [r for r in used if r.get("synthetic")]
    if synthetic:
        lines += [
            f"> **Synthetic data.** {len(synthetic)} of these {len(used)} results come from the generated sample of "
            "cartoon faces (`fertool sample-data`), not from FER2013: they show that the machinery works and say "
            "nothing about facial expression recognition. The paper's numbers below are FER2013 PrivateTest at "
            "224 px, for reference only.",
            "",
        ]
    lines += [
        "## Without TTA",
        "",
    ]
    header = ["group"] + [title for _, title in STAT_COLUMNS]
    lines += _table(
        [[_group_label(g, e)] + [_stat_cell(k, s) for k, _ in STAT_COLUMNS] for g, e, s in table_rows(groups, "plain")],
        header,
    )
    tta_rows = table_rows(groups, "tta")  # the same groups as without TTA
    if tta_rows:
        lines += ["", "## With TTA", ""]
        lines += _table(
            [[_group_label(g, e)] + [_stat_cell(k, s) for k, _ in STAT_COLUMNS] for g, e, s in tta_rows], header
        )
    sets = sorted({e["paper_set"] for e in groups.values() if e.get("paper_set")})
    if sets:
        lines += ["", "Run sets of the paper (Table 7): " + "; ".join(f"{s} = {RUN_SETS[s]}" for s in sets) + "."]
    lines += ["", "## The paper (FER2013 PrivateTest; Table 7 without TTA, best single model with TTA)", ""]
    paper_rows = []
    for model, p in PAPER_TABLE7.items():
        ours = groups.get(model)
        plain = ours["plain"] if ours else {}
        ours_tta = ours["tta"] if ours and ours["tta"] else {}
        paper_rows.append(
            [
                model,
                f"{p['top40']:.2f}",
                pct(plain.get("top40")),
                f"{p['top25']:.2f}",
                pct(plain.get("top25")),
                f"{p['best']:.2f}",
                pct(plain.get("best")),
                f"{p['best_tta']:.2f}",
                pct(ours_tta.get("best")),
            ]
        )
    ours = "ours (synthetic)" if synthetic else "ours"
    lines += _table(
        paper_rows, ["model", "paper top 40%", ours, "paper top 25%", ours, "paper best", ours, "paper best TTA", ours]
    )
    rejected = [r for r in runs if r["status"] == "rejected"]
    lines += ["", "## Rejected by the selection rule or diverged (excluded from the statistics)", ""]
    if rejected:
        lines += _table(
            [[r["run"], str(r["seed"]), str(r["stage"]), pct(r["accuracy"]), r["note"] or ""] for r in rejected],
            ["run", "seed", "stage", "accuracy", "why"],
        )
    else:
        lines.append("None.")
    lines += ["", "## All results", ""]
    lines += _table(
        [
            [
                r["group"],
                r["run"],
                str(r["seed"]),
                str(r["stage"]),
                pct(r["accuracy"]),
                pct(r["tta_accuracy"]),
                r["status"] + (f" ({r['note']})" if r["note"] and r["status"] == "superseded" else ""),
            ]
            for r in runs
        ],
        ["group", "run", "seed", "stage", "accuracy", "TTA accuracy", "status"],
    )
    return "\n".join(lines) + "\n"
