"""Import the LHC-Net authors' TensorFlow checkpoints as fertool LHC-Net / LHC-NetC checkpoints.

The authors publish their trained models as the files ``model.save_weights(prefix)`` writes
for a subclassed Keras model (``LHC_Net.index`` + ``LHC_Net.data-00000-of-00001``, and the
same for ``LHC_Net_Controller``).  The tensor names are object-graph paths that follow the
attribute names of the authors' ``LHC_ResNet34`` class::

    conv1/bn1|conv1|bn2/...          the stem: bn_data (no gamma), the 7x7 conv0, bn0
    conv1/LHC_Module/...             LHC module 1 (after the stem)
    conv{S}_{u}/bn1|conv1|bn2|conv2|convId/...
                                     unit u of stage S-1 (convId = the 1x1 shortcut)
    conv{S}_{u}/LHC_Module/Wqk/<i>|Wp|Wv/kernel|bias
                                     the LHC module after that unit (Wqk/<i>: head i)
    bn/..., fc1|fc2|fc3/kernel|bias  final BatchNorm and the dense head
    controller{k}/w                  LHC-NetC: the controller scalar of module k

each followed by ``/.ATTRIBUTES/VARIABLE_VALUE``.  Optimizer state is skipped in both of its
layouts (TF 2.4's ``<var>/.OPTIMIZER_SLOT/optimizer/m|v`` and ``optimizer/...``, today's
``optimizer/_variables/N``).  Controllers in the names mean LHC-NetC, otherwise LHC-Net;
the model is built from the paper's recipe (Table 2) and every one of its tensors must be
in the file exactly once with its expected shape, else the import is refused with the
missing, unexpected and mis-shaped names.  Layouts are converted as for Keras .h5 files
(:func:`fertool.models.keras.keras_to_torch`); a per-head ``Wqk`` kernel (r, d) is already
fertool's layout of ``qk_weight[i]``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import CLASS_NAMES
from ..checkpoint import make_checkpoint
from ..errors import CheckpointError, ModelError
from ..progress import Progress
from ..recipe import load_recipe, to_dict
from . import arch_from_recipe, build_model
from .keras import file_provenance, keras_shape, keras_to_torch, keras_to_torch_key
from .tf_bundle import TensorBundle, latest_prefix

__all__ = ["import_tf_checkpoint", "tf_prefix", "torch_target", "is_model_tensor"]

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_UNIT = re.compile(r"^conv([2-5])_(\d+)$")
_STEM_LAYERS = {"bn1": "bn_data", "conv1": "conv0", "bn2": "bn0"}  # Keras layer names
_UNIT_LAYERS = {"bn1": "bn1", "conv1": "conv1", "bn2": "bn2", "conv2": "conv2", "convId": "sc"}
_DT_FLOAT = 1


@dataclass(frozen=True)
class Target:
    """Where a checkpoint tensor goes: a state-dict key, and the head for per-head ``Wqk``."""

    key: str
    head: int | None = None

    def __str__(self) -> str:
        return self.key if self.head is None else f"{self.key}[{self.head}]"


def is_model_tensor(name: str) -> bool:
    """False for optimizer state (both layouts) and bundle bookkeeping."""
    return not (
        name.startswith(("optimizer/", "save_counter/", "_CHECKPOINTABLE_OBJECT_GRAPH")) or "/.OPTIMIZER_SLOT/" in name
    )


def _position(obj: str) -> str | None:
    """fertool position of an authors' block: ``conv1`` -> stem, ``conv{S}_{u}`` -> stage{S-1}_unit{u}."""
    if obj == "conv1":
        return "stem"
    m = _UNIT.match(obj)
    return f"stage{int(m[1]) - 1}_unit{int(m[2])}" if m else None


def torch_target(name: str, lhc_after: Mapping[str, str]) -> Target | None:
    """The fertool tensor of an authors' checkpoint name (``lhc_after``: position -> LHC module)."""
    parts = name.removesuffix(_SUFFIX).split("/")
    if len(parts) == 2 and re.fullmatch(r"fc\d", parts[0]) and parts[1] in ("kernel", "bias"):
        return Target(f"head.{parts[0]}.{'weight' if parts[1] == 'kernel' else 'bias'}")
    m = re.fullmatch(r"controller(\d)", parts[0])
    if m and parts[1:] == ["w"]:
        return Target(f"lhc.lhc{m[1]}.controller")
    if len(parts) == 2 and parts[0] == "bn":
        key = keras_to_torch_key("bn1", parts[1])  # Keras' top-level bn1 is the final BN
        return Target(key) if key else None
    position = _position(parts[0])
    if position is None or len(parts) < 3:
        return None
    if parts[1] == "LHC_Module":
        module = lhc_after.get(position)
        rest, param = parts[2:-1], parts[-1]
        if module is None or param not in ("kernel", "bias"):
            return None
        suffix = "weight" if param == "kernel" else "bias"
        if len(rest) == 2 and rest[0] == "Wqk" and rest[1].isdigit():
            return Target(f"lhc.{module}.qk_{suffix}", head=int(rest[1]))
        if rest in (["Wp"], ["Wv"]):
            return Target(f"lhc.{module}.{rest[0][1]}.{suffix}")
        return None
    if len(parts) != 3:
        return None
    layers = _STEM_LAYERS if position == "stem" else _UNIT_LAYERS
    if parts[1] not in layers:
        return None
    layer = layers[parts[1]] if position == "stem" else f"{position}_{layers[parts[1]]}"
    key = keras_to_torch_key(layer, parts[2])
    return Target(key) if key else None


def tf_prefix(source: str | os.PathLike) -> Path | None:
    """The bundle prefix ``source`` names, or None if it is not a TensorFlow checkpoint.

    Accepted: the prefix itself (``.../LHC_Net``), its ``.index`` or a ``.data-*`` shard, the
    folder holding the ``checkpoint`` text file (its ``model_checkpoint_path``), that file, or a
    folder with exactly one ``.index`` file.
    """
    path = Path(source)
    if path.is_dir():
        if (path / "checkpoint").is_file():
            return latest_prefix(path)
        indexes = sorted(path.glob("*.index"))
        return indexes[0].with_suffix("") if len(indexes) == 1 else None
    if path.name == "checkpoint" and path.is_file():
        return latest_prefix(path.parent)
    if path.suffix == ".index":
        return path.with_suffix("")
    m = re.fullmatch(r"(.+)\.data-\d{5}-of-\d{5}", path.name)
    if m:
        return path.with_name(m[1])
    if Path(f"{path}.index").is_file():
        return path
    return None


def _expected(target: Mapping[str, torch.Tensor]) -> dict[Target, tuple[int, ...]]:
    """Every tensor the model needs from a checkpoint, with its shape in the checkpoint."""
    out: dict[Target, tuple[int, ...]] = {}
    for key, value in target.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith((".qk_weight", ".qk_bias")):
            for i in range(value.shape[0]):
                out[Target(key, i)] = tuple(value.shape[1:])
        else:
            out[Target(key)] = keras_shape(tuple(value.shape))
    return out


def _listing(what: str, items: list[str]) -> str:
    return f"{what} {len(items)} ({', '.join(items[:5])}{', ...' if len(items) > 5 else ''})"


def _match(
    bundle: TensorBundle, names: list[str], target: Mapping[str, torch.Tensor], lhc_after: Mapping[str, str], label: str
) -> dict[str, Target]:
    """checkpoint name -> fertool tensor for every model tensor, each used once with its shape.

    Refuses, listing the names, when a tensor is missing, unexpected, mis-shaped or not float32.
    """
    expected = _expected(target)
    plan: dict[str, Target] = {}
    seen: set[Target] = set()
    extra, misshaped, wrong_dtype = [], [], []
    for name in names:
        t = torch_target(name, lhc_after)
        entry = bundle.entries[name]
        short = name.removesuffix(_SUFFIX)
        if t is None or t not in expected or t in seen:
            extra.append(short)
            continue
        seen.add(t)
        if entry.shape != expected[t]:
            misshaped.append(f"{short} {entry.shape} != {expected[t]}")
        elif entry.dtype != _DT_FLOAT:
            wrong_dtype.append(f"{short} (TensorFlow dtype {entry.dtype})")
        else:
            plan[name] = t
    missing = [str(t) for t in expected if t not in seen]
    if extra or misshaped or missing or wrong_dtype:
        parts = [
            _listing(what, items)
            for what, items in (
                ("missing model tensors:", missing),
                ("unexpected checkpoint tensors:", extra),
                ("mis-shaped:", misshaped),
                ("not float32:", wrong_dtype),
            )
            if items
        ]
        raise ModelError(f"{bundle.index_path}: not the authors' {label} (Table 2): {'; '.join(parts)}")
    return plan


def import_tf_checkpoint(
    source: str | os.PathLike,
    *,
    progress: Progress | None = None,
) -> dict:
    """A fertool ``lhc_net`` / ``lhc_netc`` checkpoint holding an authors' TensorFlow checkpoint.

    ``source`` is anything :func:`tf_prefix` accepts.  The result carries the paper's recipe
    (Table 2), the FER2013 class names, and the source files' names and sha256 in
    ``extra["source_files"]``.  ``progress(done, total)`` is called as tensors are read.
    """
    prefix = tf_prefix(source)
    if prefix is None:
        raise CheckpointError(f"{source}: not a TensorFlow checkpoint (no .index file or 'checkpoint' file)")
    with TensorBundle(prefix) as bundle:
        names = [n for n in bundle.entries if is_model_tensor(n)]
        controllers = any(re.match(r"controller\d/w/", n) for n in names)
        if not any("/LHC_Module/" in n for n in names):
            raise ModelError(
                f"{bundle.index_path}: no LHC_Module tensors: not a checkpoint of the authors' LHC-Net "
                f"({len(names)} model tensors, e.g. {', '.join(names[:3])})"
            )
        kind = "controller" if controllers else "lhc"
        rcp = load_recipe("paper")
        arch, args = arch_from_recipe(rcp.model, kind)
        with torch.device("meta"):  # shapes and names only: no memory, no initialisation
            model = build_model(arch, **args)
        target = model.state_dict()

        plan = _match(bundle, names, target, model.lhc_after, "LHC-NetC" if controllers else "LHC-Net")

        # per-head Wqk kernels are stacked into one tensor; the BN counters stay 0
        state = {
            k: torch.zeros(v.shape, dtype=v.dtype)
            for k, v in target.items()
            if k.endswith(("num_batches_tracked", ".qk_weight", ".qk_bias"))
        }
        for done, (name, t) in enumerate(plan.items(), start=1):
            arr = bundle.read(name)
            if t.head is None:
                state[t.key] = keras_to_torch(arr)
            else:
                state[t.key][t.head] = torch.from_numpy(arr)
            if progress is not None:
                progress(done, len(plan))
        sources = file_provenance([bundle.index_path, *bundle.data_paths])
        skipped = len(bundle.entries) - len(names)

    return make_checkpoint(
        arch=arch,
        arch_args=args,
        state_dict={k: state[k] for k in target},
        recipe=to_dict(rcp),
        class_names=CLASS_NAMES,
        lineage=[{"path": str(prefix), "arch": f"tensorflow:{prefix.name}", "stage": None, "epoch": None}],
        extra={"tf_source": str(prefix), "source_files": sources, "tensors": len(plan), "skipped_entries": skipped},
    )
