"""Rebuild the reference networks' weights from ``full_network.json`` (reference README §4).

The formula and the Keras -> PyTorch layouts come from the fixture's documentation; the
key mapping to fertool's module names is written out here independently of the library.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import torch

_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def rebuild(entry: dict, *, quantised: bool = False, steps: int = 16) -> np.ndarray:
    """One tensor in its Keras layout (float32); ``quantised``: z rounded to 1/``steps``
    (1/16 for the Keras file of README §6, 1/4 for the TensorFlow checkpoints of §7)."""
    seed = zlib.crc32(entry["key"].encode("utf-8"))
    assert seed == entry["seed"]
    z = np.random.default_rng(seed).standard_normal(size=tuple(entry["shape"]))
    if entry["dist"] == "abs_normal":
        z = np.abs(z)
    if quantised:
        z = np.round(steps * z) / steps
    return (entry["offset"] + entry["scale"] * z).astype(np.float32)


def torch_key(entry: dict) -> str:
    """fertool state-dict key of a non-LHC entry."""
    block, layer, param = entry["block"], entry["layer"], entry["param"]
    if block == "stem":
        return "stem.conv0.weight" if layer == "conv0" else f"stem.{layer}.{_BN[param]}"
    if block.startswith("stage"):
        layer = "sc" if layer == "conv_shortcut" else layer
        return f"units.{block}.{layer}." + ("weight" if param == "kernel" else _BN[param])
    if block == "final":
        return f"final_bn.{_BN[param]}"
    if block == "head":
        return f"head.{layer}." + ("weight" if param == "kernel" else "bias")
    raise KeyError(entry["key"])


def to_torch_layout(w: np.ndarray, param: str) -> torch.Tensor:
    t = torch.from_numpy(w)
    if param == "kernel":
        t = t.permute(3, 2, 0, 1) if t.dim() == 4 else t.T  # HWIO -> OIHW, (in, out) -> (out, in)
    return t.contiguous()


def load_json(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)["tensors"]


def reference_state_dict(
    tensors: list[dict], model: str, *, quantised: bool = False, steps: int = 16, blocks_without: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """State dict of the ``model`` ('backbone' or 'lhc') in fertool key names."""
    sd: dict[str, torch.Tensor] = {}
    qk: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for e in tensors:
        if model not in e["in_models"] or e["block"] in blocks_without:
            continue
        w = rebuild(e, quantised=quantised, steps=steps)
        if e["block"].startswith("lhc"):
            name, layer, param = e["block"], e["layer"], e["param"]
            if layer.startswith("qk["):
                qk.setdefault((name, param), {})[int(layer[3:-1])] = torch.from_numpy(w)
            else:
                suffix = "weight" if param == "kernel" else "bias"
                sd[f"lhc.{name}.{layer}.{suffix}"] = to_torch_layout(w, param)
            continue
        sd[torch_key(e)] = to_torch_layout(w, e["param"])
    for (name, param), per_head in qk.items():
        # one (heads, r, d) / (heads, d) tensor, head i = Keras Wqk[i]
        sd[f"lhc.{name}.qk_" + ("weight" if param == "kernel" else "bias")] = torch.stack(
            [per_head[i] for i in range(len(per_head))]
        )
    return sd
