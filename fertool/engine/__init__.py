"""The training engine: staged training (SPEC §4), DDP under torchrun, training curves.

``train_stage(recipe, stage, run_dir, ...)`` is the one entry point; ``train_one_epoch`` and
``evaluate`` are the plain functions it loops over.
"""

from .train import EarlyStopping, STAGES, evaluate, stage_dir, train_one_epoch, train_stage

__all__ = ["train_stage", "train_one_epoch", "evaluate", "EarlyStopping", "STAGES", "stage_dir"]
