"""What every measurement of a checkpoint starts from: the checkpoint, its recipe, the images
of one split and the device, resolved and checked once (``fertool evaluate`` and
``fertool ablate`` share it; ``fertool predict`` shares the TTA preset lookup).

Nothing is written here; every problem is a one-line :class:`~fertool.errors.FertoolError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import check_same_classes, checkpoint_classes, load_checkpoint
from ..data.cache import open_image_split
from ..data.datasets import ImageSplit, reference_split
from ..errors import DataError, FertoolError, RecipeError
from ..recipe import Recipe, TTAPreset, load_recipe, to_dict
from ..surgery import model_from_checkpoint
from ..utils import resolve_device

__all__ = ["EvalInputs", "load_eval_inputs", "resolve_recipe", "resolve_tta", "open_split"]

Progress = Callable[[int, "int | None"], None]


@dataclass
class EvalInputs:
    """A checkpoint ready to be measured; :meth:`open_split` adds the images of a split."""

    checkpoint: Path
    ckpt: dict
    model: nn.Module
    recipe: Recipe
    size: int
    class_names: list[str]
    device: torch.device
    tta_name: str | None
    tta: TTAPreset | None
    data: ImageSplit | None = None
    source: dict | None = None  # {"csv": path} or {"images": path}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def open_split(
        self, *, csv: str | os.PathLike | None, images: str | os.PathLike | None, split: str, what: str = "evaluate"
    ) -> ImageSplit:
        """The images of ``split``: reference images from ``csv``, or ``images``; without
        either, the recipe's ``data.csv`` (then ``data.images``).  ``what`` names the command
        in error messages."""
        if csv is not None and images is not None:
            raise FertoolError("give either a CSV or an image folder, not both")
        if csv is None and images is None:
            csv, images = self.recipe.data.csv, (self.recipe.data.images if self.recipe.data.csv is None else None)
        if csv is None and images is None:
            raise DataError(
                f"{self.checkpoint}: no data to {what} on: pass --csv or --images "
                "(the checkpoint's recipe has no data.csv)"
            )
        data, source = open_split(
            None if csv is None else str(csv), None if images is None else str(images), split, self.size
        )
        _check_split(
            data, str(csv if csv is not None else images), split, self.size, self.class_names, str(self.checkpoint)
        )
        self.data, self.source = data, source
        return data


def resolve_recipe(
    ckpt: Mapping[str, Any], recipe: Recipe | str | os.PathLike | Mapping | None, overrides: Sequence[str] = ()
) -> Recipe:
    """The recipe given, else the one stored in the checkpoint, else the defaults; then ``overrides``."""
    if isinstance(recipe, Recipe):
        return load_recipe(to_dict(recipe), overrides) if overrides else recipe
    if recipe is not None:
        return load_recipe(recipe, overrides)
    return load_recipe(ckpt.get("recipe"), overrides, stored=True)


def resolve_tta(recipe: Recipe, tta: str | bool | TTAPreset | None) -> tuple[str | None, TTAPreset | None]:
    """(name, preset) for a preset name of ``recipe.tta.presets``, True (the recipe's
    ``tta.preset``), a preset, or None / False (no TTA)."""
    if tta is None or tta is False:
        return None, None
    if tta is True:
        tta = recipe.tta.preset
    if isinstance(tta, TTAPreset):
        return "custom", tta
    if tta not in recipe.tta.presets:
        raise RecipeError(f"tta: unknown TTA preset {tta!r} (known: {', '.join(recipe.tta.presets)})")
    return tta, recipe.tta.presets[tta]


def open_split(
    csv: str | None, images: str | None, split: str, size: int, progress: Progress | None = None
) -> tuple[ImageSplit, dict]:
    """(the split, where it came from): reference images from a CSV, or an image folder."""
    if csv is not None:
        if not Path(csv).is_file():
            raise DataError(f"{csv}: CSV file not found")
        return reference_split(csv, split, size), {"csv": str(csv)}
    return open_image_split(images, split, progress=progress), {"images": str(images)}


def _check_split(data: ImageSplit, where: str, split: str, size: int, class_names: Sequence[str], model: str) -> None:
    """Refuse an empty split, data of another class set, labels outside the model's classes,
    or images of another size."""
    if len(data) == 0:
        raise DataError(f"{where}: split '{split}' has no images")
    check_same_classes(class_names, data.class_names, model=model, data=where)
    num_classes = len(class_names)
    labels = data.labels.numpy()
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        rows = getattr(data, "rows", None)
        at = f"row {int(rows[bad[0]])}" if rows is not None else f"image {int(bad[0])}"
        raise DataError(
            f"{where}: split '{split}' has label {int(labels[bad[0]])} ({at}, {len(bad)} such images) "
            f"but the checkpoint has {num_classes} classes"
        )
    if data.size != size:
        raise DataError(f"{where}: images are {data.size}x{data.size} but the checkpoint's model takes {size}x{size}")


def load_eval_inputs(
    checkpoint_path: str | os.PathLike,
    *,
    recipe: Recipe | str | os.PathLike | Mapping | None = None,
    overrides: Sequence[str] = (),
    tta: str | bool | TTAPreset | None = None,
    device: str = "cpu",
) -> EvalInputs:
    """Load ``checkpoint_path``, its model and recipe, ready to be measured.

    The recipe is ``recipe`` if given, else the checkpoint's, else the defaults, with
    ``overrides``.  ``tta``: see :func:`resolve_tta`.  The split comes next, from
    :meth:`EvalInputs.open_split`.
    """
    checkpoint_path = Path(checkpoint_path)
    ckpt = load_checkpoint(checkpoint_path)
    rcp = resolve_recipe(ckpt, recipe, overrides)
    tta_name, preset = resolve_tta(rcp, tta)
    arch_args = dict(ckpt.get("arch_args") or {})
    class_names = list(checkpoint_classes(ckpt))
    return EvalInputs(
        checkpoint=checkpoint_path,
        ckpt=ckpt,
        model=model_from_checkpoint(ckpt),
        recipe=rcp,
        size=int(arch_args.get("input_size", 224)),
        class_names=class_names,
        device=resolve_device(device),
        tta_name=tta_name,
        tta=preset,
    )
