"""The training and validation splits of a stage, as the recipe's ``data`` section says.

Training images come from a prepared image folder (``fertool prepare``), else are made in
memory from the CSV the way ``prepare`` makes them (without the JPEG round-trip).
Validation images are, by default, the reference protocol's: float bilinear resizes
straight from the CSV, neither floored nor JPEG-compressed (docs/protocol.md, "Data").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import CLASS_NAMES
from ..data.cache import folder_data, open_image_split
from ..data.csv import load_split
from ..data.datasets import ArraySplit, ImageSplit, reference_split
from ..data.prepare import prepare_pixels
from ..data.provenance import csv_provenance, images_provenance
from ..errors import DataError
from ..progress import Progress
from ..recipe import Recipe

__all__ = ["load_stage_data", "data_info", "training_provenance", "with_data_classes", "csv_training_split"]

Log = Callable[[str], None]


def load_stage_data(
    recipe: Recipe, *, csv: str | None, images: str | None, log: Log, progress: Progress | None
) -> tuple[ImageSplit, ImageSplit, list[str]]:
    """(training split, validation split, notes to record as warnings)."""
    data = recipe.data
    csv = csv or data.csv
    images = images or data.images
    if csv is not None and not Path(csv).is_file():
        raise DataError(f"{csv}: CSV file not found")
    if images is not None and not Path(images).is_dir():
        raise DataError(f"{images}: image folder not found")

    def cache_progress(done: int, total: int | None = None) -> None:
        if progress is not None:
            progress(done, total, phase="cache")

    train = _training_split(recipe, csv, images, log, cache_progress)
    fer2013 = tuple(train.class_names) == CLASS_NAMES  # else the CSV's labels do not apply (FER+, folders)
    val, notes = _validation_split(recipe, csv if fer2013 else None, images, log, cache_progress, csv_given=csv)
    for split, role in ((train, "training"), (val, "validation")):
        _check_split(split, role, recipe)
    return train, val, notes


def _training_split(
    recipe: Recipe, csv: str | None, images: str | None, log: Log, cache_progress: Progress
) -> ImageSplit:
    data, size = recipe.data, recipe.model.input_size
    if images is not None:
        train = open_image_split(images, data.train_split, progress=cache_progress)
        log(f"training images: {images} ({data.train_split}, {len(train):,} images)")
        return train
    if csv is not None:
        train = csv_training_split(csv, data.train_split, size, truncate=recipe.prepare.truncate)
        log(
            f"training images: made in memory from {csv} the way `fertool prepare` does "
            f"(48x48 -> {size}x{size} float bilinear, {'floor' if recipe.prepare.truncate else 'round'}, no JPEG); "
            "run `fertool prepare` and pass --images for the reference JPEG round-trip"
        )
        return train
    raise DataError(
        "no training data: pass --images DIR (from `fertool prepare`, or class subfolders) "
        "or --csv PATH (or set data.images / data.csv in the recipe)"
    )


def _validation_split(
    recipe: Recipe, csv: str | None, images: str | None, log: Log, cache_progress: Progress, *, csv_given: str | None
) -> tuple[ImageSplit, list[str]]:
    data, size = recipe.data, recipe.model.input_size
    if data.eval_source == "reference" and csv is not None:
        val = reference_split(csv, data.val_split, size)
        log(f"validation images: {data.val_split} of {csv}, made the reference way (float bilinear, no floor/JPEG)")
        return val, []
    if images is None:  # pragma: no cover - csv is set here (the training split came from it)
        raise DataError("data.eval_source: 'prepared' needs --images")
    val = open_image_split(images, data.val_split, progress=cache_progress)
    if data.eval_source != "reference":
        log(f"validation images: {data.val_split} from {images}")
        return val, []
    why = "no CSV given" if csv_given is None else f"the labels of {csv_given} are not those of its classes"
    note = (
        f"validation images: {data.val_split} from the image folder {images} ({why}, so not "
        "the reference float images of the paper's protocol)"
    )
    log(note)
    return val, [note]


def _check_split(split: ImageSplit, role: str, recipe: Recipe) -> None:
    size, num_classes = recipe.model.input_size, recipe.model.num_classes
    if len(split) == 0:
        raise DataError(f"{role} split '{split.name}' has no images")
    if split.size != size:
        raise DataError(
            f"{role} images ({split.name}) are {split.size}x{split.size} but model.input_size is {size}: "
            f"prepare the images at that size (prepare.size) or change model.input_size"
        )
    bad = int(((split.labels < 0) | (split.labels >= num_classes)).sum())
    if bad:
        raise DataError(f"{role} split '{split.name}': {bad} labels outside 0..{num_classes - 1}")


def data_info(recipe: Recipe, *, csv: str | None, images: str | None) -> tuple[dict, str]:
    """(what the data :func:`load_stage_data` will read is, where it is): data set, class
    names, label mode and how its images were prepared (recorded in every checkpoint's
    ``extra``)."""
    images = images or recipe.data.images
    if images is not None and Path(images).is_dir():
        return folder_data(images), str(images)
    return (
        {"dataset": "fer2013", "classes": list(CLASS_NAMES), "label_mode": "majority", "prepare": None},
        str(csv or recipe.data.csv or "FER2013"),
    )


def training_provenance(recipe: Recipe, *, csv: str | None, images: str | None) -> dict:
    """What the training images are (checkpoint ``extra.data.provenance``): the prepared
    folder's CSV, or the CSV."""
    seeds = (recipe.sample.seed, 0)
    images = images or recipe.data.images
    if images is not None:
        return images_provenance(images, sample_seeds=seeds)
    return csv_provenance(csv or recipe.data.csv, sample_seeds=seeds)


def with_data_classes(recipe: Recipe, classes: tuple[str, ...], where: str, log: Log) -> Recipe:
    """``recipe`` with ``model.num_classes`` = the number of ``classes``; ``data.classes``,
    when the recipe lists any, must be exactly these."""
    if recipe.data.classes and sorted(recipe.data.classes) == sorted(classes) != list(recipe.data.classes):
        raise DataError(
            f"data.classes: the recipe lists the same {len(classes)} names as {where} in another order "
            f"(recipe: {', '.join(recipe.data.classes)}; data: {', '.join(classes)}); the labels of "
            f"{where} follow the data's order: prepare it again with this recipe's data.classes"
        )
    if recipe.data.classes and tuple(recipe.data.classes) != tuple(classes):
        raise DataError(
            f"data.classes: the recipe lists {len(recipe.data.classes)} classes "
            f"({', '.join(recipe.data.classes)}) but {where} holds {len(classes)} ({', '.join(classes)})"
        )
    if recipe.model.num_classes == len(classes):
        return recipe
    log(
        f"model.num_classes: {len(classes)} (was {recipe.model.num_classes}), the classes of {where}: "
        f"{', '.join(classes)}"
    )
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, num_classes=len(classes)))


def csv_training_split(csv: str, split: str, size: int, *, truncate: bool) -> ArraySplit:
    """The training split prepared in memory: TF-exact resize + floor, no JPEG."""
    arrays = load_split(csv, split)
    out = prepare_pixels(arrays.images, size=size, rgb=False, truncate=truncate)  # (N, S, S) uint8
    return ArraySplit(
        images=out,
        labels=torch.from_numpy(np.asarray(arrays.labels, dtype=np.int64)),
        name=split,
        rows=np.asarray(arrays.rows),
    )
