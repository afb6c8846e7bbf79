"""Image data sets on disk: class folders (AffectNet style) and RAF-DB's label file.

Both are scanned into an :class:`ImageSet` -- files, labels, splits and the class list
-- which :func:`fertool.data.prepare_images.prepare_images` turns into a prepared
folder like the one ``fertool prepare`` makes of FER2013.  Nothing here decodes an image.

Class folders, ``ROOT/<split>/<class>/<image>``:

* split folders: ``train``/``training``, ``val``/``valid``/``validation``/``publictest``,
  ``test``/``privatetest`` (case-insensitive); they become the splits ``Training``,
  ``PublicTest`` and ``PrivateTest`` of the prepared folder, the names fertool's recipes
  use;
* classes: an explicit list (the recipe's ``data.classes``) fixes names and order, and
  folder names are matched to it case-insensitively, with the usual short names
  (``happy``, ``sad``, ``angry``...) standing for the emotions; without a list, seven
  folders that are the FER2013 classes give FER2013's names and order, anything else
  gives the folder names in sorted order (as torchvision's ``ImageFolder``).

RAF-DB (basic), ``ROOT`` holding ``list_patition_label.txt`` somewhere below it
(usually ``EmoLabel/``): lines ``train_00001.jpg 5``, labels 1-based in the order of
:data:`RAFDB_CLASSES`; images found by name in ``Image/aligned/`` (as
``train_00001_aligned.jpg``), else ``aligned/``, ``Image/original/``, ``original/``,
``Image/`` or next to the label file.  ``train_*`` is the training split, ``test_*`` the
test split.

Neither layout needs a validation split: :func:`carve_validation` draws one from the
training images, per class, with a fixed seed (never from the test split).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import CLASS_NAMES
from ..errors import DataError
from .csv import SPLITS

#: Image files fertool reads (OpenCV's decoders), for preparing folders and for predict alike.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm", ".jp2"}
)

#: Folder names accepted for each emotion (lower case); the first is FER2013's name.
CLASS_ALIASES: tuple[tuple[str, ...], ...] = (
    ("anger", "angry"),
    ("disgust", "disgusted"),
    ("fear", "fearful", "scared"),
    ("happiness", "happy"),
    ("sadness", "sad"),
    ("surprise", "surprised"),
    ("neutral",),
    ("contempt",),
)
#: Folder names accepted for each split (lower case), keyed by the prepared split name.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "Training": ("training", "train"),
    "PublicTest": ("publictest", "val", "valid", "validation"),
    "PrivateTest": ("privatetest", "test"),
}
#: RAF-DB basic: label 1..7 of ``list_patition_label.txt`` -> these names.
RAFDB_CLASSES: tuple[str, ...] = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
RAFDB_LABEL_FILE = "list_patition_label.txt"
_RAFDB_IMAGE_DIRS = ("Image/aligned", "aligned", "Image/original", "original", "Image", ".")


@dataclass(frozen=True)
class ImageSet:
    """Image files with labels (into ``classes``) and split codes (into :data:`SPLITS`)."""

    root: Path
    kind: str  # "folder" or "rafdb"
    classes: tuple[str, ...]
    files: tuple[Path, ...]
    labels: np.ndarray  # (N,) int64
    splits: np.ndarray  # (N,) int8
    source: dict = field(default_factory=dict)  # how it was read, for prepare.json

    def counts(self) -> dict[str, list[int]]:
        """Images per class of each split present."""
        out = {}
        for code, split in enumerate(SPLITS):
            mine = self.labels[self.splits == code]
            if len(mine):
                out[split] = np.bincount(mine, minlength=len(self.classes)).tolist()
        return out


def emotion_key(name: str) -> str:
    """A class name reduced for matching: ``Happy`` -> ``happiness``; other names lower-cased."""
    low = name.strip().lower()
    for aliases in CLASS_ALIASES:
        if low in aliases:
            return aliases[0]
    return low


def match_classes(found: Sequence[str], classes: Sequence[str], where: str) -> dict[str, int]:
    """Map each found class name to its index in ``classes`` (case- and alias-insensitive)."""
    index: dict[str, int] = {}
    for i, name in enumerate(classes):
        key = emotion_key(name)
        if key in index:
            raise DataError(f"data.classes: '{name}' and '{classes[index[key]]}' are the same class")
        index[key] = i
    unknown = [name for name in found if emotion_key(name) not in index]
    if unknown:
        raise DataError(f"{where}: class(es) {', '.join(unknown)} are not in data.classes ({', '.join(classes)})")
    return {name: index[emotion_key(name)] for name in found}


def infer_classes(found: Sequence[str]) -> tuple[str, ...]:
    """The class list of folders without ``data.classes`` (see the module docstring)."""
    if sorted(emotion_key(n) for n in found) == sorted(emotion_key(n) for n in CLASS_NAMES):
        return CLASS_NAMES
    return tuple(sorted(found, key=lambda n: (n.lower(), n)))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _split_of(name: str) -> str | None:
    low = name.lower()
    return next((split for split, aliases in SPLIT_ALIASES.items() if low in aliases), None)


def _readable(scan):
    """A scan whose file-system errors (permissions, vanished folders) become DataErrors."""

    @functools.wraps(scan)
    def wrapper(root: str | os.PathLike, classes: Sequence[str] | None = None) -> ImageSet:
        try:
            images = scan(root, classes)
        except OSError as exc:
            raise DataError(f"{exc.filename or root}: cannot read ({exc.strerror or exc})") from None
        if len(images.classes) < 2:
            raise DataError(
                f"{root}: {len(images.classes)} class ({', '.join(images.classes)}); a classifier needs at least two"
            )
        return images

    return wrapper


@_readable
def scan_folder(root: str | os.PathLike, classes: Sequence[str] | None = None) -> ImageSet:
    """``root/<split>/<class>/*`` -> an :class:`ImageSet` (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected <split>/<class>/ image folders)")
    split_dirs: dict[str, Path] = {}
    for d in _subdirs(root):
        split = _split_of(d.name)
        if split is None:
            continue
        if split in split_dirs:
            raise DataError(f"{root}: folders '{split_dirs[split].name}' and '{d.name}' are both the {split} split")
        split_dirs[split] = d
    if "Training" not in split_dirs:
        found = ", ".join(d.name for d in _subdirs(root)) or "none"
        raise DataError(
            f"{root}: no training folder (train/ or training/; folders found: {found}); "
            "expected ROOT/<split>/<class>/ images with splits train, val (optional), test"
        )
    per_split: dict[str, dict[str, list[Path]]] = {}
    for split in SPLITS:
        if split not in split_dirs:
            continue
        folders = _subdirs(split_dirs[split])
        stray = _images_in(split_dirs[split])
        if stray:
            raise DataError(
                f"{split_dirs[split]}: holds images directly ({stray[0].name}...); images go into one folder per class"
            )
        per_split[split] = {d.name: _images_in(d) for d in folders}
    found = sorted({name for folders in per_split.values() for name in folders})
    if not found:
        raise DataError(f"{split_dirs['Training']}: no class folders")
    for name in found:  # two folders that mean the same class ("happy" and "Happiness")
        twins = [n for n in found if emotion_key(n) == emotion_key(name)]
        if len(twins) > 1:
            raise DataError(f"{root}: class folders {' and '.join(twins)} are the same class")
    class_list = tuple(classes) if classes else infer_classes(found)
    mapping = match_classes(found, class_list, str(root))

    files: list[Path] = []
    labels: list[int] = []
    splits: list[int] = []
    for split, folders in per_split.items():
        for name in sorted(folders, key=lambda n: mapping[n]):
            files += folders[name]
            labels += [mapping[name]] * len(folders[name])
            splits += [SPLITS.index(split)] * len(folders[name])
    if not files:
        raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the class folders")
    source = {
        "path": str(root.resolve()),
        "layout": "ROOT/<split>/<class>/<image>",
        "split_folders": {split: d.name for split, d in split_dirs.items()},
        "class_folders": {name: class_list[mapping[name]] for name in found},
    }
    return ImageSet(
        root, "folder", class_list, tuple(files), np.asarray(labels, np.int64), np.asarray(splits, np.int8), source
    )


def find_rafdb_label_file(root: Path) -> Path:
    """``list_patition_label.txt`` under ``root`` (or ``root`` itself when it is that file)."""
    if root.is_file():
        return root
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected RAF-DB's basic/ folder)")
    for candidate in (root / "EmoLabel" / RAFDB_LABEL_FILE, root / RAFDB_LABEL_FILE):
        if candidate.is_file():
            return candidate
    found = sorted(root.rglob(RAFDB_LABEL_FILE))
    if not found:
        raise DataError(f"{root}: no {RAFDB_LABEL_FILE} in it (RAF-DB basic keeps it in EmoLabel/)")
    return found[0]


def _rafdb_image(name: str, folders: Sequence[Path]) -> Path | None:
    stem, ext = os.path.splitext(name)
    for folder in folders:
        for candidate in (folder / f"{stem}_aligned{ext}", folder / name):
            if candidate.is_file():
                return candidate
    return None


@_readable
def scan_rafdb(root: str | os.PathLike, classes: Sequence[str] | None = None) -> ImageSet:
    """RAF-DB basic's label file and images -> an :class:`ImageSet` (module docstring)."""
    root = Path(root)
    label_file = find_rafdb_label_file(root)
    base = root if root.is_dir() else label_file.parent
    folders = [base / d for d in _RAFDB_IMAGE_DIRS if (base / d).is_dir()] + [label_file.parent]
    class_list = tuple(classes) if classes else RAFDB_CLASSES
    mapping = match_classes(RAFDB_CLASSES, class_list, str(label_file))
    try:
        lines = label_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(f"{label_file}: cannot read ({exc.strerror})") from None
    files: list[Path] = []
    labels: list[int] = []
    splits: list[int] = []
    missing: list[str] = []
    for line_no, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{label_file}:{line_no}"
        if len(parts) != 2:
            raise DataError(f"{where}: expected '<image name> <label 1..7>', got {line.strip()!r}")
        name, label = parts
        if not label.isdigit() or not 1 <= int(label) <= len(RAFDB_CLASSES):
            raise DataError(f"{where}: label {label!r} is not 1..7 ({', '.join(RAFDB_CLASSES)})")
        if name.startswith("train_"):
            split = "Training"
        elif name.startswith("test_"):
            split = "PrivateTest"
        else:
            raise DataError(f"{where}: image name {name!r} starts with neither train_ nor test_")
        path = _rafdb_image(name, folders)
        if path is None:
            missing.append(name)
            continue
        files.append(path)
        labels.append(mapping[RAFDB_CLASSES[int(label) - 1]])
        splits.append(SPLITS.index(split))
    if missing:
        raise DataError(
            f"{label_file}: {len(missing):,} listed image(s) not found, e.g. {missing[0]} "
            f"(looked for NAME and NAME_aligned in {', '.join(str(f) for f in folders)})"
        )
    if not files:
        raise DataError(f"{label_file}: no images listed")
    order = np.lexsort((np.arange(len(files)), np.asarray(labels), np.asarray(splits)))  # split, class, file order
    source = {
        "path": str(root.resolve()),
        "layout": "RAF-DB basic",
        "label_file": str(label_file.resolve()),
        "label_order": list(RAFDB_CLASSES),
        "image_folders": [str(f) for f in folders],
    }
    return ImageSet(
        root,
        "rafdb",
        class_list,
        tuple(files[i] for i in order),
        np.asarray(labels, np.int64)[order],
        np.asarray(splits, np.int8)[order],
        source,
    )


def carve_validation(images: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, dict | None]:
    """Move ``fraction`` of each class's training images to ``PublicTest`` (seeded).

    Does nothing (returns None as the record) when a validation split exists.  Each
    class with at least two training images gives ``max(1, round(fraction * n))`` of
    them; the draw depends only on ``seed`` and the file order.
    """
    val, train = SPLITS.index("PublicTest"), SPLITS.index("Training")
    if (images.splits == val).any():
        return images, None
    if not 0 < fraction < 1:
        raise DataError(
            f"prepare.val_fraction: {images.root} has no validation split to keep, and a fraction of "
            f"{fraction} carves none; use a value in (0, 1)"
        )
    rng = np.random.default_rng(seed)
    splits = images.splits.copy()
    for label in range(len(images.classes)):
        members = np.flatnonzero((images.splits == train) & (images.labels == label))
        if len(members) < 2:
            continue
        take = max(1, int(round(fraction * len(members))))
        splits[rng.permutation(members)[:take]] = val
    carved = int((splits == val).sum())
    if carved == 0:
        raise DataError(f"{images.root}: too few training images to carve a validation split from")
    record = {
        "from": "Training",
        "to": "PublicTest",
        "fraction": fraction,
        "seed": seed,
        "images": carved,
        "per_class": dict(
            zip(images.classes, np.bincount(images.labels[splits == val], minlength=len(images.classes)).tolist())
        ),
    }
    return replace(images, splits=splits), record


__all__ = (
    "IMAGE_EXTENSIONS",
    "CLASS_ALIASES",
    "SPLIT_ALIASES",
    "RAFDB_CLASSES",
    "RAFDB_LABEL_FILE",
    "ImageSet",
    "emotion_key",
    "match_classes",
    "infer_classes",
    "scan_folder",
    "scan_rafdb",
    "find_rafdb_label_file",
    "carve_validation",
)
