"""Live training logs chosen in the recipe: ``train.log: [tensorboard, mlflow]``.

Both are :class:`~.callbacks.Callback` objects, built per stage by :func:`make_loggers`.

TensorBoard (``pip install -e '.[tensorboard]'``; ``torch.utils.tensorboard``) writes
``RUN/<stage>/tensorboard/``, so ``tensorboard --logdir RUN`` shows every stage of a run:
scalars ``step/loss`` (the epoch's running mean), ``step/batch_loss`` and ``step/lr`` every
``train.log_every`` optimiser steps; ``epoch/<metric>`` for every number of the epoch's
``metrics.jsonl`` row (x = epoch); the resolved recipe as text; the confusion matrix of
``best.pt`` on the validation split as an image when the stage ends.

MLflow (``pip install -e '.[mlflow]'``, the ``mlflow-skinny`` client) logs one MLflow run
per stage into experiment ``train.mlflow_experiment``, at ``train.mlflow_uri`` when given,
else into a local file store ``RUN/mlruns`` (view it with the full ``mlflow`` package:
``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri RUN/mlruns``): params = the
flattened recipe, metrics as for TensorBoard (``step_loss``/``step_batch_loss``/``step_lr``
per step; epoch metrics under their ``metrics.jsonl`` names, step = epoch), tags stage and
status, and ``best.pt`` and ``summary.json`` as artifacts.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RecipeError
from ..recipe import Recipe, dump_recipe, to_dict
from .callbacks import ROW_CONTEXT, Callback

if TYPE_CHECKING:  # pragma: no cover
    from .stage import Stage

__all__ = ["TensorBoardLogger", "MLflowLogger", "make_loggers", "check_loggers", "epoch_metrics"]

_EXTRAS = {
    "tensorboard": ("tensorboard", "torch.utils.tensorboard needs the tensorboard package"),
    "mlflow": ("mlflow", "needs the MLflow client (mlflow-skinny, or mlflow)"),
}


def check_loggers(recipe: Recipe) -> None:
    """Raise a :class:`RecipeError` naming the extra to install for each missing logger."""
    problems = []
    for name in recipe.train.log:
        module = "tensorboard" if name == "tensorboard" else "mlflow"
        try:
            __import__(module)
        except ImportError:
            extra, why = _EXTRAS[name]
            problems.append(f"train.log: {name} {why}: pip install -e '.[{extra}]' (or pip install 'fertool[{extra}]')")
    if problems:
        raise RecipeError(problems if len(problems) > 1 else problems[0])


def make_loggers(recipe: Recipe, run_dir: Path) -> list[Callback]:
    """The loggers ``train.log`` asks for, in that order."""
    check_loggers(recipe)
    kinds = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}
    return [kinds[name](Path(run_dir)) for name in recipe.train.log]


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of an epoch row as logged: everything numeric but ``epoch`` and the
    engine's context keys (``best`` as 0/1)."""
    out = {}
    for key, value in row.items():
        if key in ROW_CONTEXT or key == "epoch" or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[key] = float(value)
    return out


def _confusion_png(run: Stage, path: Path) -> bool:
    """The confusion matrix of best.pt on the validation split, as a PNG; False without best.pt."""
    import numpy as np

    from ..checkpoint import load_checkpoint
    from ..evaluation.inference import predict_probs
    from ..evaluation.metrics import confusion_matrix
    from ..evaluation.plots import plot_confusion
    from ..surgery import model_from_checkpoint

    if not run.out.best.is_file() or not len(run.val_split):
        return False
    ckpt = load_checkpoint(run.out.best)
    probs = np.asarray(
        predict_probs(
            model_from_checkpoint(ckpt),
            run.val_split,
            device=run.device,
            batch_size=run.recipe.train.eval_batch_size,
            precision=run.eval_precision,
        )["probs"]
    )
    labels = run.val_split.labels.numpy()
    counts = confusion_matrix(labels, probs.argmax(1), len(run.classes))
    plot_confusion(
        [(f"stage {run.stage} best.pt (epoch {ckpt.get('epoch')}) on {run.val_split.name}", counts)], run.classes, path
    )
    return True


@contextlib.contextmanager
def _temporary_png() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fertool-log-") as folder:
        yield Path(folder) / "confusion.png"


class TensorBoardLogger(Callback):
    """TensorBoard event files in ``RUN/<stage>/tensorboard/``."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.writer = None

    def on_stage_start(self, run: Stage) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.out.dir / "tensorboard"))
        self.writer.add_text("recipe", "```yaml\n" + dump_recipe(run.recipe) + "```", global_step=run.saved_epoch)

    def on_step(self, step: Mapping[str, Any]) -> None:
        if self.writer is None or not step.get("log_step"):
            return
        for key, tag in (("loss", "step/loss"), ("batch_loss", "step/batch_loss"), ("lr", "step/lr")):
            if math.isfinite(step[key]):
                self.writer.add_scalar(tag, step[key], global_step=step["step"])

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in epoch_metrics(row).items():
            self.writer.add_scalar(f"epoch/{key}", value, global_step=row["epoch"])
        self.writer.flush()

    def on_stage_end(self, summary: Mapping[str, Any], run: Stage) -> None:
        if self.writer is None:
            return
        try:
            if summary.get("status") in ("finished", "early_stopped"):
                with _temporary_png() as png:
                    if _confusion_png(run, png):
                        import numpy as np
                        from PIL import Image

                        image = np.asarray(Image.open(png).convert("RGB"))  # (H, W, 3)
                        self.writer.add_image(
                            "confusion/val", image, global_step=summary.get("best_epoch") or 0, dataformats="HWC"
                        )
        finally:
            self.writer.close()
            self.writer = None


def _mlflow_client(uri: str) -> Any:
    """An MlflowClient; a local ``file:`` store is allowed explicitly (MLflow 3 keeps the file
    store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set)."""
    from mlflow.tracking import MlflowClient

    if not uri.startswith("file:"):
        return MlflowClient(tracking_uri=uri)
    saved = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        client = MlflowClient(tracking_uri=uri)
        _ = client._tracking_client.store  # the store is built lazily: build it while allowed
        return client
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = saved


def mlflow_uri(recipe: Recipe, run_dir: Path) -> str:
    """``train.mlflow_uri``, else the local file store ``RUN/mlruns``."""
    return recipe.train.mlflow_uri or (Path(run_dir).resolve() / "mlruns").as_uri()


class MLflowLogger(Callback):
    """One MLflow run per stage."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.client: Any = None
        self.run_id: str | None = None

    def on_stage_start(self, run: Stage) -> None:
        from ..recipe import _flat

        self.client = _mlflow_client(mlflow_uri(run.recipe, self.run_dir))
        name = run.recipe.train.mlflow_experiment
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        where = run.out.dir.relative_to(self.run_dir) if run.out.dir.is_relative_to(self.run_dir) else run.out.dir
        created = self.client.create_run(
            experiment_id,
            run_name=f"{self.run_dir.name}/{where}",
            tags={
                "fertool.stage": run.stage,
                "fertool.run": str(self.run_dir),
                "fertool.stage_dir": str(run.out.dir),
                "fertool.seed": str(run.start.seed),
                "fertool.resumed_after_epoch": str(run.saved_epoch),
            },
        )
        self.run_id = created.info.run_id
        from mlflow.entities import Param

        params = [Param(key, str(value)[:6000]) for key, value in _flat(to_dict(run.recipe)).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, int(step)) for k, v in values.items()])

    def on_step(self, step: Mapping[str, Any]) -> None:
        if self.run_id is None or not step.get("log_step"):
            return
        values = {f"step_{k}": step[k] for k in ("loss", "batch_loss", "lr") if math.isfinite(step[k])}
        self._metrics(values, step["step"])

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        if self.run_id is not None:
            self._metrics(epoch_metrics(row), row["epoch"])

    def on_stage_end(self, summary: Mapping[str, Any], run: Stage) -> None:
        if self.run_id is None:
            return
        status = summary.get("status")
        try:
            self.client.set_tag(self.run_id, "fertool.status", str(status))
            if run.out.best.is_file():
                self.client.log_artifact(self.run_id, str(run.out.best))
            if run.out.summary.is_file():
                self.client.log_artifact(self.run_id, str(run.out.summary))
        finally:
            self.client.set_terminated(
                self.run_id,
                "FINISHED"
                if status in ("finished", "early_stopped")
                else "KILLED"
                if status == "interrupted"
                else "FAILED",
            )
            self.run_id = None
