"""Whole networks behind a registry (:mod:`.registry`): ``build_model(arch, **arch_args)``.

Each backbone registers itself where its class is defined (``@register_backbone``); a new
backbone is one file imported below.  Registered architectures (``arch_args`` are plain
types so they live in checkpoints):

* backbone ``resnet34v2`` — the paper's pre-activation ResNet34 + 4096-1024-C head
  (docs/protocol.md §2); its LHC variants are the archs ``lhc_net`` (LHC modules, Table 2 by
  default, docs/protocol.md §3) and ``lhc_netc`` (one controller scalar per module, LHC-NetC);
* backbone ``resnet34_tv`` — torchvision's ResNet34 (v1) trunk + the same head; one arch
  name, ``lhc`` and ``controller_init`` optional.

Every model maps float32 (B, 3, S, S) raw 0..255 pixels to logits (B, num_classes) and
offers ``forward_features``, ``forward_head``, ``lhc_modules()`` and ``reset_lhc()``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelError
from ..protocol import MODEL_KINDS
from .lhc_net import freeze_except_controllers
from .registry import ARCHS, BACKBONES, arch_title, build_model, register_backbone
from .resnet import FERResNet, ResNet34v2, TorchvisionResNet34  # registers resnet34v2, resnet34_tv

__all__ = [
    "ARCHS",
    "BACKBONES",
    "arch_title",
    "build_model",
    "register_backbone",
    "arch_from_recipe",
    "freeze_except_controllers",
    "FERResNet",
    "ResNet34v2",
    "TorchvisionResNet34",
]


def arch_from_recipe(model_cfg: Any, kind: str) -> tuple[str, dict]:
    """(arch name, arch_args) of the model a recipe's ``model`` section describes.

    ``kind``: ``"backbone"`` (no LHC), ``"lhc"`` (backbone + ``model.lhc``) or
    ``"controller"`` (plus ``model.controller_init``).
    """
    if kind not in MODEL_KINDS:
        raise ModelError(f"model kind must be backbone, lhc or controller, got {kind!r}")
    args: dict[str, Any] = {
        "input_size": int(model_cfg.input_size),
        "num_classes": int(model_cfg.num_classes),
        "hidden": [int(h) for h in model_cfg.hidden],
        "dropout": float(model_cfg.dropout),
        "bn_eps": float(model_cfg.bn_eps),
        "bn_momentum": float(model_cfg.bn_momentum),
        "channels": [int(c) for c in model_cfg.channels],
        "stem_width": int(model_cfg.stem_width),
    }
    if kind != "backbone":
        if not model_cfg.lhc:
            raise ModelError("model.lhc: an LHC model needs at least one module")
        args["lhc"] = [
            {
                "after": m.after,
                "heads": int(m.heads),
                "dim": int(m.dim),
                "pool": int(m.pool),
                "kernel": int(m.kernel),
                "scale": float(m.scale),
            }
            for m in model_cfg.lhc
        ]
    if kind == "controller":
        args["controller_init"] = [float(w) for w in model_cfg.controller_init]
    entry = BACKBONES.get(model_cfg.backbone)
    if entry is None:
        raise ModelError(f"model.backbone: unknown backbone {model_cfg.backbone!r} (known: {', '.join(BACKBONES)})")
    return entry.archs[kind], args
