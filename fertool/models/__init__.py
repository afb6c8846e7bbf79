"""Whole networks behind a small registry: ``build_model(arch, **arch_args)``.

Registered architectures (``arch_args`` are plain types so they live in checkpoints):

* ``resnet34v2`` — the paper's pre-activation ResNet34 + 4096-1024-C head (docs/protocol.md §2);
* ``lhc_net`` — the same with LHC modules (default: Table 2, docs/protocol.md §3);
* ``lhc_netc`` — LHC-Net with one controller scalar per module (docs/protocol.md §3, LHC-NetC);
* ``resnet34_tv`` — torchvision's ResNet34 (v1) trunk + the same head; ``lhc`` and
  ``controller_init`` optional.

Every model maps float32 (B, 3, S, S) raw 0..255 pixels to logits (B, num_classes) and
offers ``forward_features``, ``forward_head``, ``lhc_modules()`` and ``reset_lhc()``.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..errors import ModelError
from ..protocol import KIND_ARCH, MODEL_KINDS
from .lhc_net import freeze_except_controllers, lhc_net, lhc_netc
from .resnet import FERResNet, ResNet34v2, TorchvisionResNet34

__all__ = [
    "MODELS",
    "build_model",
    "arch_from_recipe",
    "freeze_except_controllers",
    "FERResNet",
    "ResNet34v2",
    "TorchvisionResNet34",
]


def resnet34v2(**arch_args: Any) -> ResNet34v2:
    if arch_args.get("lhc") or arch_args.get("controller_init"):
        raise ModelError("arch 'resnet34v2' is the plain backbone: use 'lhc_net' or 'lhc_netc' for LHC modules")
    arch_args.pop("lhc", None)
    arch_args.pop("controller_init", None)
    return ResNet34v2(**arch_args)


def resnet34_tv(**arch_args: Any) -> TorchvisionResNet34:
    return TorchvisionResNet34(**arch_args)


#: name -> factory(**arch_args) -> nn.Module
MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet34v2": resnet34v2,
    "lhc_net": lhc_net,
    "lhc_netc": lhc_netc,
    "resnet34_tv": resnet34_tv,
}


def build_model(arch: str, **arch_args: Any) -> nn.Module:
    """Build a registered architecture; unknown names or arguments are a :class:`ModelError`."""
    if arch not in MODELS:
        raise ModelError(f"unknown architecture {arch!r} (known: {', '.join(MODELS)})")
    try:
        return MODELS[arch](**arch_args)
    except TypeError as exc:
        raise ModelError(f"architecture {arch!r}: {exc}") from None


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
            {"after": m.after, "heads": int(m.heads), "dim": int(m.dim), "pool": int(m.pool),
             "kernel": int(m.kernel), "scale": float(m.scale)}
            for m in model_cfg.lhc
        ]
    if kind == "controller":
        args["controller_init"] = [float(w) for w in model_cfg.controller_init]
    if model_cfg.backbone == "resnet34_tv":
        return "resnet34_tv", args
    if model_cfg.backbone != "resnet34v2":
        raise ModelError(f"model.backbone: unknown backbone {model_cfg.backbone!r} (known: resnet34v2, resnet34_tv)")
    return KIND_ARCH[kind], args
