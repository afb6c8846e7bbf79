"""LHC-Net and LHC-NetC (SPEC §3) and the checkpoint glue that builds them (augment-lhc).

LHC-Net is the ResNet34v2 backbone with LHC modules after named positions (Table 2 by
default); LHC-NetC adds one controller scalar per module, ``out = x + A (1 + tanh(w))``,
trained with everything else frozen (:func:`freeze_except_controllers`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ModelError
from .resnet import FERResNet, ResNet34v2

__all__ = [
    "TABLE2_LHC",
    "TABLE2_CONTROLLER_INIT",
    "lhc_net",
    "lhc_netc",
    "freeze_except_controllers",
    "augment_lhc",
    "augment_lhc_file",
]

#: Table 2 of the paper: placement and hyper-parameters of the five modules.
TABLE2_LHC: tuple[dict, ...] = (
    {"after": "stem", "heads": 8, "dim": 196, "pool": 3, "kernel": 3, "scale": 1.0},
    {"after": "stage1_unit3", "heads": 8, "dim": 196, "pool": 3, "kernel": 3, "scale": 1.0},
    {"after": "stage2_unit4", "heads": 7, "dim": 56, "pool": 3, "kernel": 3, "scale": 1.0},
    {"after": "stage3_unit6", "heads": 7, "dim": 14, "pool": 3, "kernel": 3, "scale": 1.0},
    {"after": "stage4_unit3", "heads": 1, "dim": 25, "pool": 3, "kernel": 3, "scale": 1.0},
)
#: Initial controller values w_i of LHC-NetC.
TABLE2_CONTROLLER_INIT: tuple[float, ...] = (0.0, 0.0, 0.0, -1.0, -0.5)


def lhc_net(*, lhc: Sequence[Mapping[str, Any]] | None = None, controller_init: Any = None, **arch_args: Any) -> ResNet34v2:
    """ResNet34v2 + LHC modules (``lhc``: list of {after, heads, dim, pool, kernel, scale})."""
    if controller_init is not None:
        raise ModelError("arch 'lhc_net' has no controllers: use 'lhc_netc' with controller_init")
    specs = [dict(m) for m in (TABLE2_LHC if lhc is None else lhc)]
    if not specs:
        raise ModelError("model.lhc: an LHC model needs at least one module")
    return ResNet34v2(lhc=specs, **arch_args)


def lhc_netc(
    *, lhc: Sequence[Mapping[str, Any]] | None = None, controller_init: Sequence[float] | None = None, **arch_args: Any
) -> ResNet34v2:
    """LHC-Net with one controller scalar per module (default init (0, 0, 0, -1, -0.5))."""
    specs = [dict(m) for m in (TABLE2_LHC if lhc is None else lhc)]
    if not specs:
        raise ModelError("model.lhc: an LHC model needs at least one module")
    if controller_init is None:
        if len(specs) != len(TABLE2_CONTROLLER_INIT):
            raise ModelError(f"model.controller_init: needs one value per LHC module ({len(specs)})")
        controller_init = TABLE2_CONTROLLER_INIT
    return ResNet34v2(lhc=specs, controller_init=[float(w) for w in controller_init], **arch_args)


def freeze_except_controllers(model: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter except the LHC controller scalars; return those (SPEC §3).

    BatchNorm running statistics are buffers and still update in ``train()`` mode; a
    trainer that wants them fixed (as Keras' frozen layers) keeps the model in ``eval()``.
    """
    controllers = [m.controller for m in model.lhc_modules().values() if m.controller is not None]
    if not controllers:
        raise ModelError("the model has no LHC controllers to train (need an lhc_netc model)")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in controllers:
        p.requires_grad_(True)
    return controllers


# --------------------------------------------------------------------------- augment-lhc

_KNOWN = ("resnet34v2", "lhc_net", "lhc_netc", "resnet34_tv")


def augment_lhc(
    ckpt: Mapping[str, Any],
    *,
    lhc: Sequence[Mapping[str, Any]] | None,
    controller_init: Sequence[float] | None,
    seed: int,
    source_path: str | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> dict:
    """A NEW checkpoint: the model of ``ckpt`` with LHC modules and/or controllers added.

    * backbone (``resnet34v2``, or ``resnet34_tv`` without LHC) -> ``lhc_net``
      (``controller_init`` None) or ``lhc_netc``; ``lhc`` None means Table 2;
    * LHC-Net -> LHC-NetC: ``lhc`` must be None (the trained modules are kept) and
      ``controller_init`` given.

    Every copied tensor is bit-identical; the new LHC modules are initialised by
    ``reset_lhc(seed)`` (same seed -> same weights).  Any missing or unexpected tensor
    other than the ones being added is an error.  ``recipe`` (plain dict) replaces the
    stored recipe when given.
    """
    from ..checkpoint import lineage_entry, make_checkpoint

    where = source_path or "checkpoint"
    arch = ckpt.get("arch")
    if arch not in _KNOWN:
        raise CheckpointError(f"{where}: architecture {arch!r} is not a model fertool knows ({', '.join(_KNOWN)})")
    args = copy.deepcopy(dict(ckpt.get("arch_args") or {}))
    has_lhc = bool(args.get("lhc")) or arch in ("lhc_net", "lhc_netc")
    has_ctrl = args.get("controller_init") is not None or arch == "lhc_netc"

    if has_ctrl:
        raise CheckpointError(f"{where}: already an LHC-NetC model (has LHC modules and controllers); nothing to add")
    if has_lhc:
        if lhc is not None:
            raise CheckpointError(
                f"{where}: already has LHC modules ({arch}); to add controllers, ask for controllers only"
            )
        if controller_init is None:
            raise CheckpointError(f"{where}: already has LHC modules ({arch}) and no controllers were asked for")
        new_arch = "lhc_netc" if arch == "lhc_net" else arch
        if arch == "lhc_net" and not args.get("lhc"):
            args["lhc"] = [dict(m) for m in TABLE2_LHC]
        args["controller_init"] = [float(w) for w in controller_init]
        adding = "controller"
    else:
        args["lhc"] = [dict(m) for m in (TABLE2_LHC if lhc is None else lhc)]
        if controller_init is not None:
            args["controller_init"] = [float(w) for w in controller_init]
        new_arch = arch if arch == "resnet34_tv" else ("lhc_net" if controller_init is None else "lhc_netc")
        adding = "lhc"

    from . import build_model

    model = build_model(new_arch, **args)
    if not isinstance(model, FERResNet):  # pragma: no cover - all registered models are
        raise ModelError(f"{new_arch}: cannot add LHC modules to this model")
    if adding == "lhc":
        model.reset_lhc(seed)

    target = model.state_dict()
    parent = ckpt["state_dict"]
    if adding == "lhc":
        added = {k for k in target if k.startswith("lhc.")}
    else:
        added = {k for k in target if k.startswith("lhc.") and k.endswith(".controller")}
    missing = sorted(set(target) - set(parent) - added)
    unexpected = sorted(set(parent) - set(target))
    clash = sorted(set(parent) & added)
    if missing or unexpected or clash:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors ({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors ({', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''})")
        if clash:
            parts.append(f"already holds {', '.join(clash[:4])}")
        raise CheckpointError(f"{where}: weights do not fit '{arch}': {'; '.join(parts)}")
    for key, value in parent.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise CheckpointError(
                f"{where}: tensor {key} has shape {tuple(value.shape)}, the model expects {tuple(target[key].shape)}"
            )
    state = {k: (parent[k].detach().clone() if k in parent else v.detach().clone()) for k, v in target.items()}

    lineage = list(ckpt.get("lineage") or []) + [lineage_entry(source_path or "<memory>", ckpt)]
    # The LHC modules' initial weights come from ``lhc_seed`` (ablation "detrain" redraws them):
    # when only controllers are added, the modules keep the seed they were drawn with.
    parent_seed = (ckpt.get("extra") or {}).get("lhc_seed")
    lhc_seed = int(parent_seed) if adding == "controller" and parent_seed is not None else int(seed)
    extra = {"lhc_seed": lhc_seed, "augmented_from": arch, "added": adding}
    if (ckpt.get("extra") or {}).get("data") is not None:  # the weights saw the parent's data
        extra["data"] = ckpt["extra"]["data"]
    return make_checkpoint(
        arch=new_arch,
        arch_args=args,
        state_dict=state,
        stage=None,
        epoch=None,
        metrics={},
        recipe=recipe if recipe is not None else ckpt.get("recipe"),
        class_names=ckpt.get("class_names") or _default_classes(),
        lineage=lineage,
        extra=extra,
    )


def _default_classes() -> list[str]:
    from .. import CLASS_NAMES

    return list(CLASS_NAMES)


def augment_lhc_file(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    recipe: Any = None,
    overrides: Sequence[str] = (),
    controller: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """``fertool augment-lhc`` as a function: read ``checkpoint``, write ``out`` (atomically).

    The LHC modules (``model.lhc``) and controller values (``model.controller_init``) come
    from ``recipe`` (a path or shipped name), else from the recipe stored in the
    checkpoint, else the paper's defaults (Table 2).  Without ``controller`` a backbone
    becomes LHC-Net; with it a backbone becomes LHC-NetC and an LHC-Net gets controllers.
    The resolved recipe is saved next to ``out`` as ``<out stem>.recipe.yaml``.
    Returns ``{"out", "recipe", "arch", "added", "lhc_seed", "checkpoint"}``.
    """
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..recipe import load_recipe, save_recipe, to_dict

    src, dst = Path(checkpoint), Path(out)
    if dst.exists() and dst.resolve() == (src.resolve() if src.exists() else None):
        raise CheckpointError(f"{dst}: the output must differ from the input checkpoint")
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: already exists (pass --force to replace it)")
    ckpt = load_checkpoint(src)
    arch = ckpt.get("arch")
    if arch not in _KNOWN:
        raise CheckpointError(f"{src}: architecture {arch!r} is not a model fertool knows ({', '.join(_KNOWN)})")
    if recipe is not None:
        rcp = load_recipe(recipe, overrides)
    elif isinstance(ckpt.get("recipe"), Mapping):
        rcp = load_recipe(ckpt["recipe"], overrides)
    else:
        rcp = load_recipe(None, overrides)
    size = (ckpt.get("arch_args") or {}).get("input_size")
    if size is not None and int(size) != rcp.model.input_size:
        raise ModelError(f"{src}: the model takes {size}x{size} images but model.input_size is {rcp.model.input_size}")
    args = ckpt.get("arch_args") or {}
    has_lhc = bool(args.get("lhc")) or arch in ("lhc_net", "lhc_netc")
    specs = [dataclasses.asdict(m) for m in rcp.model.lhc]
    new = augment_lhc(
        ckpt,
        lhc=None if has_lhc else specs,
        controller_init=list(rcp.model.controller_init) if controller else None,
        seed=seed,
        source_path=str(src),
        recipe=to_dict(rcp),
    )
    save_checkpoint(dst, new)
    recipe_path = dst.with_name(dst.stem + ".recipe.yaml")
    save_recipe(rcp, recipe_path)
    return {"out": str(dst), "recipe": str(recipe_path), "arch": new["arch"], "added": new["extra"]["added"],
            "lhc_seed": new["extra"]["lhc_seed"], "checkpoint": new}
