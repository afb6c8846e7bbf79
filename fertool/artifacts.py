"""Named artefacts cached on this machine (minimal: the registry of issue 19 replaces this file).

``cache_dir()`` is ``$FERTOOL_HOME`` when set, else ``platformdirs.user_cache_dir("fertool")``;
``cached_path(name)`` is the file of a named artefact when it is already there (it never
downloads).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ARTIFACT_FILES", "cache_dir", "cached_path"]

#: Where each named artefact lives under :func:`cache_dir`.
ARTIFACT_FILES = {
    "yunet": Path("yunet") / "face_detection_yunet_2023mar.onnx",
}


def cache_dir() -> Path:
    """The folder of fertool's cached artefacts: ``$FERTOOL_HOME``, else the user cache folder."""
    home = os.environ.get("FERTOOL_HOME")
    if home:
        return Path(home)
    import platformdirs

    return Path(platformdirs.user_cache_dir("fertool"))


def cached_path(name: str) -> Path | None:
    """The cached file of artefact ``name`` when it is present, else None (never downloads)."""
    rel = ARTIFACT_FILES.get(name)
    if rel is None:
        return None
    path = cache_dir() / rel
    return path if path.is_file() else None
