"""``fertool prepare --folder/--rafdb``: image files -> the prepared layout of FER2013.

An :class:`~fertool.data.folders.ImageSet` (class folders or RAF-DB) becomes a folder
that training, evaluation and the image cache read exactly like a prepared FER2013::

    DIR/<split>/<Class>/<row>.jpg   row = index of the image in the scan, 5 digits
    DIR/manifest.csv                row,split,label,class,path,source,source_sha256
    DIR/prepare.json                dataset, classes, source, recipe, counts, carved validation
    DIR/recipe.yaml                 the resolved recipe

Pixels, as the recipe's ``prepare`` section says: decoded with OpenCV (alpha dropped,
16-bit scaled to 8), ``fit: crop`` takes the centred square, ``stretch`` keeps the whole
image; resized to ``size`` with area averaging when shrinking and bilinear when
enlarging; ``colour: grey`` converts to grey (then replicated to three channels when
``rgb``), ``keep`` leaves colour photos in colour; JPEG with the recipe's quality and
chroma sampling.  This is not the TF-exact path of FER2013 (that one starts from
48x48 grey pixels, :mod:`fertool.data.prepare`).  Files are read by a thread pool
(OpenCV releases the GIL); the output is built in a temporary sibling and renamed into
place when complete, as for FER2013.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .. import __version__
from ..errors import DataError
from ..imagecap import decode_image
from ..locks import holding_lock
from ..progress import Progress
from .csv import SPLITS
from .folders import ImageSet, carve_validation
from .prepare import build_folder, check_destination, encode_jpeg, jpeg_params

if TYPE_CHECKING:
    from ..recipe import PrepareConfig, Recipe

IMAGES_MANIFEST_HEADER = "row,split,label,class,path,source,source_sha256"
#: At most this many bad files are listed in an error message.
_LIST_LIMIT = 10


def fit_image(image: np.ndarray, *, size: int, fit: str, colour: str, rgb: bool) -> np.ndarray:
    """A decoded BGR (H, W, 3) uint8 image -> (size, size[, 3]) uint8 as the recipe says."""
    h, w = image.shape[:2]
    if fit == "crop" and h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top : top + side, left : left + side]  # (side, side, 3)
    shrink = image.shape[0] >= size and image.shape[1] >= size
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if colour == "grey":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)  # (size, size)
        if rgb:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image


def prepared_photo(
    image_bgr: np.ndarray,
    *,
    size: int,
    fit: str = "crop",
    colour: str = "keep",
    rgb: bool = True,
    jpeg_quality: int = 100,
    subsampling: str = "4:4:4",
    jpeg: bool = True,
    **_ignored,
) -> np.ndarray:
    """A BGR photo or face crop -> (size, size, 3) RGB uint8, as its prepared JPEG decodes.

    The keyword arguments are a recipe's ``prepare`` section (others are ignored): what
    ``fertool predict`` does to a face of a model trained on class folders or RAF-DB.
    ``jpeg=False`` skips the JPEG round trip.
    """
    image = fit_image(image_bgr, size=size, fit=fit, colour=colour, rgb=True)  # (S, S, 3) BGR
    if jpeg:
        stored = encode_jpeg(image, jpeg_params(jpeg_quality, subsampling))
        image = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(image[..., ::-1])  # BGR -> RGB, as the image cache decodes


def _convert(path: Path, out: Path, config: PrepareConfig, params: list[int]) -> tuple[str | None, str | None]:
    """Read, fit and write one image; returns (sha256 of the file, None) or (None, problem)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    try:
        image = decode_image(data, path) if data else None
    except DataError as exc:  # too many pixels: a bad row like any other
        return None, str(exc).removeprefix(f"{path}: ")
    if image is None:
        return None, "not a readable image"
    image = fit_image(image, size=config.size, fit=config.fit, colour=config.colour, rgb=config.rgb)
    out.write_bytes(encode_jpeg(image, params))
    return hashlib.sha256(data).hexdigest(), None


@holding_lock(lambda args: args["out_dir"])  # one writer per output folder
def prepare_images(
    images: ImageSet,
    out_dir: str | os.PathLike,
    *,
    config: PrepareConfig,
    recipe: Recipe | None = None,
    overwrite: bool = False,
    skip_bad: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict:
    """Prepare ``images`` into ``out_dir`` (layout in the module docstring).

    Without a validation split, one is carved from the training images
    (``config.val_fraction``, ``config.val_seed``) and recorded in ``prepare.json``.
    Unreadable files: by default nothing is written and one DataError lists them;
    ``skip_bad`` leaves them out and lists them in ``prepare.json``.  Returns the summary.
    """
    from ..recipe import Recipe, dump_recipe, to_dict

    out_dir = Path(out_dir)
    recipe = dataclasses.replace(recipe or Recipe(), prepare=config)
    images, carved = carve_validation(images, config.val_fraction, config.val_seed)
    check_destination(out_dir, images.root, overwrite)
    if workers is not None and workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    nworkers = workers or min(8, os.cpu_count() or 1)
    params = jpeg_params(config.jpeg_quality, config.subsampling)
    with build_folder(out_dir, lambda: check_destination(out_dir, images.root, overwrite)) as tmp:
        summary = _write(images, tmp, config, params, skip_bad, nworkers, progress)
        summary.update(recipe=to_dict(recipe.prepare), output=str(out_dir.resolve()), validation=carved)
        if carved is not None:
            summary["warnings"].append(
                f"no validation split: carved {carved['images']:,} training images "
                f"({config.val_fraction:g} per class, seed {config.val_seed}) into PublicTest"
            )
        (tmp / "recipe.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
        (tmp / "prepare.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _write(
    images: ImageSet,
    tmp: Path,
    config: PrepareConfig,
    params: list[int],
    skip_bad: bool,
    nworkers: int,
    progress: Progress | None,
) -> dict:
    """Convert every file into ``tmp``, write the manifest; the summary without recipe/output."""
    n = len(images.files)
    rels = [
        f"{SPLITS[s]}/{images.classes[label]}/{row:05d}.jpg"
        for row, (label, s) in enumerate(zip(images.labels.tolist(), images.splits.tolist()))
    ]
    for folder in sorted({os.path.dirname(r) for r in rels}):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress(0, n)
    results: list[tuple[str | None, str | None]] = []
    with ThreadPoolExecutor(max_workers=nworkers) as pool:
        for result in pool.map(lambda i: _convert(images.files[i], tmp / rels[i], config, params), range(n)):
            results.append(result)
            if progress is not None and (len(results) % 64 == 0 or len(results) == n):
                progress(len(results), n)
    bad = [(str(images.files[i]), problem) for i, (_, problem) in enumerate(results) if problem is not None]
    if bad and not skip_bad:
        listing = [f"{path}: {problem}" for path, problem in bad[:_LIST_LIMIT]]
        more = [f"... and {len(bad) - _LIST_LIMIT} more"] if len(bad) > _LIST_LIMIT else []
        raise DataError(
            "\n".join(
                [
                    f"{images.root}: {len(bad)} unreadable image(s); nothing was written (--skip-bad leaves them out):",
                    *listing,
                    *more,
                ]
            )
        )
    counts = np.zeros((len(SPLITS), len(images.classes)), np.int64)
    lines = [IMAGES_MANIFEST_HEADER + "\n"]
    for row, ((digest, problem), path, label, split) in enumerate(
        zip(results, images.files, images.labels.tolist(), images.splits.tolist())
    ):
        if problem is not None:
            continue
        counts[split, label] += 1
        source = path.relative_to(images.root).as_posix() if path.is_relative_to(images.root) else str(path)
        lines.append(
            f"{row},{SPLITS[split]},{label},{images.classes[label]},{rels[row]},{_csv_field(source)},{digest}\n"
        )
    if not counts.any():
        raise DataError(f"{images.root}: none of the {n:,} images could be read; nothing to prepare")
    (tmp / "manifest.csv").write_text("".join(lines), encoding="utf-8", newline="\n")
    per_split = {SPLITS[s]: counts[s].tolist() for s in range(len(SPLITS)) if counts[s].any()}
    warnings = [f"skipped {len(bad):,} unreadable image(s) (listed in prepare.json)"] if bad else []
    empty = [name for name, c in zip(images.classes, counts[SPLITS.index("Training")]) if c == 0]
    if empty:
        warnings.append(f"no training images of class(es) {', '.join(empty)}")
    return {
        "fertool_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dataset": images.kind,
        "classes": list(images.classes),
        "label_mode": "majority",
        "source": images.source,
        "recipe": None,
        "output": None,
        "images": int(counts.sum()),
        "counts": {split: dict(zip(images.classes, c)) for split, c in per_split.items()},
        "split_totals": {split: int(sum(c)) for split, c in per_split.items()},
        "validation": None,
        "skipped": [{"path": path, "problem": problem} for path, problem in bad],
        "warnings": warnings,
        "workers": nworkers,
    }


def _csv_field(text: str) -> str:
    """``text`` quoted for the manifest when it holds a comma, quote or newline."""
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


__all__ = ("IMAGES_MANIFEST_HEADER", "fit_image", "prepared_photo", "prepare_images")
