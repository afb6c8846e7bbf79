"""The architecture registry: every backbone is declared once, where its class is defined.

timm's ``@register_model`` is the model: a backbone's class carries one
``@register_backbone(...)`` line that says

* its name (``model.backbone`` in a recipe);
* the checkpoint ``arch`` names of its three variants, plain / with LHC modules / with LHC
  controllers (one name for all three when the LHC modules are arguments of the one
  class, as for ``resnet34_tv``), and their display names;
* which pre-trained files it accepts for stage 1 besides fertool checkpoints
  (``load_pretrained``).

Everything else reads this table: :func:`build_model`, ``arch_from_recipe``, the checkpoint
checks, ``augment-lhc``, a stage's start.  The rules of the LHC variants (an LHC model needs
modules, Table 2 by default; LHC-NetC's controllers start at the paper's values) are written
here once, for every backbone.  The class is built as ``cls(**arch_args)`` and must accept
``lhc`` and ``controller_init`` (see :class:`fertool.models.resnet.FERResNet`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelError
from ..protocol import CONTROLLER_INIT, MODEL_KINDS, TABLE2

__all__ = ["Backbone", "BACKBONES", "ARCHS", "register_backbone", "build_model", "arch_title"]


@dataclass(frozen=True)
class Backbone:
    """One registered backbone (see the module docstring)."""

    name: str
    build: Callable[..., nn.Module]
    archs: Mapping[str, str]  # kind (backbone, lhc, controller) -> checkpoint arch name
    titles: Mapping[str, str]  # arch name -> display name
    # (model, path) -> a lineage label when this backbone reads the file, else None
    load_pretrained: Callable[[nn.Module, Path], str | None] | None = None

    def kind_of(self, arch: str) -> str | None:
        """The variant an arch name fixes, or None when one name serves several (LHC as arguments)."""
        kinds = [k for k, a in self.archs.items() if a == arch]
        return kinds[0] if len(kinds) == 1 else None


#: backbone name -> entry, in registration order
BACKBONES: dict[str, Backbone] = {}
#: checkpoint arch name -> the backbone it belongs to
ARCHS: dict[str, Backbone] = {}


def register_backbone(
    name: str,
    *,
    archs: Mapping[str, str] | None = None,
    titles: Mapping[str, str] | None = None,
    load_pretrained: Callable[[nn.Module, Path], str | None] | None = None,
) -> Callable:
    """Class decorator: register a backbone (``archs`` default: ``name`` for all three variants)."""
    variants = dict(archs or dict.fromkeys(MODEL_KINDS, name))
    if set(variants) != set(MODEL_KINDS):
        raise ModelError(f"register_backbone({name!r}): archs must name the variants {', '.join(MODEL_KINDS)}")

    def register(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        taken = [a for a in {name, *variants.values()} if a in ARCHS or (a == name and name in BACKBONES)]
        if taken:
            raise ModelError(f"register_backbone({name!r}): {', '.join(taken)} already registered")
        entry = Backbone(
            name=name,
            build=cls,
            archs=variants,
            titles={a: (titles or {}).get(a, a) for a in variants.values()},
            load_pretrained=load_pretrained,
        )
        BACKBONES[name] = entry
        for arch in variants.values():
            ARCHS[arch] = entry
        return cls

    return register


def arch_title(arch: str) -> str:
    """Display name of a checkpoint arch (``LHC-Net`` ...), the arch itself when unknown."""
    entry = ARCHS.get(arch)
    return entry.titles.get(arch, arch) if entry is not None else arch


def _variant_args(entry: Backbone, arch: str, kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """The rules of the variants, for every backbone whose arch name fixes the variant."""
    lhc, controller_init = args.pop("lhc", None), args.pop("controller_init", None)
    if kind == "backbone":
        if lhc or controller_init:
            raise ModelError(
                f"arch {arch!r} is the plain backbone: use {entry.archs['lhc']!r} or "
                f"{entry.archs['controller']!r} for LHC modules"
            )
        return args
    specs = [dict(m) for m in (TABLE2 if lhc is None else lhc)]
    if not specs:
        raise ModelError("model.lhc: an LHC model needs at least one module")
    if kind == "lhc":
        if controller_init is not None:
            raise ModelError(
                f"arch {arch!r} has no controllers: use {entry.archs['controller']!r} with controller_init"
            )
        return {**args, "lhc": specs}
    if controller_init is None:
        if len(specs) != len(CONTROLLER_INIT):
            raise ModelError(f"model.controller_init: needs one value per LHC module ({len(specs)})")
        controller_init = CONTROLLER_INIT
    return {**args, "lhc": specs, "controller_init": [float(w) for w in controller_init]}


def build_model(arch: str, **arch_args: Any) -> nn.Module:
    """Build a registered architecture; unknown names or arguments are a :class:`ModelError`."""
    entry = ARCHS.get(arch)
    if entry is None:
        raise ModelError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    kind = entry.kind_of(arch)
    if kind is not None:
        arch_args = _variant_args(entry, arch, kind, dict(arch_args))
    try:
        return entry.build(**arch_args)
    except TypeError as exc:
        raise ModelError(f"architecture {arch!r}: {exc}") from None
