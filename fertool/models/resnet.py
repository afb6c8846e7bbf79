"""ResNet34 backbones with the paper's classification head and optional LHC modules.

(Kept as one file: the two backbones share the head, the LHC insertion points and
the weight loading, which read best side by side.)

* :class:`ResNet34v2` — the pre-activation ResNet34 of ``classification_models`` that the
  paper trained (docs/protocol.md §2): ``bn_data`` normalisation of raw 0..255 pixels, BatchNorm eps
  2e-5, shortcut conv of every stage's first unit on the activated input.
* :class:`TorchvisionResNet34` — torchvision's ResNet34 (v1), so a user can start from
  torchvision's ImageNet weights; it normalises the raw pixels itself.

Both share :class:`FERResNet`: the 4096-1024-C head (docs/protocol.md §2), named insertion points
(``stem``, ``stageS_unitU``) and the LHC modules inserted after them (LHC-Net, docs/protocol.md §3).
LHC modules live in ``self.lhc`` (an ``nn.ModuleDict``, empty for a plain backbone), so the
backbone's state-dict keys are the same with and without them.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..layers import LHC
from .registry import register_backbone

__all__ = [
    "FERResNet",
    "ResNet34v2",
    "TorchvisionResNet34",
    "ClassifierHead",
    "UNITS",
    "LHC_KEYS",
    "fold_batchnorm",
]

#: Units per stage of ResNet34.
UNITS = (3, 4, 6, 3)
#: The paper's (ResNet34's) channels per stage and stem width; a model takes others as
#: ``channels=`` / ``stem_width=`` (timm's ``ResNet(channels=..., stem_width=...)``), e.g.
#: narrow models for tests.  Imported Keras weights and the reference need these values.
CHANNELS = (64, 128, 256, 512)
STEM_WIDTH = 64
#: Keys an LHC spec may have (docs/protocol.md §3 hyper-parameters + placement).
LHC_KEYS = ("after", "heads", "dim", "pool", "kernel", "scale")


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def position_shapes(
    input_size: int, channels: Sequence[int] = CHANNELS, stem_width: int = STEM_WIDTH
) -> dict[str, tuple[int, int]]:
    """(channels, H=W) after ``stem`` and after every ``stageS_unitU``, in network order."""
    size = _conv_out(input_size, 7, 2, 3)  # conv0 7x7/2, pad 3
    size = _conv_out(size, 3, 2, 1)  # max-pool 3x3/2, pad 1
    shapes = {"stem": (int(stem_width), size)}
    for s, (units, filters) in enumerate(zip(UNITS, channels), start=1):
        if s > 1:
            size = _conv_out(size, 3, 2, 1)
        for u in range(1, units + 1):
            shapes[f"stage{s}_unit{u}"] = (filters, size)
    return shapes


class BatchNormCenter(nn.BatchNorm2d):
    """BatchNorm with a learned shift but no scale (Keras ``scale=False``, ``bn_data``)."""

    def __init__(self, num_features: int, eps: float, momentum: float) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_features))  # weight stays None: gamma = 1


class PreActUnit(nn.Module):
    """Pre-activation basic unit ``stageS_unitU`` (docs/protocol.md §2).

    ``y = relu(bn1(x))``; ``out = conv2(relu(bn2(conv1(y)))) + shortcut`` where the
    shortcut is ``sc(y)`` (1x1 conv on the *activated* input) in the first unit of a
    stage and the raw ``x`` otherwise.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: bool, bn: dict) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, **bn)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, **bn)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.sc = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False) if shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(x))
        shortcut = self.sc(y) if self.sc is not None else x
        y = self.conv1(y)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + shortcut


class Stem(nn.Module):
    """``bn_data`` -> pad 3 -> 7x7/2 ``conv0`` -> ``bn0`` -> ReLU -> pad 1 -> 3x3/2 max-pool."""

    def __init__(self, bn: dict, width: int = STEM_WIDTH) -> None:
        super().__init__()
        self.bn_data = BatchNormCenter(3, **bn)
        self.conv0 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn0 = nn.BatchNorm2d(width, **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.conv0(self.bn_data(x))))
        # Keras zero-pads then max-pools 'valid'; the input is >= 0 after the ReLU, so
        # this equals PyTorch's -inf padding.
        return F.max_pool2d(x, 3, stride=2, padding=1)


class ClassifierHead(nn.Module):
    """GAP features -> Dense(hidden[i]) + ReLU + Dropout ... -> Dense(num_classes) logits.

    Dense layers are Keras-default initialised: Glorot-uniform kernels, zero biases.
    No softmax: callers apply it.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, dropout: float) -> None:
        super().__init__()
        sizes = [in_features, *hidden, num_classes]
        self.depth = len(sizes) - 1
        for i in range(self.depth):
            self.add_module(f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for i in range(self.depth):
            fc = getattr(self, f"fc{i + 1}")
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        for i in range(self.depth - 1):
            f = self.dropout(F.relu(getattr(self, f"fc{i + 1}")(f)))
        return getattr(self, f"fc{self.depth}")(f)


def _lhc_seed(seed: int, index: int) -> int:
    """Seed of LHC module ``index`` (1-based) from a run seed: independent streams per module."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(index)]).generate_state(1, dtype=np.uint64)[0] % 2**63)


class FERResNet(nn.Module, abc.ABC):
    """Common part of the backbones: head, insertion points, LHC modules.

    Subclasses build ``self.stem`` (input -> ``stem`` position), ``self.units`` (an
    ordered mapping name -> unit) and ``_final`` (last unit output -> (B, C, h, w)
    activated features, C = the last stage's channels, 512 at the paper's width), then
    call :meth:`_finish`.
    """

    arch_name = "?"

    def _finish(
        self,
        *,
        input_size: int,
        num_classes: int,
        hidden: Sequence[int],
        dropout: float,
        lhc: Sequence[Mapping[str, Any]] | None,
        controller_init: Sequence[float] | None,
        channels: Sequence[int],
        stem_width: int,
    ) -> None:
        self.input_size = int(input_size)
        self.num_classes = int(num_classes)
        self.channels = tuple(int(c) for c in channels)
        self.stem_width = int(stem_width)
        self.head = ClassifierHead(self.channels[-1], list(hidden), num_classes, dropout)
        self.shapes = position_shapes(self.input_size, self.channels, self.stem_width)
        self.lhc = nn.ModuleDict()
        self.lhc_after: dict[str, str] = {}  # position -> module name
        self._add_lhc(lhc or [], controller_init)

    # -------------------------------------------------------------- LHC placement

    def _add_lhc(self, specs: Sequence[Mapping[str, Any]], controller_init: Sequence[float] | None) -> None:
        if controller_init is not None and len(controller_init) != len(specs):
            raise ModelError(
                f"model.controller_init: needs one value per LHC module ({len(specs)}), got {len(controller_init)}"
            )
        order = list(self.shapes)
        placed: dict[str, tuple[int, Mapping[str, Any]]] = {}
        for i, spec in enumerate(specs):
            where = f"model.lhc.{i}"
            if not isinstance(spec, Mapping):
                raise ModelError(f"{where}: must be a mapping with {', '.join(LHC_KEYS)}, got {spec!r}")
            unknown = sorted(set(spec) - set(LHC_KEYS))
            if unknown:
                raise ModelError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(LHC_KEYS)})")
            for key in ("after", "heads", "dim"):
                if key not in spec:
                    raise ModelError(f"{where}.{key}: required key is missing")
            after = spec["after"]
            if after not in self.shapes:
                raise ModelError(
                    f"{where}.after: unknown position {after!r} (use 'stem' or stageS_unitU with units "
                    f"{', '.join(f'{s}:1-{n}' for s, n in enumerate(UNITS, start=1))})"
                )
            if after in placed:
                raise ModelError(
                    f"{where}.after: a module is already placed after {after!r} (model.lhc.{placed[after][0]})"
                )
            placed[after] = (i, spec)
        for k, after in enumerate(sorted(placed, key=order.index), start=1):
            i, spec = placed[after]
            channels, size = self.shapes[after]
            name = f"lhc{k}"
            heads = spec["heads"]
            if isinstance(heads, int) and heads > 0 and (size * size) % heads:
                raise ModelError(
                    f"model.lhc.{i}.heads: {name} after {after} sees {size}x{size} = {size * size} positions "
                    f"at input size {self.input_size}, not divisible by heads = {heads}"
                )
            try:
                module = LHC(
                    channels,
                    heads=heads,
                    dim=spec["dim"],
                    pool=spec.get("pool", 3),
                    kernel=spec.get("kernel", 3),
                    scale=float(spec.get("scale", 1.0)),
                    controller=None if controller_init is None else float(controller_init[i]),
                    size=size,
                    name=f"{name} (model.lhc.{i}, after {after})",
                )
            except ModelError as exc:
                raise ModelError(f"model.lhc.{i}: {exc}") from None
            self.lhc[name] = module
            self.lhc_after[after] = name

    def lhc_modules(self) -> dict[str, LHC]:
        """The LHC modules in network order, ``{"lhc1": ..., ...}`` (empty for a backbone)."""
        return dict(self.lhc.items())

    def reset_lhc(self, seed: int, names: Iterable[str] | None = None) -> None:
        """Re-initialise LHC modules deterministically: module ``lhcK`` uses seed (seed, K).

        The same seed gives bit-identical initial weights, whatever else the model holds
        (used by ``augment-lhc`` and by the ablation's "detrain").
        """
        modules = self.lhc_modules()
        chosen = list(modules) if names is None else list(names)
        for name in chosen:
            if name not in modules:
                raise ModelError(f"no LHC module named {name!r} (the model has: {', '.join(modules) or 'none'})")
            index = int(name[3:]) if name[3:].isdigit() else list(modules).index(name) + 1
            gen = torch.Generator().manual_seed(_lhc_seed(seed, index))
            modules[name].reset_parameters(generator=gen)

    # -------------------------------------------------------------- forward

    def _after(self, position: str, x: torch.Tensor) -> torch.Tensor:
        name = self.lhc_after.get(position)
        return x if name is None else self.lhc[name](x)

    @abc.abstractmethod
    def _final(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's last operation on the (B, C, h, w) map, before global pooling."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) raw 0..255 pixels -> (B, C) pooled features (after final BN+ReLU; C = 512 at full width)."""
        x = self._after("stem", self.stem(x))
        for name, unit in self.units.items():
            x = self._after(name, unit(x))
        x = self._final(x)  # (B, C, h, w)
        return x.mean(dim=(2, 3))  # (B, C)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """(B, C) features -> (B, num_classes) logits (no softmax)."""
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _bn_args(bn_eps: float, bn_momentum: float) -> dict:
    """Keras momentum m (moving = m*moving + (1-m)*batch) -> PyTorch momentum 1-m."""
    if not 0 < bn_momentum < 1:
        raise ModelError(f"model.bn_momentum: must be in (0, 1) (Keras convention), got {bn_momentum}")
    if bn_eps <= 0:
        raise ModelError(f"model.bn_eps: must be > 0, got {bn_eps}")
    return {"eps": float(bn_eps), "momentum": 1.0 - float(bn_momentum)}


def _check_widths(channels: Sequence[int], stem_width: int) -> tuple[tuple[int, ...], int]:
    if (
        not isinstance(channels, (list, tuple))
        or len(channels) != len(UNITS)
        or any(not isinstance(c, int) or c <= 0 for c in channels)
    ):
        raise ModelError(f"model.channels: must be {len(UNITS)} positive integers (one per stage), got {channels!r}")
    if not isinstance(stem_width, int) or stem_width <= 0:
        raise ModelError(f"model.stem_width: must be a positive integer, got {stem_width!r}")
    return tuple(channels), stem_width


def _check_common(input_size: int, num_classes: int, hidden: Sequence[int], dropout: float) -> None:
    if not isinstance(input_size, int) or input_size < 32:
        raise ModelError(f"model.input_size: must be an integer >= 32, got {input_size!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"model.num_classes: must be an integer >= 2, got {num_classes!r}")
    if any(not isinstance(h, int) or h <= 0 for h in hidden):
        raise ModelError(f"model.hidden: must all be positive integers, got {list(hidden)}")
    if not 0 <= dropout < 1:
        raise ModelError(f"model.dropout: must be in [0, 1), got {dropout}")


@register_backbone(
    "resnet34v2",
    archs={"backbone": "resnet34v2", "lhc": "lhc_net", "controller": "lhc_netc"},
    titles={"resnet34v2": "ResNet34v2", "lhc_net": "LHC-Net", "lhc_netc": "LHC-NetC"},
)
class ResNet34v2(FERResNet):
    """Pre-activation ResNet34 (classification_models) + head, optional LHC modules.

    Keras layer names map to module names: ``bn_data``/``conv0``/``bn0`` -> ``stem.*``,
    ``stageS_unitU_{bn1,conv1,bn2,conv2,sc}`` -> ``units.stageS_unitU.*``, the final
    ``bn1`` -> ``final_bn``, the dense layers -> ``head.fc1..``.
    """

    arch_name = "resnet34v2"

    def __init__(
        self,
        *,
        input_size: int = 224,
        num_classes: int = 7,
        hidden: Sequence[int] = (4096, 1024),
        dropout: float = 0.4,
        bn_eps: float = 2e-5,
        bn_momentum: float = 0.99,
        lhc: Sequence[Mapping[str, Any]] | None = None,
        controller_init: Sequence[float] | None = None,
        channels: Sequence[int] = CHANNELS,
        stem_width: int = STEM_WIDTH,
    ) -> None:
        super().__init__()
        _check_common(input_size, num_classes, hidden, dropout)
        channels, stem_width = _check_widths(channels, stem_width)
        bn = _bn_args(bn_eps, bn_momentum)
        self.stem = Stem(bn, stem_width)
        self.units = nn.ModuleDict()
        in_ch = stem_width
        for s, (units, filters) in enumerate(zip(UNITS, channels), start=1):
            for u in range(1, units + 1):
                stride = 2 if (u == 1 and s > 1) else 1
                self.units[f"stage{s}_unit{u}"] = PreActUnit(in_ch, filters, stride, shortcut=(u == 1), bn=bn)
                in_ch = filters
        self.final_bn = nn.BatchNorm2d(channels[-1], **bn)
        self._init_backbone()
        self._finish(
            input_size=input_size,
            num_classes=num_classes,
            hidden=hidden,
            dropout=dropout,
            lhc=lhc,
            controller_init=controller_init,
            channels=channels,
            stem_width=stem_width,
        )

    def _init_backbone(self) -> None:
        # classification_models: he_uniform conv kernels, BN gamma 1 / beta 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.final_bn(x))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm that directly follows a convolution into that convolution, in place.

    For inference only (``model`` must be in eval mode): the convolution gets the
    BatchNorm's scale and shift and the BatchNorm becomes an identity, which saves one
    pass over the activations per pair.  In the pre-activation ResNet34v2 that is ``bn2``
    into ``conv1`` of each unit and ``bn0`` into ``conv0``; ``bn1`` of each unit and
    ``final_bn`` come after an addition and stay, and ``bn_data`` precedes ``conv0``'s zero
    padding, so it cannot fold either.  In torchvision's ResNet34 every BatchNorm folds.
    Returns ``model``.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from torchvision.models.resnet import BasicBlock, ResNet

    if model.training:
        raise ModelError("fold_batchnorm: the model must be in eval mode")
    pairs = {
        PreActUnit: (("conv1", "bn2"),),
        Stem: (("conv0", "bn0"),),
        BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
        ResNet: (("conv1", "bn1"),),
    }
    for module in model.modules():
        names = pairs.get(type(module), ())
        if isinstance(module, nn.Sequential):  # torchvision's downsample: conv, BatchNorm
            names = [
                (str(i), str(i + 1))
                for i in range(len(module) - 1)
                if type(module[i]) is nn.Conv2d and type(module[i + 1]) is nn.BatchNorm2d
            ]
        for conv, bn in names:
            if isinstance(getattr(module, conv), nn.Conv2d) and isinstance(getattr(module, bn), nn.BatchNorm2d):
                setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
                setattr(module, bn, nn.Identity())
    return model


#: ImageNet statistics torchvision's weights expect, on the 0..1 scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_FILE = "resnet34-b627a593.pth"


def _torchvision_pretrained(model: nn.Module, path) -> str | None:
    """Stage 1's start from a torchvision ``.pth`` (other files: None, read as fertool/Keras files)."""
    if path.suffix.lower() != ".pth":
        return None
    load_torchvision_weights(model, str(path))
    return "torchvision-resnet34"


@register_backbone(
    "resnet34_tv", titles={"resnet34_tv": "ResNet34 (torchvision)"}, load_pretrained=_torchvision_pretrained
)
class TorchvisionResNet34(FERResNet):
    """torchvision's ResNet34 (v1, post-activation) trunk + the paper's head.

    The raw 0..255 input is normalised with the ImageNet mean/std torchvision expects.
    The trunk's state-dict keys are torchvision's with a ``trunk.`` prefix, so
    torchvision ImageNet weights load by name (see :func:`load_torchvision_weights`).
    """

    arch_name = "resnet34_tv"

    def __init__(
        self,
        *,
        input_size: int = 224,
        num_classes: int = 7,
        hidden: Sequence[int] = (4096, 1024),
        dropout: float = 0.4,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.9,
        lhc: Sequence[Mapping[str, Any]] | None = None,
        controller_init: Sequence[float] | None = None,
        channels: Sequence[int] = CHANNELS,
        stem_width: int = STEM_WIDTH,
    ) -> None:
        super().__init__()
        import torchvision

        _check_common(input_size, num_classes, hidden, dropout)
        channels, stem_width = _check_widths(channels, stem_width)
        bn = _bn_args(bn_eps, bn_momentum)
        trunk = torchvision.models.resnet34(weights=None)
        if (channels, stem_width) != (CHANNELS, STEM_WIDTH):
            _narrow_torchvision(trunk, channels, stem_width)
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = bn["eps"], bn["momentum"]
        del trunk.fc
        self.trunk = trunk
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.units = {}  # plain dict: the modules are registered under trunk.layerS
        for s in range(1, 5):
            for u, block in enumerate(getattr(trunk, f"layer{s}"), start=1):
                self.units[f"stage{s}_unit{u}"] = block
        self._finish(
            input_size=input_size,
            num_classes=num_classes,
            hidden=hidden,
            dropout=dropout,
            lhc=lhc,
            controller_init=controller_init,
            channels=channels,
            stem_width=stem_width,
        )

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        x = (x - self.pixel_mean) / self.pixel_std
        return t.maxpool(t.relu(t.bn1(t.conv1(x))))

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        return x  # v1 blocks end with ReLU already


def _narrow_torchvision(trunk: nn.Module, channels: Sequence[int], stem_width: int) -> None:
    """Rebuild torchvision's stem and stages at other widths, initialised as torchvision does."""
    from torchvision.models.resnet import BasicBlock

    trunk.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
    trunk.bn1 = nn.BatchNorm2d(stem_width)
    trunk.inplanes = stem_width
    for s, (units, filters) in enumerate(zip(UNITS, channels), start=1):
        setattr(trunk, f"layer{s}", trunk._make_layer(BasicBlock, filters, units, stride=1 if s == 1 else 2))
    for m in trunk.modules():  # torchvision's ResNet.__init__ initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def load_torchvision_weights(model: TorchvisionResNet34, path: str | None = None) -> None:
    """Load torchvision's ImageNet ResNet34 weights into ``model.trunk`` (offline).

    ``path`` is a local ``.pth``; without it torchvision's cache
    (``$TORCH_HOME/hub/checkpoints/resnet34-b627a593.pth``) is used.  The ``fc`` layer
    of the file is ignored (the head is the paper's).
    """
    from pathlib import Path

    if path is None:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE
        if not cache.is_file():
            raise ModelError(
                f"torchvision ImageNet weights not found: put {TORCHVISION_FILE} in {cache.parent} "
                f"or pass its path (model.pretrained); fertool does not download"
            )
        path = str(cache)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # foreign or damaged file
        raise ModelError(f"{path}: not a readable torchvision state dict ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path}: not a torchvision state dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = set(model.trunk.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
        raise ModelError(f"{path}: not torchvision ResNet34 weights ({'; '.join(parts)})")
    try:
        model.trunk.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"{path}: shapes do not fit torchvision ResNet34 ({str(exc).splitlines()[-1].strip()})"
        ) from None
