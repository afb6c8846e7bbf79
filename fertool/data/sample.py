"""The embedded sample dataset: deterministic synthetic 48x48 grey faces (``fertool sample-data``).

**Synthetic, not FER2013.**  Each image is a cartoon face drawn with OpenCV primitives;
the seven FER2013 classes differ in visible features, in the spirit of the facial
action units that define them:

=========  ==========================================================================
class      brows / eyes / mouth
=========  ==========================================================================
Anger      brows low, slanted down to the nose; narrowed eyes; tight, slightly down mouth
Disgust    one brow lowered; squinting; raised upper lip (asymmetric sneer), nose wrinkles
Fear       brows raised and drawn together; wide eyes; stretched, half-open mouth
Happiness  relaxed brows; narrowed (smiling) eyes; wide upward curve, often open
Sadness    inner brow corners raised; slightly closed eyes; mouth curved down
Surprise   brows high and arched; wide eyes; round open mouth
Neutral    relaxed brows and eyes; flat closed mouth
=========  ==========================================================================

Every parameter is jittered per image, and random pose (rotation, shift, scale),
lighting (gain, bias, directional gradient), occlusion (a bar or blob over part of the
face) and pixel noise are added, so that neighbouring classes overlap: the data are
learnable but not trivial.  The same ``seed`` always gives the same bytes.

Besides the FER2013 CSV, the same faces come in the layouts of the other data sets
fertool reads, so that every path runs end to end without the real sets:

* ``ferplus``: a FER2013 CSV plus a FER+ label file of ten synthetic annotators' votes
  over the eight FER+ classes (a ``Contempt`` face: a one-sided smirk), with a few rows
  whose majority is ``unknown``, ``NF`` (no image name) or spread (FER+ drops those);
* ``folder``: ``train/`` and ``test/`` class folders of five classes, colour photos of
  assorted non-square sizes, JPEG and PNG, no validation split;
* ``rafdb``: RAF-DB basic's ``EmoLabel/list_patition_label.txt`` (1-based labels in
  RAF-DB's order) and 100x100 colour ``Image/aligned/*_aligned.jpg`` faces.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .. import CLASS_NAMES
from ..errors import DataError
from ..files import atomic_path
from .csv import SIDE, SPLITS
from .ferplus import FERPLUS_CLASSES, VOTE_COLUMNS
from .folders import RAFDB_CLASSES, RAFDB_LABEL_FILE

#: The layouts ``fertool sample-data --format`` writes.
SAMPLE_FORMATS = ("csv", "ferplus", "folder", "rafdb")
#: Drawer label (FER2013 index; 7 = contempt) of each class of the other layouts.
_CONTEMPT = len(CLASS_NAMES)
_DRAW_FERPLUS = tuple((*CLASS_NAMES, "Contempt").index(name) for name in FERPLUS_CLASSES)
_DRAW_RAFDB = tuple(CLASS_NAMES.index(name) for name in RAFDB_CLASSES)
#: The five classes of the folder sample, as AffectNet-style folder names.
FOLDER_CLASSES = ("anger", "happy", "neutral", "sad", "surprise")
_DRAW_FOLDER = (0, 3, 6, 4, 5)

#: Drawing happens on a canvas this many times larger than 48x48, then the pose warp
#: brings it down to 48x48 (smooth, anti-aliased strokes).
_UP = 4
_CANVAS = SIDE * _UP

# Per class: (brow_tilt, brow_raise, eye_open, mouth_curve, mouth_open, mouth_width, asym)
#   brow_tilt  > 0: inner ends down (anger), < 0: inner ends up (sadness, fear)
#   brow_raise    : distance brow-eye, relative
#   eye_open      : eye height, relative
#   mouth_curve> 0: corners up (smile), < 0: corners down
#   mouth_open    : opening height, relative
#   mouth_width   : relative
#   asym          : one-sided sneer (disgust)
_CLASS_PARAMS = np.array(
    [
        # tilt  raise  eye   curve  open  width  asym
        [0.55, 0.55, 0.55, -0.25, 0.00, 0.85, 0.0],  # Anger
        [0.30, 0.75, 0.50, -0.45, 0.10, 0.85, 1.0],  # Disgust
        [-0.45, 1.35, 1.35, -0.15, 0.45, 1.05, 0.0],  # Fear
        [0.00, 1.00, 0.75, 0.85, 0.30, 1.15, 0.0],  # Happiness
        [-0.55, 1.00, 0.70, -0.70, 0.00, 0.85, 0.0],  # Sadness
        [0.00, 1.60, 1.50, 0.00, 1.00, 0.65, 0.0],  # Surprise
        [0.00, 1.00, 1.00, 0.00, 0.00, 0.90, 0.0],  # Neutral
        [0.10, 0.90, 0.85, 0.20, 0.00, 0.90, 0.6],  # Contempt (FER+ only): one-sided smirk
    ],
    dtype=np.float64,
)
# Per-image jitter (standard deviations) of the same parameters: large enough that
# Anger/Disgust, Fear/Surprise and Sadness/Neutral overlap.
_JITTER = np.array([0.22, 0.22, 0.22, 0.25, 0.15, 0.12, 0.3])


def split_sizes(per_class: int) -> dict[str, int]:
    """Images per class in each split: ``per_class`` for Training, about a quarter for the others."""
    small = max(1, round(per_class / 4))
    return {"Training": per_class, "PublicTest": small, "PrivateTest": small}


def _clip(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


_GRID = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE - 0.5  # (2, 48, 48): y, x in [-0.5, 0.5)


def _pt(x: float, y: float) -> tuple[int, int]:
    """Canvas coordinates in 1/16 pixel for OpenCV's ``shift=4`` sub-pixel drawing."""
    return int(math.floor(float(x) * 16 + 0.5)), int(math.floor(float(y) * 16 + 0.5))


def draw_face(rng: np.random.Generator, label: int) -> np.ndarray:
    """One synthetic face of class ``label``: uint8 (48, 48)."""
    import cv2

    params = (_CLASS_PARAMS[label] + rng.normal(0, _JITTER)).tolist()  # Python floats: fast scalar maths
    tilt, raise_, eye_open, curve, mouth_open, width, asym = params
    eye_open, width, raise_ = max(eye_open, 0.2), max(width, 0.4), max(raise_, 0.25)
    mouth_open = max(mouth_open, 0.0)
    c = _CANVAS
    u = c / 48.0  # one 48x48 pixel on the canvas
    background = float(rng.uniform(20, 235))
    skin = _clip(background + float(rng.choice([-1, 1]) * rng.uniform(40, 110)), 40, 230)
    dark = _clip(skin - float(rng.uniform(70, 130)), 0, 255)
    img = np.full((c, c), round(background), np.uint8)
    # Head, hair line and neck.
    cx, cy = c / 2, c / 2 + 2 * u
    hw, hh = rng.uniform(15.5, 18.5) * u, rng.uniform(19, 22) * u
    cv2.rectangle(img, _pt(cx - 6 * u, cy + hh * 0.7), _pt(cx + 6 * u, c + 2 * u), skin * 0.9, -1, cv2.LINE_AA, 4)
    hair = _clip(skin - float(rng.uniform(40, 140)), 0, 255)
    cv2.ellipse(img, _pt(cx, cy - 2 * u), _pt(hw + 1.5 * u, hh + 1 * u), 0, 180, 360, hair, -1, cv2.LINE_AA, 4)
    cv2.ellipse(img, _pt(cx, cy), _pt(hw, hh), 0, 0, 360, skin, -1, cv2.LINE_AA, 4)
    stroke = max(1, int(round(u * rng.uniform(1.0, 1.6))))
    # Eyes: white, iris, lids.
    eye_y = cy - 4 * u
    eye_dx = rng.uniform(6.5, 8.0) * u
    eye_w = rng.uniform(3.0, 3.8) * u
    eye_h = _clip(1.6 * eye_open, 0.3, 3.2) * u
    squint = _clip(1.0 - 0.4 * asym, 0.5, 1.2)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        h = eye_h * (squint if side > 0 else 1.0)
        cv2.ellipse(img, _pt(ex, eye_y), _pt(eye_w, h), 0, 0, 360, min(skin + 60, 255), -1, cv2.LINE_AA, 4)
        r = min(h, 1.4 * u)
        cv2.circle(img, _pt(ex + rng.normal(0, 0.3) * u, eye_y), int(r * 16), dark, -1, cv2.LINE_AA, 4)
        cv2.ellipse(img, _pt(ex, eye_y), _pt(eye_w, h), 0, 180, 360, dark, stroke, cv2.LINE_AA, 4)
    # Brows: a line per side; ``tilt`` lowers the inner end, ``asym`` lowers one brow.
    for side in (-1, 1):
        ex = cx + side * eye_dx
        base = eye_y - eye_h - (2.0 + 2.5 * raise_) * u
        base += (asym * 2.0 * u) if side > 0 else 0.0
        inner = (ex - side * 3.5 * u, base + tilt * 3.5 * u)
        outer = (ex + side * 3.5 * u, base - tilt * 1.5 * u)
        mid = ((inner[0] + outer[0]) / 2, (inner[1] + outer[1]) / 2 - (raise_ - 1.0) * 0.8 * u)
        pts = np.array([_pt(*inner), _pt(*mid), _pt(*outer)], np.int32)
        cv2.polylines(img, [pts], False, dark, stroke + 1, cv2.LINE_AA, 4)
    # Nose, and wrinkles for disgust.
    cv2.line(
        img, _pt(cx, eye_y + 1 * u), _pt(cx + rng.normal(0, 0.4) * u, cy + 3 * u), skin * 0.7, stroke, cv2.LINE_AA, 4
    )
    if asym > 0.5:
        for k in (-1, 1):
            cv2.line(
                img,
                _pt(cx + k * 1.5 * u, cy + 0.5 * u),
                _pt(cx + k * 3.0 * u, cy + 2.0 * u),
                skin * 0.6,
                stroke,
                cv2.LINE_AA,
                4,
            )
    # Mouth: a parabola y = curve * (x/w)^2 through the corners, opened by an ellipse.
    my = cy + rng.uniform(8.5, 10.0) * u
    mw = 5.5 * width * u
    xs = np.linspace(-1, 1, 15)
    lift = asym * 1.8 * u * (xs > 0) * xs  # sneer: one corner up
    upper = [(cx + x * mw, my - curve * 3.6 * u * (x * x) + curve * 1.2 * u - lift[i]) for i, x in enumerate(xs)]
    open_h = mouth_open * 4.5 * u
    if open_h > 0.6 * u:
        lower = [(px, py + open_h * (1 - x * x) ** 0.7) for (px, py), x in zip(upper, xs)]
        poly = np.array([_pt(*p) for p in upper + lower[::-1]], np.int32)
        cv2.fillPoly(img, [poly], dark * 0.6, cv2.LINE_AA, 4)
    cv2.polylines(img, [np.array([_pt(*p) for p in upper], np.int32)], False, dark, stroke + 1, cv2.LINE_AA, 4)
    # Occlusion: a bar (glasses frame, hand) or a blob, sometimes.
    if rng.random() < 0.2:
        shade = rng.uniform(0, 255)
        if rng.random() < 0.5:
            y = rng.uniform(0.2, 0.9) * c
            cv2.rectangle(
                img,
                _pt(rng.uniform(-0.2, 0.4) * c, y),
                _pt(rng.uniform(0.6, 1.2) * c, y + rng.uniform(3, 9) * u),
                shade,
                -1,
                cv2.LINE_AA,
                4,
            )
        else:
            cv2.ellipse(
                img,
                _pt(rng.uniform(0, 1) * c, rng.uniform(0.4, 1) * c),
                _pt(rng.uniform(5, 12) * u, rng.uniform(5, 12) * u),
                rng.uniform(0, 180),
                0,
                360,
                shade,
                -1,
                cv2.LINE_AA,
                4,
            )
    # Pose: rotation, scale and shift about the centre, down to 48x48.
    angle = rng.normal(0, 6)
    scale = rng.uniform(0.95, 1.2) / _UP
    m = cv2.getRotationMatrix2D((c / 2, c / 2), angle, scale)
    m[:, 2] += (SIDE / 2 - c / 2) + rng.normal(0, 1.5, size=2)
    small = cv2.warpAffine(
        img.astype(np.float32), m, (SIDE, SIDE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
    )
    # Lighting: gain, bias and a directional gradient; then sensor noise.
    yy, xx = _GRID
    theta = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(0, 0.4) * (math.cos(theta) * xx + math.sin(theta) * yy)
    small = small * light * rng.uniform(0.75, 1.2) + rng.uniform(-25, 25)
    small += rng.normal(0, rng.uniform(2, 7), size=small.shape)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def generate_faces(per_class: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All sample images in file order: (images uint8 (N, 48, 48), labels int64, split codes int8).

    Splits come in FER2013 order (Training, PublicTest, PrivateTest); within a split
    the classes are shuffled.
    """
    if per_class < 1:
        raise DataError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    labels, splits = [], []
    for code, (_split, n) in enumerate(split_sizes(per_class).items()):
        order = rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), n))
        labels.append(order)
        splits.append(np.full(len(order), code, np.int8))
    labels_all = np.concatenate(labels).astype(np.int64)
    images = np.stack([draw_face(rng, int(label)) for label in labels_all])
    return images, labels_all, np.concatenate(splits)


def _csv_lines(images: np.ndarray, labels, splits) -> list[str]:
    numbers = np.array([str(v) for v in range(256)], dtype=object)
    lines = ["emotion,pixels,Usage\n"]
    for image, label, code in zip(images, list(labels), list(splits)):
        lines.append(f"{label},{' '.join(numbers[image.ravel()])},{SPLITS[code]}\n")
    return lines


def _write_lines(path: Path, lines: list[str]) -> None:
    """Write ``lines`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)  # an OSError here names the folder itself
    try:
        with atomic_path(path) as tmp, open(tmp, "w", encoding="ascii", newline="\n") as fh:
            fh.writelines(lines)
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from None


def sample_csv_text(per_class: int, seed: int) -> str:
    """The bytes (as ASCII text) of the sample CSV that ``generate_sample`` writes."""
    images, labels, splits = generate_faces(per_class, seed)
    return "".join(_csv_lines(images, labels.tolist(), splits.tolist()))


def generate_sample(out_csv: str | os.PathLike, *, per_class: int = 60, seed: int = 0, overwrite: bool = True) -> Path:
    """Write the synthetic sample as a FER2013-format CSV (``emotion,pixels,Usage``).

    Training has ``per_class`` images per class, PublicTest and PrivateTest about
    ``per_class / 4`` each.  Same ``seed`` -> byte-identical file.  Written atomically;
    an existing file is refused unless ``overwrite``.
    """
    out_csv = Path(out_csv)
    if out_csv.is_dir():
        raise DataError(f"{out_csv}: is a directory; give the CSV file to write")
    if out_csv.exists() and not overwrite:
        raise DataError(f"{out_csv}: file exists (use --overwrite to replace it)")
    images, labels, splits = generate_faces(per_class, seed)
    _write_lines(out_csv, _csv_lines(images, labels.tolist(), splits.tolist()))
    return out_csv


# --------------------------------------------------------------------------- other layouts


def _write_folder(out_dir: str | os.PathLike, overwrite: bool, fill) -> Path:
    """Build a sample folder with ``fill(tmp)`` and move it to ``out_dir`` when complete."""
    from .prepare import build_folder

    out_dir = Path(out_dir)

    def check() -> None:
        if out_dir.exists() and not out_dir.is_dir():
            raise DataError(f"{out_dir}: exists and is not a directory")
        if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
            raise DataError(f"{out_dir}: directory exists and is not empty (use --overwrite to replace it)")

    check()
    with build_folder(out_dir, check, kind="sample data") as tmp:
        fill(tmp)
    return out_dir


def _class_draws(rng: np.random.Generator, n_classes: int, per_class: int) -> list[tuple[int, np.ndarray]]:
    """Per split code: labels (shuffled, ``n`` per class) in FER2013 split order."""
    return [
        (code, rng.permutation(np.repeat(np.arange(n_classes), n)))
        for code, n in enumerate(split_sizes(per_class).values())
    ]


def _ferplus_votes(rng: np.random.Generator, label: int) -> list[int]:
    """Ten annotators' votes with a strict majority for ``label`` (6..9 votes)."""
    votes = [0] * len(VOTE_COLUMNS)
    votes[label] = int(rng.integers(6, 10))
    others = [i for i in range(len(VOTE_COLUMNS) - 1) if i != label]  # emotions and unknown, not NF
    rest = 10 - votes[label]
    for i in rng.choice(others, size=rest):
        votes[int(i)] += 1
    return votes


def _dropped_votes(rng: np.random.Generator, kind: int) -> list[int]:
    """Votes FER+ drops in every label mode: kind 0 = unknown majority, 1 = not a face (no
    image name, as in the real file), 2 = five columns tied at 2 votes."""
    votes = [0] * len(VOTE_COLUMNS)
    if kind == 0:
        votes[VOTE_COLUMNS.index("unknown")] = 6
        votes[int(rng.integers(0, len(FERPLUS_CLASSES)))] += 4
    elif kind == 1:
        votes[VOTE_COLUMNS.index("nf")] = 10
    else:
        for i in rng.choice(len(FERPLUS_CLASSES), size=4, replace=False):
            votes[int(i)] = 2
        votes[VOTE_COLUMNS.index("unknown")] = 2
    return votes


def generate_ferplus_sample(
    out_dir: str | os.PathLike, *, per_class: int = 60, seed: int = 0, overwrite: bool = False
) -> Path:
    """``out_dir/fer2013.csv`` and ``out_dir/fer2013new.csv``: synthetic FER2013 + FER+ labels.

    Each split has the split size of :func:`split_sizes` per FER+ class, plus a few rows
    FER+ drops (unknown or NF majority, five-way ties: about a quarter of a class per split).  The
    CSV's ``emotion`` is the drawn face's FER2013 class (Disgust for Contempt faces).
    """
    rng = np.random.default_rng(seed)
    images, labels, usages, votes = [], [], [], []
    for code, draw in _class_draws(rng, len(FERPLUS_CLASSES), per_class):
        extra = 3 * max(1, len(draw) // (4 * len(FERPLUS_CLASSES)))
        kinds = np.concatenate([np.full(len(draw), -1), np.arange(extra) % 3])
        for k in rng.permutation(len(kinds)):
            if kinds[k] < 0:
                ferplus = int(draw[k])
                face = _DRAW_FERPLUS[ferplus]
                votes.append(_ferplus_votes(rng, ferplus))
            else:
                face = int(rng.integers(0, len(CLASS_NAMES)))
                votes.append(_dropped_votes(rng, int(kinds[k])))
            images.append(draw_face(rng, face))
            labels.append(face if face != _CONTEMPT else CLASS_NAMES.index("Disgust"))
            usages.append(code)
    header = "Usage,Image name," + ",".join(c if c != "nf" else "NF" for c in VOTE_COLUMNS) + "\n"
    # as in the real file: rows FER+ found no face in have no image name, and the names'
    # numbers skip them (rows pair with the CSV by position)
    named = [v[-1] < 10 for v in votes]
    numbers = np.cumsum(named) - 1
    label_lines = [header] + [
        f"{SPLITS[u]},{f'fer{n:07d}.png' if ok else ''},{','.join(map(str, v))}\n"
        for u, v, ok, n in zip(usages, votes, named, numbers)
    ]

    def fill(tmp: Path) -> None:
        _write_lines(tmp / "fer2013.csv", _csv_lines(np.stack(images), labels, usages))
        _write_lines(tmp / "fer2013new.csv", label_lines)

    return _write_folder(out_dir, overwrite, fill)


def _colour_photo(rng: np.random.Generator, grey: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 48x48 grey face -> a tinted BGR photo of ``size`` (width, height)."""
    import cv2

    gain = rng.uniform(0.6, 1.1, size=3) * np.array([0.8, 0.9, 1.05])  # B, G, R: warm skin tones
    bias = rng.uniform(-10, 30, size=3)
    photo = np.clip(grey[..., None].astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)  # (48, 48, 3)
    return cv2.resize(photo, size, interpolation=cv2.INTER_LINEAR)


def generate_folder_sample(
    out_dir: str | os.PathLike, *, per_class: int = 60, seed: int = 0, overwrite: bool = False
) -> Path:
    """``out_dir/{train,test}/<class>/NNNN.{jpg,png}``: five classes (:data:`FOLDER_CLASSES`),
    colour photos of random non-square sizes (40..96 pixels a side); no validation split."""
    import cv2

    rng = np.random.default_rng(seed)
    sizes = split_sizes(per_class)
    draws = [
        (split, rng.permutation(np.repeat(np.arange(len(FOLDER_CLASSES)), sizes[split])))
        for split in ("Training", "PrivateTest")
    ]
    photos = []
    for split, draw in draws:
        for i, label in enumerate(draw.tolist()):
            w, h = (int(v) for v in rng.integers(40, 97, size=2))
            if w == h:
                w += 7
            photo = _colour_photo(rng, draw_face(rng, _DRAW_FOLDER[label]), (w, h))
            folder = "train" if split == "Training" else "test"
            photos.append((f"{folder}/{FOLDER_CLASSES[label]}/{i:04d}.{'png' if i % 3 == 0 else 'jpg'}", photo))

    def fill(tmp: Path) -> None:
        for rel, photo in photos:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(cv2.imencode(os.path.splitext(rel)[1], photo)[1].tobytes())

    return _write_folder(out_dir, overwrite, fill)


def generate_rafdb_sample(
    out_dir: str | os.PathLike, *, per_class: int = 60, seed: int = 0, overwrite: bool = False
) -> Path:
    """RAF-DB basic's layout: ``EmoLabel/list_patition_label.txt`` and 100x100 colour
    ``Image/aligned/{train_NNNNN,test_NNNN}_aligned.jpg``; training and test splits only."""
    import cv2

    rng = np.random.default_rng(seed)
    sizes = split_sizes(per_class)
    lines, photos = [], []
    for split, prefix, digits in (("Training", "train", 5), ("PrivateTest", "test", 4)):
        draw = rng.permutation(np.repeat(np.arange(len(RAFDB_CLASSES)), sizes[split]))
        for i, label in enumerate(draw.tolist(), start=1):
            name = f"{prefix}_{i:0{digits}d}"
            lines.append(f"{name}.jpg {label + 1}\n")
            photos.append(
                (
                    f"Image/aligned/{name}_aligned.jpg",
                    _colour_photo(rng, draw_face(rng, _DRAW_RAFDB[label]), (100, 100)),
                )
            )

    def fill(tmp: Path) -> None:
        _write_lines(tmp / "EmoLabel" / RAFDB_LABEL_FILE, lines)
        (tmp / "Image" / "aligned").mkdir(parents=True)
        for rel, photo in photos:
            (tmp / rel).write_bytes(cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())

    return _write_folder(out_dir, overwrite, fill)
