"""train.log: TensorBoard event files and the MLflow store read back, equal to metrics.jsonl."""

from __future__ import annotations

import sys

import pytest

from fertool.engine.train import train_stage
from fertool.errors import RecipeError
from fertool.files import read_json, read_jsonl
from fertool.recipe import load_recipe, to_dict

from .test_engine import random_split, tiny_recipe


def _with_log(recipe, *loggers, **train):
    raw = to_dict(recipe)
    raw["train"].update(log=list(loggers), log_every=1, **train)
    return load_recipe(raw)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One stage (2 epochs, 2 optimiser steps each) logged to TensorBoard and MLflow at once."""
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    pytest.importorskip("mlflow", reason="the [mlflow] extra (mlflow-skinny) is not installed")
    run = tmp_path_factory.mktemp("logged")
    recipe = _with_log(tiny_recipe(max_epochs=2, patience=5), "tensorboard", "mlflow")
    train, val = random_split(14, name="Training", seed=1), random_split(7, name="PublicTest", seed=2)
    train_stage(recipe, "1", run, seed=1, train_data=train, val_data=val)
    return run, read_jsonl(run / "stage1/metrics.jsonl")


def test_tensorboard_events_equal_metrics_jsonl(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, rows = logged_run
    events = EventAccumulator(str(run / "stage1/tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"):
        scalars = events.Scalars(f"epoch/{key}")
        assert [s.step for s in scalars] == [r["epoch"] for r in rows]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6)  # float32 in the file
    steps = events.Scalars("step/lr")
    assert [s.step for s in steps] == [1, 2, 3, 4]  # log_every 1: every optimiser step (14 images, batch 7)
    assert [s.value for s in steps] == pytest.approx([rows[0]["lr"]] * 4)
    loss = events.Scalars("step/loss")  # the running epoch mean: at an epoch's last step it is the epoch's loss
    assert [loss[1].value, loss[3].value] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)
    assert "confusion/val" in tags["images"]
    image = events.Images("confusion/val")[0]
    assert image.width > 100 and image.height > 100
    text = events.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "input_size: 32" in text


def test_mlflow_run_equals_metrics_jsonl_and_holds_the_recipe_and_best_checkpoint(logged_run):
    from mlflow.tracking import MlflowClient

    from fertool.engine.loggers import _mlflow_client

    run, rows = logged_run
    client = _mlflow_client((run / "mlruns").resolve().as_uri())
    assert isinstance(client, MlflowClient)
    experiment = client.get_experiment_by_name("fertool")
    (found,) = client.search_runs([experiment.experiment_id])
    rid = found.info.run_id
    assert found.info.status == "FINISHED" and found.data.tags["fertool.status"] == "finished"
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        history = sorted(client.get_metric_history(rid, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(r["epoch"], r[key]) for r in rows]  # float64 kept exactly
    assert [m.step for m in client.get_metric_history(rid, "step_lr")] == [1, 2, 3, 4]
    params = found.data.params
    assert params["train.stages.1.batch_size"] == "7" and params["model.input_size"] == "32"
    artifacts = {a.path for a in client.list_artifacts(rid)}
    assert {"best.pt", "summary.json"} <= artifacts
    assert read_json(run / "stage1/summary.json")["status"] == "finished"


@pytest.mark.parametrize("logger, extra", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_missing_logger_package_names_its_extra_before_anything_is_written(tmp_path, monkeypatch, logger, extra):
    monkeypatch.setitem(sys.modules, "tensorboard" if logger == "tensorboard" else "mlflow", None)
    recipe = _with_log(tiny_recipe(max_epochs=1), logger)
    train, val = random_split(7, name="Training"), random_split(7, name="PublicTest")
    with pytest.raises(RecipeError, match=rf"train\.log: {logger} .*pip install -e '\.\[{extra}\]'"):
        train_stage(recipe, "1", tmp_path / "run", train_data=train, val_data=val)
    written = [p.name for p in (tmp_path / "run").rglob("*") if p.is_file()] if (tmp_path / "run").exists() else []
    assert not [name for name in written if not name.endswith(".lock")]  # the stage lock at most


def test_train_log_accepts_only_known_loggers():
    with pytest.raises(RecipeError, match="train.log: must be tensorboard or mlflow"):
        load_recipe(None, ["train.log=[wandb]"])
    assert load_recipe(None, ["train.log=[tensorboard,mlflow]"]).train.log == ("tensorboard", "mlflow")
    assert load_recipe("paper").train.log == ()
