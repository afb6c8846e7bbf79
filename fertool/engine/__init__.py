"""The training engine: staged training (paper Section 4.1), DDP under torchrun, training curves.

``train_stage(recipe, stage, run_dir, ...)`` is the one entry point (:mod:`.train`); it
resolves the start (:mod:`.start`), builds a :class:`~.stage.Stage` record and loops over
``train_one_epoch`` and ``evaluate``, the plain functions of :mod:`.loop`.
"""

from .loop import EarlyStopping, evaluate, train_one_epoch
from .train import train_stage

__all__ = ["train_stage", "train_one_epoch", "evaluate", "EarlyStopping"]
