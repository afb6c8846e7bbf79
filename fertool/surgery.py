"""Checkpoint surgery: operations that turn one checkpoint into another model's.

* :func:`model_from_checkpoint` rebuilds the model a checkpoint describes;
* :func:`augment_lhc` / :func:`augment_lhc_file` (``fertool augment-lhc``) add LHC modules
  (Table 2 by default) or LHC-NetC's controllers to a trained network, copying every
  existing tensor bit for bit;
* :func:`load_backbone` copies a pre-trained backbone into a new model (stage 1's start).

Moving weights fails loudly on any tensor that is missing or unexpected, except the ones
the operation is meant to add.  The file format itself lives in :mod:`fertool.checkpoint`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import CLASS_NAMES
from .checkpoint import lineage_entry, load_checkpoint, make_checkpoint, save_checkpoint
from .errors import CheckpointError, ModelError, printable
from .models import ARCHS, FERResNet, build_model
from .protocol import TABLE2, checkpoint_kind
from .recipe import load_recipe, save_recipe, to_dict

__all__ = ["KNOWN_ARCHS", "model_from_checkpoint", "augment_lhc", "augment_lhc_file", "load_backbone"]

#: The architectures whose checkpoints augment-lhc accepts: every registered one
#: (:data:`fertool.models.ARCHS`, read when a checkpoint comes).
KNOWN_ARCHS = ARCHS


def model_from_checkpoint(ckpt: Mapping[str, Any], *, strict: bool = True) -> nn.Module:
    """Rebuild the model described by ``ckpt`` and load its weights."""
    model = build_model(ckpt["arch"], **ckpt["arch_args"])
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {printable(', '.join(unexpected[:3]))})")
        raise CheckpointError(f"checkpoint weights do not fit architecture '{ckpt['arch']}': {'; '.join(parts)}")
    return model


def load_backbone(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> bool:
    """Copy every backbone tensor of ``state`` (all must fit); the head only when it fits whole.

    Returns True when the classifier head was copied too.
    """
    target = model.state_dict()
    body = {k for k in target if not k.startswith(("head.", "lhc."))}
    missing = sorted(body - set(state))
    unexpected = sorted(k for k in state if k not in target and not k.startswith("head."))
    wrong = sorted(k for k in body & set(state) if tuple(state[k].shape) != tuple(target[k].shape))
    if missing or unexpected or wrong:
        parts = [
            f"{name} {len(keys)} tensors ({', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''})"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape of", wrong))
            if keys
        ]
        raise CheckpointError(f"model.pretrained: {source}: weights do not fit the backbone: {'; '.join(parts)}")
    head = [k for k in target if k.startswith("head.")]
    head_fits = all(k in state and tuple(state[k].shape) == tuple(target[k].shape) for k in head)
    new = {k: state[k] for k in body}
    if head_fits:
        new.update({k: state[k] for k in head})
    model.load_state_dict({**target, **new})
    return head_fits


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

    * backbone (e.g. ``resnet34v2``, or ``resnet34_tv`` without LHC) -> its LHC variant
      (``lhc_net``; ``controller_init`` None) or controller variant (``lhc_netc``); ``lhc``
      None means Table 2 (the variants are the registry's, :mod:`fertool.models.registry`);
    * LHC-Net -> LHC-NetC: ``lhc`` must be None (the trained modules are kept) and
      ``controller_init`` given.

    Every copied tensor is bit-identical; the new LHC modules are initialised by
    ``reset_lhc(seed)`` (same seed -> same weights).  Any missing or unexpected tensor
    other than the ones being added is an error.  ``recipe`` (plain dict) replaces the
    stored recipe when given.
    """
    where = source_path or "checkpoint"
    arch = ckpt.get("arch")
    if arch not in KNOWN_ARCHS:
        raise CheckpointError(f"{where}: architecture {arch!r} is not a model fertool knows ({', '.join(KNOWN_ARCHS)})")
    args = copy.deepcopy(dict(ckpt.get("arch_args") or {}))
    have = checkpoint_kind(ckpt)
    if have == "controller":
        raise CheckpointError(f"{where}: already an LHC-NetC model (has LHC modules and controllers); nothing to add")
    if have == "lhc":
        if lhc is not None:
            raise CheckpointError(
                f"{where}: already has LHC modules ({arch}); to add controllers, ask for controllers only"
            )
        if controller_init is None:
            raise CheckpointError(f"{where}: already has LHC modules ({arch}) and no controllers were asked for")
        new_arch = ARCHS[arch].archs["controller"]
        if not args.get("lhc"):  # an LHC variant built with its default modules
            args["lhc"] = [dict(m) for m in TABLE2]
        args["controller_init"] = [float(w) for w in controller_init]
        adding = "controller"
    else:
        args["lhc"] = [dict(m) for m in (TABLE2 if lhc is None else lhc)]
        if controller_init is not None:
            args["controller_init"] = [float(w) for w in controller_init]
        new_arch = ARCHS[arch].archs["lhc" if controller_init is None else "controller"]
        adding = "lhc"

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
            parts.append(
                f"missing {len(missing)} tensors ({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''})"
            )
        if unexpected:
            parts.append(
                f"unexpected {len(unexpected)} tensors ({', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''})"
            )
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
        class_names=ckpt.get("class_names") or CLASS_NAMES,
        lineage=lineage,
        extra=extra,
    )


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
    src, dst = Path(checkpoint), Path(out)
    if dst.exists() and dst.resolve() == (src.resolve() if src.exists() else None):
        raise CheckpointError(f"{dst}: the output must differ from the input checkpoint")
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: already exists (pass --overwrite to replace it)")
    ckpt = load_checkpoint(src)
    arch = ckpt.get("arch")
    if arch not in KNOWN_ARCHS:
        raise CheckpointError(f"{src}: architecture {arch!r} is not a model fertool knows ({', '.join(KNOWN_ARCHS)})")
    if recipe is not None:
        rcp = load_recipe(recipe, overrides)
    elif isinstance(ckpt.get("recipe"), Mapping):
        rcp = load_recipe(ckpt["recipe"], overrides, stored=True)
    else:
        rcp = load_recipe(None, overrides)
    size = (ckpt.get("arch_args") or {}).get("input_size")
    if size is not None and int(size) != rcp.model.input_size:
        raise ModelError(f"{src}: the model takes {size}x{size} images but model.input_size is {rcp.model.input_size}")
    specs = [dataclasses.asdict(m) for m in rcp.model.lhc]
    new = augment_lhc(
        ckpt,
        lhc=specs if checkpoint_kind(ckpt) == "backbone" else None,
        controller_init=list(rcp.model.controller_init) if controller else None,
        seed=seed,
        source_path=str(src),
        recipe=to_dict(rcp),
    )
    save_checkpoint(dst, new)
    recipe_path = dst.with_name(dst.stem + ".recipe.yaml")
    save_recipe(rcp, recipe_path)
    return {
        "out": str(dst),
        "recipe": str(recipe_path),
        "arch": new["arch"],
        "added": new["extra"]["added"],
        "lhc_seed": new["extra"]["lhc_seed"],
        "checkpoint": new,
    }
