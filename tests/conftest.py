"""Shared test fixtures.

Reference fixtures of the authors' implementation are read from ``../shared/reference/``
(CI has ``shared/`` beside the checkout).  A user's clone has no ``../shared``: the few
small files the essential tests need are copied into ``tests/data/``; the other
reference tests skip with a clear reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _threads_per_worker() -> int:
    """CPU threads for each test process: the cores shared out among pytest-xdist's workers.

    Two workers with two threads each on two cores keep OpenMP's waiting threads spinning
    against each other; one thread per worker does the same work in less CPU time.  Child
    processes (the CLI, torchrun) inherit the count through ``OMP_NUM_THREADS``.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, (os.cpu_count() or 1) // workers))


os.environ["OMP_NUM_THREADS"] = str(_threads_per_worker())  # before torch starts its pool

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tests._reference_weights import load_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_REFERENCE = REPO.parent / "shared" / "reference"
TEST_DATA = Path(__file__).resolve().parent / "data"

torch.set_num_threads(_threads_per_worker())

#: Narrow model for every test that is not about the paper's full size: ResNet34's depth and
#: insertion points at 1/8 of its channels (``model.channels`` / ``model.stem_width``).  A
#: full-width ResNet34 has ~25M parameters (``best.pt`` 85 MB, ``last.pt`` with Adam 256 MB);
#: this one ~0.35M.  Keras import and the reference-equivalence tests stay full width.
TINY_WIDTH = {"channels": [8, 16, 32, 64], "stem_width": 8}


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


@pytest.fixture(scope="session", autouse=True)
def _torch_inference_runtime():
    """``auto`` inference means eager PyTorch in tests: ``auto`` picks ONNX Runtime on the CPU,
    which exports the model to ONNX for every evaluation (seconds each).  Tests of the
    runtimes themselves ask for ``onnxruntime`` by name or use :func:`real_auto_runtime`."""
    import fertool.evaluation.runtimes as engines

    patch = pytest.MonkeyPatch()
    _REAL["onnxruntime_available"] = engines.onnxruntime_available
    patch.setattr(engines, "onnxruntime_available", lambda: False)
    yield
    patch.undo()


@pytest.fixture
def real_auto_runtime(monkeypatch):
    """Undo :func:`_torch_inference_runtime` for one test: ``auto`` chooses as for a user."""
    import fertool.evaluation.runtimes as engines

    monkeypatch.setattr(engines, "onnxruntime_available", _REAL["onnxruntime_available"])


_REAL: dict = {}  # the functions _torch_inference_runtime replaced


@pytest.fixture
def cli_runner():
    from typer.testing import CliRunner

    return CliRunner()


def pytest_terminal_summary(terminalreporter) -> None:
    """After the run: how many ``kill -9`` points the fault tests survived (tests/test_faults.py)."""
    survived = [
        r.nodeid.split("::")[-1]
        for r in terminalreporter.stats.get("passed", [])
        if r.when == "call" and "test_faults.py::test_kill_" in r.nodeid
    ]
    if survived:
        terminalreporter.write_line(f"fault injection: {len(survived)} kill -9 points survived ({', '.join(survived)})")


_FAILED_MODULES: set[str] = set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed:
        _FAILED_MODULES.add(item.module.__name__)


@pytest.fixture(scope="module", autouse=True)
def _module_temporaries(request, tmp_path_factory):
    """The folders a module's fixtures made (``tmp_path_factory.mktemp``) are removed when the
    module ends, unless one of its tests failed: pytest removes them only when the whole run
    ends, so a run's temporary space would be the sum of every module's instead of the largest
    one's.  (A passed test's own ``tmp_path`` goes at once: setup.cfg's retention policy.)"""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if request.module.__name__ not in _FAILED_MODULES:
        for folder in set(base.iterdir()) - before:
            shutil.rmtree(folder, ignore_errors=True)
