"""The one small error hierarchy of fertool.

Library code raises these; the CLI turns any of them into one line ``error: ...`` on
stderr and exit code 1.  Messages name the file, line or key and what is wrong.
"""

from __future__ import annotations


class FertoolError(Exception):
    """Base class of every error fertool reports to a user."""


class RecipeError(FertoolError):
    """A recipe file or a ``--set`` override is invalid.

    ``problems`` holds every problem found, each already formatted as
    ``location: message``; the string form lists them all, one per line.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DataError(FertoolError):
    """Input data (CSV, image folder, cache) is missing or malformed."""


class CheckpointError(FertoolError):
    """A checkpoint file is missing, not a fertool checkpoint, or of the wrong kind."""


class ModelError(FertoolError):
    """A model cannot be built as asked (bad LHC placement, sizes, weights...)."""


class TrainingError(FertoolError):
    """Training cannot go on (non-finite loss, nothing to resume...)."""
