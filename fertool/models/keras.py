"""Import classification_models ResNet34 Keras weights (.h5 / .h5.gz) as a fertool checkpoint.

The paper started from the ImageNet weights of the ``classification_models`` ResNet34
(``image-classifiers``); this reads such a file with h5py alone (no TensorFlow) and maps
every tensor by its Keras layer name (docs/protocol.md §2):

* no-top files: one root group per layer, datasets at ``/<layer>/<layer>/<param>:0``;
* whole-model files (ResNet34_Train.py): the backbone nested in one group (``/model``,
  ``/model_1``...), datasets at ``/model/<layer>/<param>:0``, and the head ``dense*`` layers
  at the root.  A head whose output size is ``num_classes`` is imported (its hidden sizes
  become ``hidden``); another head (e.g. ImageNet's 1000 classes) is left out and the
  checkpoint gets a freshly initialised one.

Layouts: conv kernels (kh, kw, in, out) -> (out, in, kh, kw); dense kernels (in, out) ->
(out, in); ``bn_data`` has no gamma.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import make_checkpoint
from ..errors import ModelError, printable
from ..files import sha256_file
from . import build_model

__all__ = [
    "import_keras",
    "read_keras_weights",
    "keras_to_torch_key",
    "keras_to_torch",
    "keras_shape",
    "file_provenance",
]

_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_UNIT = re.compile(r"^(stage\d+_unit\d+)_(bn1|bn2|conv1|conv2|sc)$")


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def keras_to_torch(arr: np.ndarray) -> torch.Tensor:
    """A Keras kernel in PyTorch layout: conv (kh, kw, in, out) -> (out, in, kh, kw), dense
    (in, out) -> (out, in); vectors and scalars unchanged.  A new contiguous tensor."""
    t = torch.from_numpy(np.asarray(arr, dtype=np.float32))
    if t.dim() == 4:
        t = t.permute(3, 2, 0, 1)
    elif t.dim() == 2:
        t = t.T
    return t.contiguous()


def keras_shape(torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The Keras shape of a PyTorch weight of ``torch_shape`` (the inverse of :func:`keras_to_torch`)."""
    shape = tuple(int(d) for d in torch_shape)
    if len(shape) == 4:
        return (shape[2], shape[3], shape[1], shape[0])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def file_provenance(paths) -> list[dict]:
    """``[{"name", "size", "sha256"}]`` of the source files a checkpoint was imported from."""
    return [{"name": Path(p).name, "size": Path(p).stat().st_size, "sha256": sha256_file(p)} for p in paths]


def keras_to_torch_key(layer: str, param: str) -> str | None:
    """fertool ``resnet34v2`` state-dict key of a Keras backbone weight, or None if unknown."""
    if layer in ("bn_data", "bn0"):
        if layer == "bn_data" and param == "gamma":
            return None  # classification_models' bn_data has scale=False
        return f"stem.{layer}.{_BN[param]}" if param in _BN else None
    if layer == "conv0":
        return "stem.conv0.weight" if param == "kernel" else None
    if layer == "bn1":  # the top-level final BN, not stageS_unitU_bn1
        return f"final_bn.{_BN[param]}" if param in _BN else None
    m = _UNIT.match(layer)
    if m:
        unit, sub = m.groups()
        if sub.startswith("bn"):
            return f"units.{unit}.{sub}.{_BN[param]}" if param in _BN else None
        return f"units.{unit}.{sub}.weight" if param == "kernel" else None
    return None


#: Caps checked before anything is allocated: the decompressed size of a ``.h5.gz`` and the
#: numbers in one weight array (ResNet34's largest has 2.4 million; all of them 21 million).
MAX_GZIP_BYTES = 1 << 30
MAX_WEIGHT_VALUES = 1 << 26


def _open_h5(path: Path):
    import h5py

    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        if magic == b"\x1f\x8b":
            with gzip.open(path, "rb") as fh:
                data = fh.read(MAX_GZIP_BYTES + 1)
            if len(data) > MAX_GZIP_BYTES:
                raise ModelError(
                    f"{printable(path)}: decompresses to more than {MAX_GZIP_BYTES:,} bytes, "
                    "the most a Keras weight file is read into memory"
                )
            return h5py.File(io.BytesIO(data), "r")
        return h5py.File(path, "r")
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ModelError(
            f"{printable(path)}: not a readable Keras HDF5 weight file ({printable(str(exc).splitlines()[0][:120])})"
        ) from None


def check_self_contained(f, path: Path) -> None:
    """Refuse an HDF5 file that would make h5py read anything but ``path`` itself.

    Soft links (loops included) and external links anywhere, datasets with external
    storage and virtual datasets are refused by name: an import reads the file given,
    never one it points at (``/etc/hostname`` would end up in a shared checkpoint).
    """
    import h5py

    problems: list[str] = []

    def visit(name: str, link) -> None:
        if len(problems) >= 5:
            return
        where = "/" + name
        if isinstance(link, h5py.SoftLink):
            problems.append(f"{where} is a soft link (to {link.path})")
        elif isinstance(link, h5py.ExternalLink):
            problems.append(f"{where} is an external link (to {link.filename}:{link.path})")
        else:
            obj = f.get(name, getlink=False)
            if isinstance(obj, h5py.Dataset):
                if obj.external:
                    problems.append(
                        f"{where} is stored in external file(s) ({', '.join(str(e[0]) for e in obj.external)})"
                    )
                elif obj.is_virtual:
                    problems.append(f"{where} is a virtual dataset (its data lives in other files)")

    f.visititems_links(visit)
    if problems:
        raise ModelError(printable(f"{path}: refusing an HDF5 file that reads other files: " + "; ".join(problems)))


def _names(value: Any, what: str) -> list[str]:
    """An attribute that must be a list of names (``layer_names``, ``weight_names``)."""
    if isinstance(value, (str, bytes)) or np.ndim(value) != 1:
        raise ModelError(f"{what} is not a list of names")
    return [_text(v) for v in value]


def _layer_weights(group) -> list[tuple[str, str, np.ndarray]]:
    """(layer, param, array) of every weight a Keras group lists in ``weight_names``."""
    import h5py

    out = []
    for wname in _names(group.attrs.get("weight_names", []), f"weight_names of group {group.name!r}"):
        if wname not in group:
            raise ModelError(f"weight {wname!r} listed in group {group.name!r} is missing from the file")
        ds = group[wname]
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiub":
            raise ModelError(f"weight {ds.name!r} is not a numeric array")
        if ds.size > MAX_WEIGHT_VALUES:
            raise ModelError(
                f"weight {ds.name!r} has {ds.size:,} values, more than the {MAX_WEIGHT_VALUES:,} one array may hold"
            )
        layer, _, param = wname.rpartition("/")
        layer = layer.rsplit("/", 1)[-1]
        param = param.split(":")[0]
        arr = np.asarray(ds, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ModelError(f"weight {ds.name!r} holds NaN or infinite values")
        out.append((layer, param, arr))
    return out


def read_keras_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Read a Keras 2 h5 weight file: ``{"backbone": {(layer, param): array}, "head": [...]}``.

    ``head`` lists the root dense layers as ``(layer, kernel, bias)`` in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    with _open_h5(path) as f:
        try:
            return _read_open(f, path)
        except ModelError as exc:
            text = str(exc)
            raise ModelError(text if text.startswith(printable(path)) else f"{printable(path)}: {text}") from None
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:  # h5py on a malformed file
            raise ModelError(
                f"{printable(path)}: malformed Keras HDF5 file "
                f"({printable(str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__)})"
            ) from None


def _read_open(f, path: Path) -> dict[str, Any]:
    check_self_contained(f, path)
    names = f.attrs.get("layer_names")
    if names is None:
        raise ModelError(f"{path}: not a Keras weight file (no 'layer_names' attribute)")
    names = _names(names, "layer_names")
    backbone: dict[tuple[str, str], np.ndarray] = {}
    head: list[tuple[str, np.ndarray, np.ndarray]] = []
    nested = None
    for name in names:
        if name not in f:
            raise ModelError(f"{path}: layer {name!r} is listed in layer_names but has no group")
        weights = _layer_weights(f[name])
        if not weights:
            continue
        inner = {w[0] for w in weights}
        params = {w[1]: w[2] for w in weights}
        if "bn_data" in inner and name != "bn_data":  # the nested backbone model
            if nested is not None:
                raise ModelError(f"{path}: two nested backbone models ({nested}, {name})")
            nested = name
            for layer, param, arr in weights:
                backbone[(layer, param)] = arr
        elif set(params) == {"kernel", "bias"} and params["kernel"].ndim == 2:
            head.append((name, params["kernel"], params["bias"]))
        else:
            for layer, param, arr in weights:
                backbone[(layer, param)] = arr
    meta = {"keras_version": _text(f.attrs.get("keras_version", "?")), "nested": nested, "layers": names}
    return {"backbone": backbone, "head": head, "meta": meta}


def import_keras(
    h5_path: str | os.PathLike,
    *,
    input_size: int = 224,
    num_classes: int = 7,
    seed: int = 0,
) -> dict:
    """A ``resnet34v2`` fertool checkpoint holding the Keras file's weights (docs/protocol.md §2).

    Every backbone tensor of the model must be in the file and every backbone weight of
    the file must be used, with the right shape; otherwise the error lists the missing or
    unexpected names (a ResNet18/50 or another network is refused this way).  The head is
    imported when it ends in ``num_classes`` outputs, else initialised from ``seed``.
    """
    path = Path(h5_path)
    data = read_keras_weights(path)
    backbone = data["backbone"]
    if not any(layer == "bn_data" for layer, _ in backbone):
        raise ModelError(
            f"{path}: not a classification_models ResNet weight file (no 'bn_data' layer; "
            f"layers: {', '.join(data['meta']['layers'][:6])}...)"
        )

    # Head: a consistent 512 -> ... -> num_classes dense chain is imported.
    head = data["head"]
    hidden: list[int] = [4096, 1024]
    head_state: dict[str, torch.Tensor] = {}
    head_note = "none in the file: initialised"
    if head:
        sizes = [k.shape for _, k, _ in head]
        chain = sizes[0][0] == 512 and all(sizes[i][1] == sizes[i + 1][0] for i in range(len(sizes) - 1))
        if chain and sizes[-1][1] == num_classes:
            hidden = [int(s[1]) for s in sizes[:-1]]
            for i, (_, kernel, bias) in enumerate(head, start=1):
                head_state[f"head.fc{i}.weight"] = keras_to_torch(kernel)
                head_state[f"head.fc{i}.bias"] = keras_to_torch(bias)
            head_note = "imported (" + ", ".join(n for n, _, _ in head) + ")"
        else:
            head_note = (
                f"left out ({', '.join(n for n, _, _ in head)}: "
                f"{' -> '.join(str(s[0]) for s in sizes)} -> {sizes[-1][1]}, "
                f"not 512 -> ... -> {num_classes}): initialised"
            )

    args = {
        "input_size": int(input_size),
        "num_classes": int(num_classes),
        "hidden": hidden,
        "dropout": 0.4,
        "bn_eps": 2e-5,
        "bn_momentum": 0.99,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model("resnet34v2", **args)
    target = model.state_dict()

    state: dict[str, torch.Tensor] = {}
    unexpected = []
    for (layer, param), arr in backbone.items():
        key = keras_to_torch_key(layer, param)
        if key is None or key not in target:
            unexpected.append(f"{layer}/{param}")
            continue
        if tuple(arr.shape) != keras_shape(target[key].shape):
            raise ModelError(
                f"{path}: {layer}/{param} has shape {tuple(arr.shape)}, ResNet34 expects "
                f"{keras_shape(target[key].shape)} (as {key}); not a ResNet34 weight file"
            )
        state[key] = keras_to_torch(arr)
    body = [k for k in target if not k.startswith("head.") and not k.endswith("num_batches_tracked")]
    missing = [k for k in body if k not in state]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing {len(missing)} ResNet34 tensors ({', '.join(missing[:6])}"
                f"{' ...' if len(missing) > 6 else ''})"
            )
        if unexpected:
            parts.append(
                f"unexpected {len(unexpected)} weights ({', '.join(unexpected[:6])}"
                f"{' ...' if len(unexpected) > 6 else ''})"
            )
        raise ModelError(f"{path}: not a classification_models ResNet34 weight file: {'; '.join(parts)}")
    state.update(head_state)
    full = {k: state.get(k, v) for k, v in target.items()}
    return make_checkpoint(
        arch="resnet34v2",
        arch_args=args,
        state_dict=full,
        lineage=[{"path": str(path), "arch": "keras:classification_models.resnet34", "stage": None, "epoch": None}],
        extra={
            "keras_source": str(path),
            "keras_version": data["meta"]["keras_version"],
            "keras_head": head_note,
            "head_seed": int(seed),
            "source_files": file_provenance([path]),
        },
    )
