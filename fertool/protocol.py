"""The paper's protocol as data: every constant of Pecoraro et al. (2022) that fertool uses,
written once and imported everywhere else (see docs/protocol.md).

* the training stages, their folders and the statuses of a stage that is done (Section 4.1);
* the model kinds a stage trains and how to tell which one a checkpoint holds;
* Table 2 (where the five LHC modules go and their hyper-parameters) and the initial
  controller values of LHC-NetC;
* the paper's reported FER2013 test accuracies (Table 7 and Table A2).

This module imports nothing from fertool and no heavy library, so any module may use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "STAGES",
    "STAGE_DIRS",
    "STAGE_FOLDERS",
    "PREVIOUS",
    "FINISHED",
    "MODEL_KINDS",
    "KIND_ARCH",
    "STAGE_ARCH",
    "MODEL_NAMES",
    "TABLE2",
    "CONTROLLER_INIT",
    "PAPER_TABLE7",
    "PAPER_PARAMS",
    "RUN_SETS",
    "paper_set",
    "normalise_stage",
    "stage_dir",
    "checkpoint_kind",
]

# --------------------------------------------------------------------------- stages

#: Stage names in protocol order: three ResNet34v2 stages, LHC-Net, LHC-NetC.
STAGES = ("1", "2", "3", "4", "controller")
#: The folder of a run that each stage writes.
STAGE_DIRS = {"1": "stage1", "2": "stage2", "3": "stage3", "4": "stage4", "controller": "controller"}
#: Those folders in training order.
STAGE_FOLDERS = tuple(STAGE_DIRS.values())
#: The stage whose best checkpoint a stage starts from by default.
PREVIOUS = {"2": "1", "3": "2", "4": "3", "controller": "4"}
#: ``summary.json`` statuses of a stage that is done (the others: interrupted, diverged).
FINISHED = ("finished", "early_stopped")


def normalise_stage(stage: str | int) -> str:
    """``1``, ``"stage1"``, ``"c"``, ``"controller"`` -> ``"1"`` ... ``"controller"``.

    Raises ValueError for anything else (callers turn it into their own error type).
    """
    text = str(stage).strip().lower()
    if text.startswith("stage"):
        text = text[5:]
    if text in ("c", "ctrl", "controller"):
        return "controller"
    if text in STAGES:
        return text
    raise ValueError(f"unknown stage {stage!r} (expected one of {', '.join(STAGES)})")


def stage_dir(run_dir: str | os.PathLike, stage: str | int) -> Path:
    """``RUN/stage1`` ... ``RUN/controller``."""
    return Path(run_dir) / STAGE_DIRS[normalise_stage(stage)]


# --------------------------------------------------------------------------- models

#: What a stage trains: the plain backbone, LHC-Net, or LHC-NetC's controllers.
MODEL_KINDS = ("backbone", "lhc", "controller")
#: The registered architecture of each kind (with the paper's ResNet34v2 backbone).
KIND_ARCH = {"backbone": "resnet34v2", "lhc": "lhc_net", "controller": "lhc_netc"}
#: The architecture a stage folder holds.
STAGE_ARCH = {
    "stage1": "resnet34v2",
    "stage2": "resnet34v2",
    "stage3": "resnet34v2",
    "stage4": "lhc_net",
    "controller": "lhc_netc",
}
#: Display names of the paper's architectures (other backbones: their registry entry,
#: :func:`fertool.models.arch_title`).
MODEL_NAMES = {"resnet34v2": "ResNet34v2", "lhc_net": "LHC-Net", "lhc_netc": "LHC-NetC"}


def checkpoint_kind(ckpt: Mapping[str, Any]) -> str:
    """``backbone``, ``lhc`` or ``controller``: which model of the protocol a checkpoint holds.

    Decided by the architecture name and, for ``resnet34_tv`` (which carries LHC modules as
    arguments), by its ``arch_args``.
    """
    arch = ckpt.get("arch")
    args = ckpt.get("arch_args") or {}
    if arch == "lhc_netc" or args.get("controller_init") is not None:
        return "controller"
    if arch == "lhc_net" or args.get("lhc"):
        return "lhc"
    return "backbone"


# --------------------------------------------------------------------------- Table 2

#: Table 2: the position of each LHC module and its heads, embedding dimension, pooling
#: size, value-convolution kernel and the constant g of the dynamic scaling.
TABLE2: tuple[dict, ...] = (
    {"after": "stem", "heads": 8, "dim": 196, "pool": 3, "kernel": 3, "scale": 1.0},
    {"after": "stage1_unit3", "heads": 8, "dim": 196, "pool": 3, "kernel": 3, "scale": 1.0},
    {"after": "stage2_unit4", "heads": 7, "dim": 56, "pool": 3, "kernel": 3, "scale": 1.0},
    {"after": "stage3_unit6", "heads": 7, "dim": 14, "pool": 3, "kernel": 3, "scale": 1.0},
    {"after": "stage4_unit3", "heads": 1, "dim": 25, "pool": 3, "kernel": 3, "scale": 1.0},
)
#: LHC-NetC's initial controller values w_i, one per module of Table 2.
CONTROLLER_INIT: tuple[float, ...] = (0.0, 0.0, 0.0, -1.0, -0.5)

# --------------------------------------------------------------------------- reported numbers

#: FER2013 PrivateTest accuracy in percent: Table 7 (top 40% / top 25% of the runs, best
#: run) and the best single models with TTA (Table A2).
PAPER_TABLE7 = {
    "ResNet34v2": {"top40": 72.69, "top25": 72.75, "best": 72.81, "best_tta": 73.92},
    "LHC-Net": {"top40": 72.89, "top25": 73.02, "best": 73.39, "best_tta": 74.42},
    "LHC-NetC": {"top40": 73.04, "top25": 73.21, "best": 73.53, "best_tta": 74.28},
}
#: The paper's run sets (Section 4.1, Table 7): A and C vary the seed, B varies the module
#: settings with the data seed fixed.  Table 7 compares set A with the LHC-Nets (B and C).
RUN_SETS = {
    "A": "ResNet34v2: stage 4 without LHC modules, from the best ResNet",
    "B": "LHC-Net with other module settings, data seed fixed",
    "C": "LHC-Net with the Table 2 modules",
}
#: Parameter counts the paper reports (Keras ``count_params()``).
PAPER_PARAMS = {"ResNet34v2": "27.6M", "LHC-Net": "32.4M", "LHC-NetC": "32.4M"}


def paper_set(arch: str | None, stage: str | None, lhc: list | None) -> str | None:
    """The run set of the paper a result belongs to (:data:`RUN_SETS`), or None.

    ``stage`` is the stage folder (``stage4``...), ``lhc`` the run recipe's ``model.lhc``
    (None when unknown: Table 2 is assumed, the default).
    """
    if stage != STAGE_DIRS["4"]:
        return None
    if arch == KIND_ARCH["backbone"]:
        return "A"
    if arch == KIND_ARCH["lhc"]:
        return "C" if lhc is None or [dict(m) for m in lhc] == [dict(m) for m in TABLE2] else "B"
    return None
