"""Shared test fixtures.

Reference fixtures of the authors' implementation are read from ``../shared/reference/``
(CI has ``shared/`` beside the checkout).  A user's clone has no ``../shared``: the few
small files the essential tests need are copied into ``tests/data/``; the other
reference tests skip with a clear reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests._reference_weights import load_json

REPO = Path(__file__).resolve().parent.parent
SHARED_REFERENCE = REPO.parent / "shared" / "reference"
TEST_DATA = Path(__file__).resolve().parent / "data"

torch.set_num_threads(2)


def reference_file(name: str) -> Path:
    """Path of a reference fixture: ../shared/reference first, then tests/data, else skip."""
    for folder in (SHARED_REFERENCE, TEST_DATA):
        path = folder / name
        if path.is_file():
            return path
    pytest.skip(f"reference fixture {name} not found: it lives in ../shared/reference/ (absent in this checkout)")


def load_reference(name: str) -> dict:
    """Load an .npz fixture into a dict of arrays (see reference_file)."""
    with np.load(reference_file(name), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def net_ref() -> dict:
    """full_network.npz: the reference networks' input, outputs and feature maps."""
    return load_reference("full_network.npz")


@pytest.fixture(scope="session")
def tensors() -> list[dict]:
    """full_network.json: the formula of every weight tensor of the reference networks."""
    return load_json(reference_file("full_network.json"))


@pytest.fixture
def cli_runner():
    from typer.testing import CliRunner

    return CliRunner()
