"""LHC-Net and LHC-NetC (docs/protocol.md §3; the paper's Table 2).

LHC-Net is the ResNet34v2 backbone with LHC modules after named positions (Table 2 by
default); LHC-NetC adds one controller scalar per module, ``out = x + A (1 + tanh(w))``,
trained with everything else frozen (:func:`freeze_except_controllers`).  Adding modules
to a trained checkpoint is :mod:`fertool.surgery`'s job.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import nn

from ..errors import ModelError
from ..protocol import CONTROLLER_INIT, TABLE2
from .resnet import ResNet34v2

__all__ = ["lhc_net", "lhc_netc", "freeze_except_controllers"]


def lhc_net(*, lhc: Sequence[Mapping[str, Any]] | None = None, controller_init: Any = None, **arch_args: Any) -> ResNet34v2:
    """ResNet34v2 + LHC modules (``lhc``: list of {after, heads, dim, pool, kernel, scale})."""
    if controller_init is not None:
        raise ModelError("arch 'lhc_net' has no controllers: use 'lhc_netc' with controller_init")
    specs = [dict(m) for m in (TABLE2 if lhc is None else lhc)]
    if not specs:
        raise ModelError("model.lhc: an LHC model needs at least one module")
    return ResNet34v2(lhc=specs, **arch_args)


def lhc_netc(
    *, lhc: Sequence[Mapping[str, Any]] | None = None, controller_init: Sequence[float] | None = None, **arch_args: Any
) -> ResNet34v2:
    """LHC-Net with one controller scalar per module (default init (0, 0, 0, -1, -0.5))."""
    specs = [dict(m) for m in (TABLE2 if lhc is None else lhc)]
    if not specs:
        raise ModelError("model.lhc: an LHC model needs at least one module")
    if controller_init is None:
        if len(specs) != len(CONTROLLER_INIT):
            raise ModelError(f"model.controller_init: needs one value per LHC module ({len(specs)})")
        controller_init = CONTROLLER_INIT
    return ResNet34v2(lhc=specs, controller_init=[float(w) for w in controller_init], **arch_args)


def freeze_except_controllers(model: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter except the LHC controller scalars; return those.

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
