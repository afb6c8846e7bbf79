"""Recipes: YAML files loaded into typed, frozen, validated dataclasses.

(Kept as one file: the schema, its validating loader and the resume rules belong together; the schema
is most of it.)

A recipe has sections (``prepare``, ``data``, ``model``, ``train``, ``tta``, ``sample``,
``ablate``, ``pipeline``).  Every field has the paper's value as its default, so a file
only needs the keys it changes, and ``recipes/paper.yaml`` spells the whole protocol out.

Loading collects *every* problem before failing, each reported as
``recipes/x.yaml: stages.2.lr: must be > 0, got -0.01``; unknown keys get a
"did you mean" hint.  ``--set dotted.key=value`` overrides are applied to the raw data
before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import protocol
from .errors import FertoolError, RecipeError

#: Folder of the recipes shipped with fertool: ``recipes/`` at the top of the repo (a clone
#: or an editable install), else where a regular install puts them (setup.cfg data_files).
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
if not RECIPES_DIR.is_dir():
    RECIPES_DIR = Path(sys.prefix) / "share" / "fertool" / "recipes"


# --------------------------------------------------------------------------- checks
# A check is (predicate, message); it lives in the dataclass field's metadata.


def _check(pred: Callable[[Any], bool], message: str) -> dict:
    return {"check": (pred, message)}


def positive() -> dict:
    return _check(lambda v: v > 0, "must be > 0")


def non_negative() -> dict:
    return _check(lambda v: v >= 0, "must be >= 0")


def in_range(lo: float, hi: float) -> dict:
    return _check(lambda v: lo <= v <= hi, f"must be between {lo} and {hi}")


def up_to(hi: int) -> dict:
    """A size or count: 1 to ``hi`` (caps stop a typo allocating terabytes)."""
    return _check(lambda v: 1 <= v <= hi, f"must be between 1 and {hi:,}")


def one_of(*choices: Any) -> dict:
    return _check(lambda v: v in choices, "must be one of " + ", ".join(map(str, choices)))


def each(pred: Callable[[Any], bool], message: str) -> dict:
    return _check(lambda v: all(pred(x) for x in v), message)


# --------------------------------------------------------------------------- schema

#: Numeric precisions of training and inference (``train.precision``, ``train.eval_precision``):
#: ``fp32`` float32 throughout (the authors' setting; TF32 off), ``tf32`` float32 tensors
#: with TF32 matrix products and convolutions on NVIDIA GPUs, ``bf16`` bf16 autocast of
#: the forward pass (TF32 off for what stays in float32).  See :func:`fertool.utils.precision`.
PRECISIONS = ("fp32", "tf32", "bf16")
#: Default margin of ``predict --precision bf16``'s float32 recheck
#: (:class:`fertool.evaluation.runtimes.CheckedEngine`), relative to an image's largest
#: |logit|.  bf16 autocast moved the logits of the demo's trained LHC-Net by a median 0.7%
#: (largest 16%) of that, and every top-1 change there had its two best logits closer than
#: 2% (``benchmarks/infer.py`` prints the agreement and the share rechecked).
RECHECK_MARGIN = 0.03
#: ``train.precision`` may also be ``fp16``: float16 autocast of the forward pass with a
#: ``torch.amp.GradScaler`` (GPUs without bf16: Pascal, Turing).  Inference stays float32.
TRAIN_PRECISIONS = PRECISIONS + ("fp16",)
#: Loggers of ``train.log`` (fertool.engine.loggers).
LOGGERS = ("tensorboard", "mlflow")


@dataclass(frozen=True)
class PrepareConfig:
    """How ``fertool prepare`` makes training images: from 48x48 CSV pixels (docs/protocol.md §1), or image files."""

    size: int = field(default=224, metadata=positive())
    rgb: bool = True  # grey -> RGB by channel replication
    truncate: bool = True  # floor to uint8 (the reference); False rounds
    jpeg_quality: int = field(default=100, metadata=in_range(1, 100))
    subsampling: str = field(default="4:4:4", metadata=one_of("4:4:4", "4:2:2", "4:2:0"))
    # FER+ labels (``prepare --ferplus``, rules in fertool.data.ferplus): "majority" = FER+'s
    # majority rule, "crossentropy" = train against FER+'s vote distribution, "plurality" =
    # the most-voted column (fertool's earlier rule, not FER+'s).
    label_mode: str = field(default="majority", metadata=one_of("majority", "crossentropy", "plurality"))
    # Image folders and RAF-DB (``prepare --folder/--rafdb``), photos of any size and colour:
    # "crop" = centre square crop then resize, "stretch" = resize to a square as they are;
    # "keep" colour or convert to "grey" (then replicated to RGB when ``rgb``).
    fit: str = field(default="crop", metadata=one_of("crop", "stretch"))
    colour: str = field(default="keep", metadata=one_of("keep", "grey"))
    # Data sets without a validation split: this fraction of each training class becomes
    # the validation split, drawn with this seed (recorded in prepare.json).
    val_fraction: float = field(default=0.1, metadata=_check(lambda v: 0 < v < 1, "must be in (0, 1)"))
    val_seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and which splits play which role."""

    csv: str | None = None  # FER2013 CSV (``--csv`` overrides)
    images: str | None = None  # prepared image folder (``--images`` overrides)
    train_split: str = "Training"
    val_split: str = "PublicTest"
    test_split: str = "PrivateTest"
    # Validation/test images: "reference" = float bilinear straight from the CSV
    # (no floor, no JPEG: the reference protocol), "prepared" = the JPEG files.
    eval_source: str = field(default="reference", metadata=one_of("reference", "prepared"))
    # The class names of the data, index = label: fixes names and order for class folders
    # and RAF-DB (folder names are matched case-insensitively; "happy" is Happiness).
    # Empty: the data's own list (FER2013's 7, FER+'s 8, sorted folder names...).
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LHCModuleConfig:
    """One LHC module: where it goes and its hyper-parameters (Table 2 row)."""

    after: str  # "stem" or "stage{S}_unit{U}"
    heads: int = field(metadata=up_to(1024))
    dim: int = field(metadata=up_to(65536))
    pool: int = field(default=3, metadata=up_to(255))
    kernel: int = field(default=3, metadata=up_to(255))
    scale: float = 1.0  # the constant g of the dynamic scaling


#: Table 2 of the paper as recipe entries.
TABLE2: tuple[LHCModuleConfig, ...] = tuple(LHCModuleConfig(**m) for m in protocol.TABLE2)


@dataclass(frozen=True)
class ModelConfig:
    """The network: backbone, head, LHC modules and controller initialisation."""

    # A registered backbone (fertool.models.registry: resnet34v2, resnet34_tv); the name is
    # checked when the model is built, where the registry is.
    backbone: str = field(default="resnet34v2", metadata=_check(lambda v: bool(v), "must name a backbone"))
    input_size: int = field(default=224, metadata=up_to(2048))
    num_classes: int = field(default=7, metadata=_check(lambda v: 2 <= v <= 10_000, "must be between 2 and 10,000"))
    hidden: tuple[int, ...] = field(
        default=(4096, 1024),
        metadata=_check(
            lambda v: len(v) <= 16 and all(0 < x <= 65536 for x in v), "must be at most 16 sizes, each 1 to 65,536"
        ),
    )
    # Channels of the four stages and of the stem (ResNet34's, the paper's); smaller values
    # make a narrow model of the same depth (quick experiments, tests).
    channels: tuple[int, ...] = field(
        default=(64, 128, 256, 512),
        metadata=_check(
            lambda v: len(v) == 4 and all(0 < c <= 8192 for c in v),
            "must be 4 integers, each 1 to 8,192 (one per stage)",
        ),
    )
    stem_width: int = field(default=64, metadata=up_to(8192))
    dropout: float = field(default=0.4, metadata=_check(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    bn_eps: float = field(default=2e-5, metadata=positive())
    bn_momentum: float = field(
        default=0.99, metadata=_check(lambda v: 0 < v < 1, "must be in (0, 1)")
    )  # Keras convention
    # Local file with pre-trained backbone weights for stage 1: a Keras .h5
    # (classification_models), a fertool checkpoint, or a torchvision .pth.
    pretrained: str | None = None
    lhc: tuple[LHCModuleConfig, ...] = TABLE2
    controller_init: tuple[float, ...] = protocol.CONTROLLER_INIT


@dataclass(frozen=True)
class AugmentConfig:
    """Keras ImageDataGenerator semantics (docs/protocol.md §4)."""

    rotation: float = field(default=0.0, metadata=in_range(0, 180))  # degrees, uniform in [-r, r]
    shift: float = field(default=0.0, metadata=in_range(0, 1))  # fraction of the size, x and y
    zoom: float = field(default=0.0, metadata=in_range(0, 0.99))  # factors uniform in [1-z, 1+z], x and y independent
    flip: bool = False  # horizontal, probability 0.5
    fill: str = field(default="nearest", metadata=one_of("nearest", "constant", "reflect"))


@dataclass(frozen=True)
class StageConfig:
    """One training stage (a row of the table in docs/protocol.md §4)."""

    model: str = field(default="backbone", metadata=one_of(*protocol.MODEL_KINDS))
    optimizer: str = field(default="sgd", metadata=one_of("sgd", "adam"))
    lr: float = field(default=0.01, metadata=positive())
    batch_size: int = field(default=64, metadata=up_to(1 << 20))
    patience: int = field(default=10, metadata=non_negative())
    max_epochs: int = field(default=300, metadata=up_to(1_000_000))
    eps: float = field(default=1e-7, metadata=positive())  # Adam epsilon (Keras default)
    momentum: float = field(default=0.0, metadata=in_range(0, 1))
    weight_decay: float = field(default=0.0, metadata=non_negative())
    augment: AugmentConfig = AugmentConfig()
    # Options beyond the paper, all off by default (fertool.engine.schedule; README "Recipes").
    # Learning rate per optimiser step: constant | cosine (to min_lr at max_epochs) | step
    # (x gamma every step_epochs epochs), after a linear warmup of warmup_epochs (0 = none).
    schedule: str = field(default="constant", metadata=one_of("constant", "cosine", "step"))
    warmup_epochs: float = field(default=0.0, metadata=non_negative())
    min_lr: float = field(default=0.0, metadata=non_negative())
    step_epochs: int = field(default=30, metadata=positive())
    gamma: float = field(default=0.1, metadata=positive())
    label_smoothing: float = field(default=0.0, metadata=_check(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    # Exponential moving average of the weights (decay per optimiser step; 0 = off):
    # validation, early stopping and best.pt use the averaged weights.
    ema: float = field(default=0.0, metadata=_check(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    # Gradient accumulation: one optimiser step per `accumulate` batches of batch_size.
    accumulate: int = field(default=1, metadata=positive())


def _paper_stages() -> dict[str, StageConfig]:
    return {
        "1": StageConfig(
            optimizer="adam", lr=1e-4, batch_size=48, patience=30, augment=AugmentConfig(rotation=30, flip=True)
        ),
        "2": StageConfig(
            optimizer="sgd",
            lr=0.01,
            batch_size=64,
            patience=10,
            augment=AugmentConfig(rotation=10, shift=0.1, zoom=0.1, flip=True),
        ),
        "3": StageConfig(optimizer="sgd", lr=0.01, batch_size=64, patience=5),
        "4": StageConfig(model="lhc", optimizer="sgd", lr=0.01, batch_size=64, patience=3),
        "controller": StageConfig(model="controller", optimizer="adam", lr=1e-4, batch_size=32, patience=1),
    }


@dataclass(frozen=True)
class TrainConfig:
    """Engine settings shared by all stages, and the stages themselves."""

    # Numeric precision of training (fp32 | tf32 | bf16, see fertool.utils.PRECISIONS) and
    # of everything that measures a model: early-stopping validation, the stage-4 rule,
    # evaluation, TTA and ablation.  fp32 is the authors' setting.
    precision: str = field(default="fp32", metadata=one_of(*TRAIN_PRECISIONS))
    eval_precision: str = field(default="fp32", metadata=one_of(*PRECISIONS))
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # bit-reproducible CPU runs
    sync_bn: bool = False  # SyncBatchNorm under torchrun
    eval_batch_size: int = field(default=256, metadata=up_to(1 << 20))
    selection_factor: float = field(default=1.1, metadata=positive())  # stage-4 selection rule
    # Checkpoints a finished stage keeps: "best", or "best+last" (last.pt: weights +
    # optimiser state of the last epoch, only needed to resume; about 2x best.pt).
    keep: str = field(default="best+last", metadata=one_of("best", "best+last"))
    # Seed of the model's initial weights (new LHC modules, a new head, dropout); fixed, as
    # in the paper's run sets, while --seed (the data seed) varies the data order and augmentation.
    init_seed: int = field(default=0, metadata=non_negative())
    # Live logging (fertool.engine.loggers): [], [tensorboard], [mlflow] or both.  Steps are
    # logged every log_every optimiser steps; MLflow writes to RUN/mlruns unless mlflow_uri.
    log: tuple[str, ...] = field(default=(), metadata=each(lambda v: v in LOGGERS, "must be tensorboard or mlflow"))
    log_every: int = field(default=50, metadata=positive())
    mlflow_uri: str | None = None
    mlflow_experiment: str = "fertool"
    stages: dict[str, StageConfig] = field(
        default_factory=_paper_stages,
        metadata=_check(
            lambda v: set(v) <= set(protocol.STAGES), f"must name only the stages {', '.join(protocol.STAGES)}"
        ),
    )


@dataclass(frozen=True)
class TTAPass:
    """A product grid of views; the identity combination is skipped (docs/protocol.md §5)."""

    zoom: tuple[float, ...] = (1.0,)  # central crop fraction, < 1 zooms in
    rotation: tuple[float, ...] = (0.0,)  # radians, positive = counter-clockwise
    shift_h: tuple[float, ...] = (0.0,)  # pixels at reference_size, positive = right
    shift_v: tuple[float, ...] = (0.0,)  # pixels at reference_size, positive = down
    flip: tuple[bool, ...] = (False,)


@dataclass(frozen=True)
class TTAPreset:
    identity_weight: float = field(default=3.0, metadata=non_negative())
    reference_size: int = field(default=224, metadata=positive())  # shifts scale with input_size / this
    passes: tuple[TTAPass, ...] = ()


def _tta_presets() -> dict[str, TTAPreset]:
    return {
        "paper": TTAPreset(
            identity_weight=3.0,
            passes=(
                TTAPass(
                    rotation=(0.0, 0.4, -0.4),
                    shift_h=(0.0, 10.0, -10.0),
                    shift_v=(0.0, 10.0, -10.0),
                    flip=(False, True),
                ),
                TTAPass(zoom=(0.9,), rotation=(0.0, 0.15, -0.15), flip=(False, True)),
            ),
        ),
        "flip": TTAPreset(identity_weight=1.0, passes=(TTAPass(flip=(False, True)),)),
    }


@dataclass(frozen=True)
class TTAConfig:
    preset: str = "paper"
    presets: dict[str, TTAPreset] = field(default_factory=_tta_presets)


@dataclass(frozen=True)
class SampleConfig:
    """The synthetic sample data set (``fertool sample-data``)."""

    per_class: int = field(default=60, metadata=positive())  # Training images per class
    seed: int = 0


@dataclass(frozen=True)
class AblateConfig:
    modes: tuple[str, ...] = field(
        default=("off", "detrain"), metadata=each(lambda v: v in ("off", "detrain"), "must be off or detrain")
    )
    sets: tuple[str, ...] = field(
        default=("single", "cumulative"),
        metadata=each(lambda v: v in ("single", "cumulative", "all"), "must be single, cumulative or all"),
    )
    tolerance: float = field(default=0.005, metadata=non_negative())  # accuracy drop still "kept"


@dataclass(frozen=True)
class PipelineConfig:
    seeds: tuple[int, ...] = (1,)
    tta: bool = True
    ablate: bool = True
    # The initialisation of each seed's new weights (LHC modules, dropout) in stage 4, the
    # controller and the ResNet control: "per_seed" = init seed S for seed S, as the authors'
    # seeded script derives both from one seed (the paper's set C); "fixed" = train.init_seed
    # for every seed, so that only the data seed varies.
    lhc_init: str = field(default="per_seed", metadata=one_of("per_seed", "fixed"))


@dataclass(frozen=True)
class Recipe:
    prepare: PrepareConfig = PrepareConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = field(default_factory=TrainConfig)
    tta: TTAConfig = field(default_factory=TTAConfig)
    sample: SampleConfig = SampleConfig()
    ablate: AblateConfig = AblateConfig()
    pipeline: PipelineConfig = PipelineConfig()


# --------------------------------------------------------------------------- building


_MISSING = object()


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        return "a list"
    if origin is dict:
        return "a mapping"
    if _is_optional(tp):
        return _type_name(_strip_optional(tp)) + " or null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _is_optional(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _strip_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0]


def _convert(value: Any, tp: Any, loc: str, problems: list[str]) -> Any:
    """Convert raw YAML ``value`` to type ``tp``; append problems, return _MISSING on failure."""
    if _is_optional(tp):
        if value is None:
            return None
        tp = _strip_optional(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, loc, problems)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{loc}: must be a list, got {value!r}")
            return _MISSING
        (item_tp, *_rest) = typing.get_args(tp)
        items = [_convert(v, item_tp, f"{loc}.{i}", problems) for i, v in enumerate(value)]
        return _MISSING if any(i is _MISSING for i in items) else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{loc}: must be a mapping, got {value!r}")
            return _MISSING
        _key_tp, val_tp = typing.get_args(tp)
        out = {str(k): _convert(v, val_tp, f"{loc}.{k}", problems) for k, v in value.items()}
        return _MISSING if any(v is _MISSING for v in out.values()) else out
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # .nan / .inf pass every comparison-based check
                problems.append(f"{loc}: must be a finite number, got {value!r}")
                return _MISSING
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - schema error, not user error
        raise TypeError(f"unsupported recipe type {tp!r} at {loc}")
    problems.append(f"{loc}: must be {_type_name(tp)}, got {value!r}")
    return _MISSING


def _build(cls: type, raw: Any, loc: str, problems: list[str]) -> Any:
    where = f"{loc}: " if loc else ""
    if not isinstance(raw, Mapping):
        problems.append(f"{where}must be a mapping, got {raw!r}")
        return _MISSING
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if str(key) not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(known)})"
            problems.append(f"{_join(loc, key)}: unknown key{suggestion}")
    kwargs: dict[str, Any] = {}
    failed = False
    for name, f in known.items():
        sub = _join(loc, name)
        if name in raw:
            value = _convert(raw[name], hints[name], sub, problems)
            if value is _MISSING:
                failed = True
                continue
            check = f.metadata.get("check")
            if check is not None and value is not None:
                pred, message = check
                try:
                    ok = pred(value)
                except TypeError:
                    ok = False
                if not ok:
                    problems.append(f"{sub}: {message}, got {_show(value)}")
                    failed = True
                    continue
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{sub}: required key is missing")
            failed = True
    if failed:
        return _MISSING
    return cls(**kwargs)


def _join(loc: str, key: Any) -> str:
    return f"{loc}.{key}" if loc else str(key)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(map(str, value))
    if isinstance(value, tuple):
        return str(list(value))
    return repr(value) if isinstance(value, str) else str(value)


# --------------------------------------------------------------------------- raw data


def to_dict(obj: Any) -> Any:
    """Plain-types form of a recipe (tuples -> lists), for YAML, JSON and checkpoints."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def _merge(base: Any, over: Any) -> Any:
    """Deep-merge mapping ``over`` into ``base``; lists and scalars replace."""
    if isinstance(base, dict) and isinstance(over, Mapping):
        out = dict(base)
        for k, v in over.items():
            k = str(k) if not isinstance(k, str) else k
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over


def parse_override(text: str) -> tuple[str, Any]:
    """``"stages.2.lr=0.01"`` -> ``("stages.2.lr", 0.01)``; the value is read as YAML."""
    if "=" not in text:
        raise RecipeError(f"--set {text}: expected dotted.key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise RecipeError(f"--set {text}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    except RecursionError:
        parsed = None
        depth = MAX_RECIPE_DEPTH + 1  # too deep for PyYAML's recursive reader
    else:
        depth = _depth(parsed)
    if depth > MAX_RECIPE_DEPTH:
        raise RecipeError(f"--set {key}: value nested deeper than a recipe may be ({MAX_RECIPE_DEPTH} levels)")
    return key, parsed


#: Caps of a recipe file: its size and how deeply its YAML may nest (the deepest key of a
#: real recipe, train.stages.N.augment.rotation, is 5 levels down).
MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_DEPTH = 32


def _depth(tree: Any) -> int:
    """How deeply ``tree`` nests mappings and lists (iterative: no recursion limit)."""
    deepest, todo = 0, [(tree, 0)]
    while todo:
        node, level = todo.pop()
        deepest = max(deepest, level)
        if level > MAX_RECIPE_DEPTH:
            break
        if isinstance(node, Mapping):
            todo.extend((v, level + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            todo.extend((v, level + 1) for v in node)
    return deepest


def _apply_override(raw: dict, key: str, value: Any) -> str | None:
    """Set ``raw[dotted key] = value`` in place; return a problem message or None."""
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or not int(part) < len(node):
                return f"--set {key}: {where}: no list item {part} (the list has {len(node)})"
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if not isinstance(node, dict):
            return f"--set {key}: {'.'.join(parts[:i])} is not a mapping"
        if last:
            node[part] = value
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
    return None


def resolve_recipe_path(name: str | os.PathLike) -> Path:
    """A path to a YAML file, or the name of a shipped recipe (``paper``, ``demo``...)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (RECIPES_DIR / f"{name}.yaml", RECIPES_DIR / str(name)):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
    raise RecipeError(f"{name}: no such recipe file" + (f" (shipped recipes: {', '.join(shipped)})" if shipped else ""))


#: Keys of earlier fertool versions: what became of them.  In a recipe file or an
#: override they are an error that says so; in a recipe stored in a checkpoint or run
#: folder (``stored=True``) they are dropped, so old results stay readable.
REMOVED_KEYS = {
    "train.num_workers": "removed: it had no effect (batches are read in the training process)",
    "train.amp": "replaced by train.precision: fp32 | tf32 | bf16 (amp: true was bf16 autocast on CUDA)",
}


def _removed_keys(raw: Mapping, keys: Sequence[str], *, drop: bool) -> list[str]:
    """Problems for the :data:`REMOVED_KEYS` present in ``raw`` (or drop them in place)."""
    problems = []
    for dotted in keys:
        section, _, key = dotted.partition(".")
        node = raw.get(section)
        if isinstance(node, dict) and key in node:
            if drop:
                del node[key]
            else:
                problems.append(f"{dotted}: {REMOVED_KEYS[dotted]}")
    return problems


def load_recipe(
    source: str | os.PathLike | Mapping | None = None, overrides: Sequence[str] = (), *, stored: bool = False
) -> Recipe:
    """Load and validate a recipe.

    ``source`` is a YAML path, a shipped recipe name, an already-parsed mapping (e.g.
    the recipe stored in a checkpoint, with ``stored=True``), or None for the built-in
    defaults (the paper).  ``overrides`` are ``dotted.key=value`` strings.  Every problem
    is collected and raised together as one :class:`RecipeError`.
    """
    label = "recipe"
    raw_file: Any = {}
    if isinstance(source, Mapping):
        raw_file = dict(source)
        label = "recipe"
    elif source is not None:
        path = resolve_recipe_path(source)
        label = str(source) if Path(source).is_file() else str(path)
        try:
            text = path.read_text(encoding="utf-8")
            if len(text) > MAX_RECIPE_BYTES:
                raise RecipeError(
                    f"{label}: {len(text):,} characters, more than the {MAX_RECIPE_BYTES:,} a recipe may have"
                )
            raw_file = yaml.safe_load(text)
        except RecursionError:
            raise RecipeError(f"{label}: nested deeper than a recipe may be ({MAX_RECIPE_DEPTH} levels)") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f"line {mark.line + 1}: " if mark is not None else ""
            raise RecipeError(f"{label}: {line}invalid YAML ({getattr(exc, 'problem', exc)})") from None
        except OSError as exc:
            raise RecipeError(f"{label}: cannot read ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise RecipeError(
                f"{label}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                "save the recipe as UTF-8"
            ) from None
        if raw_file is None:
            raw_file = {}
        if _depth(raw_file) > MAX_RECIPE_DEPTH:
            raise RecipeError(f"{label}: nested deeper than a recipe may be ({MAX_RECIPE_DEPTH} levels)")
        if not isinstance(raw_file, Mapping):
            raise RecipeError(f"{label}: the top level must be a mapping of sections, got {type(raw_file).__name__}")
    raw_file = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw_file.items()}
    problems = _removed_keys(raw_file, list(REMOVED_KEYS), drop=stored)
    # Unknown top-level sections are reported before merging so that the hint is precise.
    raw = _merge(to_dict(Recipe()), raw_file)
    for text in overrides:
        key, value = parse_override(text)
        if key in REMOVED_KEYS:
            problems.append(f"--set {key}: {REMOVED_KEYS[key]}")
            continue
        problem = _apply_override(raw, key, value)
        if problem:
            problems.append(problem)
    recipe = _build(Recipe, raw, "", problems)
    if not problems:
        problems.extend(_cross_checks(recipe))
    if problems:
        raise RecipeError([f"{label}: {p}" for p in problems])
    return recipe


def _cross_checks(recipe: Recipe) -> list[str]:
    """Checks that involve more than one field."""
    problems = []
    m = recipe.model
    if len(m.controller_init) != len(m.lhc) and m.lhc:
        problems.append(
            f"model.controller_init: needs one value per LHC module ({len(m.lhc)}), got {len(m.controller_init)}"
        )
    if recipe.tta.preset not in recipe.tta.presets:
        problems.append(f"tta.preset: unknown preset {recipe.tta.preset!r} (known: {', '.join(recipe.tta.presets)})")
    return problems


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write the resolved recipe as YAML (atomically) next to a command's outputs."""
    from .files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(dump_recipe(recipe), encoding="utf-8")


#: First line of the recipe.yaml fertool keeps at the top of a run folder.
RUN_RECIPE_HEADER = "# fertool: the resolved recipe of this run folder (rewritten by train and pipeline)\n"


def save_run_recipe(recipe: Recipe, path: str | os.PathLike) -> bool:
    """Write ``recipe`` to a run folder's ``recipe.yaml`` unless that file is a user's own.

    The file is fertool's when it starts with :data:`RUN_RECIPE_HEADER`, or (written by an
    older fertool) holds a complete resolved recipe; any other file (a user's recipe, the
    ``-r`` file itself) is left as it is and False returned.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        try:
            text = path.read_text(encoding="utf-8")
            ours = text.startswith(RUN_RECIPE_HEADER) or (
                path.is_file()
                and not path.is_symlink()
                and yaml.safe_load(text) == to_dict(load_recipe(path, stored=True))
            )
        except (OSError, ValueError, yaml.YAMLError, FertoolError, RecursionError):
            ours = False
        if not ours:
            return False
    from .files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(RUN_RECIPE_HEADER + dump_recipe(recipe), encoding="utf-8")
    return True


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------- resuming

#: Keys a resumed stage may change: they do not alter what the stage computes from its
#: ``last.pt`` (where the data lives, how it is batched for validation, the start of a
#: stage 1 that has started already, which checkpoints a finished stage keeps).
#: ``max_epochs`` may change too, but not below the epochs already done.  Accepted
#: changes are recorded in the stage's summary warnings.
RESUME_SAFE = (
    "data.csv",
    "data.images",
    "model.pretrained",
    "train.eval_batch_size",
    "train.keep",
    "train.stages.{stage}.max_epochs",
    "train.log",
    "train.log_every",
    "train.mlflow_uri",
    "train.mlflow_experiment",
)
#: Sections that shape a stage's training (the other stages, tta, sample, ablate and
#: pipeline do not).
_STAGE_SECTIONS = ("prepare", "data", "model", "train")


def resume_changes(
    saved: Mapping[str, Any], current: Recipe, stage: str, *, epochs_done: int
) -> tuple[list[str], list[str]]:
    """How ``current`` differs from the recipe a stage was started with (``saved``, plain dict).

    Returns ``(refused, accepted)``, each a list of ``key: old -> new``: ``accepted`` are
    the :data:`RESUME_SAFE` changes, ``refused`` every other change that shapes stage
    ``stage``.  Keys ``saved`` lacks (an older fertool wrote it) count as their defaults.
    """
    safe = {key.format(stage=stage) for key in RESUME_SAFE}
    saved = {k: dict(v) if isinstance(v, Mapping) else v for k, v in saved.items()}
    _removed_keys(saved, list(REMOVED_KEYS), drop=True)  # keys fertool no longer has
    saved = _merge(to_dict(Recipe()), saved)  # keys added to fertool since then take their defaults
    old, new = _flat(_stage_view(saved, stage)), _flat(_stage_view(to_dict(current), stage))
    refused, accepted = [], []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key, "(absent)"), new.get(key, "(absent)")
        if before == after:
            continue
        change = f"{key}: {_show_plain(before)} -> {_show_plain(after)}"
        if key == f"train.stages.{stage}.max_epochs" and isinstance(after, int) and after < epochs_done:
            refused.append(f"{change} ({epochs_done} epochs already trained)")
        elif key in safe:
            accepted.append(change)
        else:
            refused.append(change)
    return refused, accepted


def _stage_view(raw: Mapping[str, Any], stage: str) -> dict:
    view = {name: raw.get(name) for name in _STAGE_SECTIONS}
    train = dict(view["train"] or {})
    stages = train.pop("stages", None) or {}
    train["stages"] = {stage: stages.get(stage)}
    view["train"] = train
    return view


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [{"c": 1}]}}`` -> ``{"a.b.0.c": 1}`` (lists of plain values stay whole)."""
    if isinstance(tree, (list, tuple)) and any(isinstance(v, Mapping) for v in tree):
        tree = {str(i): v for i, v in enumerate(tree)}
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _show_plain(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) or value == "(absent)" else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
