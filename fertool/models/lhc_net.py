"""LHC-NetC's training: only the controllers learn (docs/protocol.md §3).

LHC-Net is a backbone with LHC modules after named positions (Table 2 by default);
LHC-NetC adds one controller scalar per module, ``out = x + A (1 + tanh(w))``, trained with
everything else frozen (:func:`freeze_except_controllers`).  The variants' rules are in
:mod:`fertool.models.registry`; adding modules to a trained checkpoint is
:mod:`fertool.surgery`'s job.
"""

from __future__ import annotations

from torch import nn

from ..errors import ModelError

__all__ = ["freeze_except_controllers"]


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
