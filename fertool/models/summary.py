"""Per-block summary of a model: parameters, output shapes and FLOPs per image.

Two ways of counting parameters are kept apart:

* PyTorch: ``sum(p.numel() for p in model.parameters())``; BatchNorm running statistics
  are buffers (27,590,858 for ResNet34v2, 32,396,302 for LHC-Net);
* Keras (the paper's numbers): parameters + BatchNorm moving mean/variance, which Keras
  counts as non-trainable weights (27,606,224 / 32,411,668).

FLOPs are those of convolutions and matrix products (2 per multiply-add), counted with
``torch.utils.flop_counter.FlopCounterMode`` on one image; pooling, normalisation and
element-wise work are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["SummaryRow", "ModelSummary", "summarize"]


@dataclass(frozen=True)
class SummaryRow:
    name: str  # "stem", "stage1_unit1", "lhc1 (after stem)", "final_bn", "head"
    kind: str  # "backbone", "lhc" or "head"
    params: int  # PyTorch parameters of the block
    shape: tuple[int, ...]  # output shape of one image: (C, H, W) or (features,)
    flops: int  # per image


@dataclass(frozen=True)
class ModelSummary:
    rows: list[SummaryRow]
    params: int  # PyTorch parameters (trainable + frozen)
    bn_moving: int  # BatchNorm running mean/var values (Keras non-trainable weights)
    lhc_params: int
    flops: int  # per image, whole model
    lhc_flops: int
    input_size: int
    extra: dict = field(default_factory=dict)

    @property
    def keras_params(self) -> int:
        """The Keras count_params() total (the paper's 27.6M / 32.4M)."""
        return self.params + self.bn_moving

    @property
    def lhc_share(self) -> float:
        """LHC parameters / Keras total (the paper's 14.8%)."""
        return self.lhc_params / self.keras_params if self.keras_params else 0.0

    @property
    def lhc_flop_share(self) -> float:
        return self.lhc_flops / self.flops if self.flops else 0.0


def _blocks(model: nn.Module) -> list[tuple[str, str, list[str], nn.Module]]:
    """(row name, kind, module-path prefixes, module whose output is the row's output)."""
    from .resnet import FERResNet, TorchvisionResNet34

    if not isinstance(model, FERResNet):
        return [(name, "backbone", [name], child) for name, child in model.named_children()]
    rows = []
    if isinstance(model, TorchvisionResNet34):
        rows.append(("stem", "backbone", ["trunk.conv1", "trunk.bn1"], model.trunk.maxpool))
        unit_paths = {}
        for s in range(1, 5):
            for u in range(len(getattr(model.trunk, f"layer{s}"))):
                unit_paths[f"stage{s}_unit{u + 1}"] = f"trunk.layer{s}.{u}"
    else:
        rows.append(("stem", "backbone", ["stem"], model.stem))
        unit_paths = {name: f"units.{name}" for name in model.units}
    lhc_rows = dict(model.lhc_after)

    def add_lhc(position: str) -> None:
        if position in lhc_rows:
            name = lhc_rows[position]
            rows.append((f"{name} (after {position})", "lhc", [f"lhc.{name}"], model.lhc[name]))

    add_lhc("stem")
    for unit, path in unit_paths.items():
        rows.append((unit, "backbone", [path], model.get_submodule(path)))
        add_lhc(unit)
    if not isinstance(model, TorchvisionResNet34):
        rows.append(("final_bn", "backbone", ["final_bn"], model.final_bn))
    rows.append(("head", "head", ["head"], model.head))
    return rows


def _params_under(model: nn.Module, prefixes: list[str]) -> int:
    return sum(
        p.numel() for n, p in model.named_parameters() if any(n == pre or n.startswith(pre + ".") for pre in prefixes)
    )


def summarize(model: nn.Module, input_size: int = 224) -> ModelSummary:
    """Run one (B=1) image of ``input_size`` through ``model`` and tabulate its blocks."""
    blocks = _blocks(model)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        module.register_forward_hook(lambda mod, inp, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
        for name, _kind, _prefixes, module in blocks
    ]
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(1, 3, input_size, input_size, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__

    def flops_under(prefixes: list[str]) -> int:
        return int(sum(sum(counts.get(f"{root}.{pre}", {}).values()) for pre in prefixes))

    rows = [
        SummaryRow(
            name=name,
            kind=kind,
            params=_params_under(model, prefixes),
            shape=shapes.get(name, ()),
            flops=flops_under(prefixes),
        )
        for name, kind, prefixes, _module in blocks
    ]
    bn_moving = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    lhc_rows = [r for r in rows if r.kind == "lhc"]
    return ModelSummary(
        rows=rows,
        params=sum(p.numel() for p in model.parameters()),
        bn_moving=bn_moving,
        lhc_params=sum(r.params for r in lhc_rows),
        flops=int(sum(counts.get("Global", {}).values())),
        lhc_flops=sum(r.flops for r in lhc_rows),
        input_size=input_size,
    )
