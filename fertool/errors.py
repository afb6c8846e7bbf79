"""The one small error hierarchy of fertool.

Library code raises these; the CLI turns any of them into one line ``error: ...`` on
stderr and exit code 1.  Messages name the file, line or key and what is wrong.
"""

from __future__ import annotations

import os
import re


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


class InUseError(FertoolError):
    """Another fertool process holds the lock of a run directory or output folder."""


#: Characters a terminal may act on: C0/C1 controls (escape sequences) and the Unicode
#: bidirectional overrides that reorder what is shown.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """``text`` safe to show on a terminal: control characters as ``\\x1b``-style escapes.

    Every piece of text that comes from an input file (a CSV header, a field, a manifest
    row, a name stored in a checkpoint) goes through this before it reaches a message.
    """
    return _UNPRINTABLE.sub(_escape, str(text))


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def os_error_message(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """``PATH: cause`` for an OSError (``PATH -> PATH2`` for a failed rename)."""
    where = exc.filename if exc.filename is not None else path
    cause = exc.strerror or str(exc) or type(exc).__name__
    if where is None:
        return printable(cause)
    if exc.filename2 is not None:
        where = f"{os.fsdecode(where)} -> {os.fsdecode(exc.filename2)}"
    return printable(f"{os.fsdecode(where) if not isinstance(where, int) else f'fd {where}'}: {cause}")
