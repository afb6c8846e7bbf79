"""``torchrun --nproc_per_node 2 -m fertool train`` on CPU (gloo): DDP end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist
import yaml

from fertool.files import read_jsonl
from tests.conftest import TINY_WIDTH

TINY = {
    "model": {"input_size": 32, "hidden": [8, 8], "bn_momentum": 0.9, **TINY_WIDTH},
    "train": {
        "eval_batch_size": 16,
        "stages": {"1": {"optimizer": "sgd", "max_epochs": 2, "batch_size": 8, "patience": 5}},
    },
}


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo needed"
)
def test_two_cpu_processes_train_one_stage(tmp_path):
    # --run-dir, not --run: torchrun's argparse rejects --run as an ambiguous --run-path.
    from fertool.data.sample import generate_sample

    csv = generate_sample(tmp_path / "sample.csv", per_class=2, seed=0)  # 14 training, 7 validation images
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "fertool",
        "train",
        "-r",
        str(recipe),
        "--stage",
        "1",
        "--run-dir",
        str(run),
        "--csv",
        str(csv),
        "--device",
        "cpu",
        "--seed",
        "3",
        "--quiet",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((run / "stage1/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "finished"
    # Both ranks ended with identical weights (the engine compares checksums across ranks).
    assert summary["ranks_consistent"] is True
    # Only rank 0 wrote: one metrics line per epoch, one log line per epoch.
    assert [r["epoch"] for r in read_jsonl(run / "stage1/metrics.jsonl")] == [1, 2]
    assert proc.stderr.count("epoch 1/2:") == 1
    # Each epoch covered the whole training split (7 images per rank), summed over ranks.
    assert [r["images"] for r in read_jsonl(run / "stage1/metrics.jsonl")] == [14, 14]
    assert (run / "stage1/best.pt").is_file() and (run / "stage1/last.pt").is_file()
