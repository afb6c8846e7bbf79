"""The LHC module: local multi-head channel self-attention (docs/protocol.md §3, paper eqs. 1-17).

Pecoraro et al., "Local Multi-Head Channel Self-Attention for Facial Expression
Recognition", Information 13(9):419, 2022.  The semantics are those of the authors'
Keras ``LHC_Module`` (docs/protocol.md §3), which produced the published numbers:

* the *tokens* are the C channels; the heads split the flattened spatial grid into
  contiguous row-major stripes of ``r = H*W / heads`` positions;
* query and key come from 3x3 stride-1 'same' average / max pooling of the input and go
  through one per-head dense map ``r -> d`` shared by query and key;
* the scores are divided by ``d ** (g + sigmoid(Wp(mean_keys(S))))`` (dynamic scaling);
* the value is a CxC 'same' convolution followed by a 3x3 'same' average pooling, with no
  per-head projection; the output is ``x + A`` (or ``x + A * (1 + tanh(w))`` with the
  LHC-NetC controller).

All heads run in one batched matmul; there is no Python loop over heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

__all__ = ["LHC", "same_avg_pool", "same_max_pool"]


def _same_pads(kernel: int) -> tuple[int, int]:
    """TensorFlow 'same' padding for stride 1: the extra cell of an even kernel goes after."""
    before = (kernel - 1) // 2
    return before, kernel - 1 - before


def _inverse_count(h: int, w: int, kernel: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 1, H, W): 1 / number of real (unpadded) cells in each 'same' window."""
    lo, hi = _same_pads(kernel)
    ones = torch.ones(1, 1, h, w, dtype=torch.float32, device=like.device)
    count = F.avg_pool2d(F.pad(ones, (lo, hi, lo, hi)), kernel, stride=1, divisor_override=1)
    return count.reciprocal().to(like.dtype)


def same_avg_pool(x: torch.Tensor, kernel: int, *, method: str | None = None) -> torch.Tensor:
    """Keras ``AvgPool2D(kernel, strides=1, padding='same')``: padded cells are not counted.

    On the CPU the window sum is a depthwise convolution with a ones kernel times 1/count
    (faster than ``avg_pool2d`` there, forward+backward, same values to ~1 ulp);
    on other devices ``avg_pool2d(count_include_pad=False)``.  ``method`` ("conv" or
    "pool") forces one of the two.  Exporters (ONNX, TorchScript tracing) always get the
    pooling form, which they translate to one standard operator.
    """
    h, w = x.shape[-2:]
    lo, hi = _same_pads(kernel)
    if method is None:
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        method = "conv" if x.device.type == "cpu" and not exporting else "pool"
    if method == "conv":
        c = x.shape[1]
        ones = torch.ones(c, 1, kernel, kernel, dtype=x.dtype, device=x.device)
        if lo == hi:
            summed = F.conv2d(x, ones, padding=lo, groups=c)
        else:
            summed = F.conv2d(F.pad(x, (lo, hi, lo, hi)), ones, groups=c)
        return summed * _inverse_count(h, w, kernel, summed)
    if lo == hi:
        return F.avg_pool2d(x, kernel, stride=1, padding=lo, count_include_pad=False)
    summed = F.avg_pool2d(F.pad(x, (lo, hi, lo, hi)), kernel, stride=1, divisor_override=1)
    return summed * _inverse_count(h, w, kernel, summed)


def same_max_pool(x: torch.Tensor, kernel: int, *, channels_last: bool | None = None) -> torch.Tensor:
    """Keras ``MaxPool2D(kernel, strides=1, padding='same')``: padding acts as -inf.

    On the CPU the pooling runs in channels_last layout (faster there, forward+backward,
    identical values); the result's layout does not matter to the caller, which
    reshapes it into heads.  ``channels_last`` forces the choice.
    """
    if channels_last if channels_last is not None else x.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    lo, hi = _same_pads(kernel)
    if lo == hi:
        return F.max_pool2d(x, kernel, stride=1, padding=lo)
    return F.max_pool2d(F.pad(x, (lo, hi, lo, hi), value=float("-inf")), kernel, stride=1)


def _glorot_uniform_(t: torch.Tensor, fan_in: int, fan_out: int, generator: torch.Generator | None) -> None:
    """Keras ``glorot_uniform``: U(-l, l), l = sqrt(6 / (fan_in + fan_out)); drawn on CPU."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    values = torch.empty(t.shape, dtype=torch.float32).uniform_(-limit, limit, generator=generator)
    with torch.no_grad():
        t.copy_(values)


class LHC(nn.Module):
    """Local multi-head channel self-attention, input and output (B, C, H, W).

    Args:
        channels: C, the number of channels (the attention tokens).
        heads: n, the number of heads; H*W must be divisible by it.
        dim: d, the per-head embedding dim of the shared query/key map (also the base of
            the dynamic scaling, docs/protocol.md §3 step 5).
        pool: p, the query/key pooling size (value pooling is fixed at 3, as in the code).
        kernel: s, the value convolution kernel.
        scale: g, the constant of the dynamic scaling exponent.
        controller: None, or the initial value of the LHC-NetC scalar w (docs/protocol.md §3,
            LHC-NetC): the output becomes ``x + A * (1 + tanh(w))``.
        size: the spatial size the module sees, ``H`` (square) or ``(H, W)``; it fixes
            ``r = H*W / heads``, the input width of the per-head dense map.  None makes
            the module lazy: the weights are created at the first forward call.

    Attributes:
        enabled: False makes the module return its input unchanged (ablation "off").
        record: True keeps detached ``last_attention`` (B, heads, C, r), the attention A
            before the residual and before controller scaling, and ``last_weights``
            (B, heads, C, C), the softmax weights, of the last forward call.
    """

    def __init__(
        self,
        channels: int,
        *,
        heads: int,
        dim: int,
        pool: int = 3,
        kernel: int = 3,
        scale: float = 1.0,
        controller: float | None = None,
        size: int | tuple[int, int] | None = None,
        name: str = "LHC",
    ) -> None:
        super().__init__()
        for label, value in (
            ("channels", channels),
            ("heads", heads),
            ("dim", dim),
            ("pool", pool),
            ("kernel", kernel),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelError(f"{name}: {label} must be a positive integer, got {value!r}")
        self.name = name
        self.channels = channels
        self.heads = heads
        self.dim = dim
        self.pool = pool
        self.kernel = kernel
        self.scale = float(scale)
        self.value_pool = 3  # hard-coded in the reference LHC_Module
        self.enabled = True
        self.record = False
        self.last_attention: torch.Tensor | None = None
        self.last_weights: torch.Tensor | None = None

        self.tokens: int | None = None  # H*W the weights were built for
        self.spatial: tuple[int, int] | None = None
        # Per-head dense map shared by query and key (eq. 3): qk_weight[h] is the Keras
        # kernel (r, d) of head h, so q~_h = q_h @ qk_weight[h] + qk_bias[h].
        self.qk_weight = nn.Parameter(torch.empty(0))
        self.qk_bias = nn.Parameter(torch.empty(heads, dim))
        # Dynamic-scaling dense layer Wp, C -> C, shared by all heads (eq. 5).
        self.p = nn.Linear(channels, channels)
        # Value convolution, CxC, 'same' zero padding, with bias (eq. 1).
        self.v = nn.Conv2d(channels, channels, kernel, padding=0 if kernel % 2 == 0 else kernel // 2)
        self.controller_init = None if controller is None else float(controller)
        if controller is not None:
            self.controller = nn.Parameter(torch.tensor(float(controller)))
        else:
            self.register_parameter("controller", None)
        if size is not None:
            self._build(size)
        self.reset_parameters()

    # ------------------------------------------------------------------ construction

    def _build(self, size: int | tuple[int, int]) -> None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if h <= 0 or w <= 0:
            raise ModelError(f"{self.name}: spatial size must be positive, got {h}x{w}")
        if (h * w) % self.heads:
            raise ModelError(f"{self.name}: H*W = {h}x{w} = {h * w} positions is not divisible by heads = {self.heads}")
        self.spatial = (h, w)
        self.tokens = h * w
        r = self.tokens // self.heads
        self.qk_weight = nn.Parameter(torch.empty(self.heads, r, self.dim, device=self.qk_bias.device))

    @property
    def head_size(self) -> int | None:
        """r = H*W / heads, the number of positions in one head's stripe."""
        return None if self.tokens is None else self.tokens // self.heads

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Deterministic Keras-default initialisation (the reference ``LHC_Module``).

        Dense and Conv2D kernels are Glorot-uniform with zero biases; the controller goes
        back to its initial value.  Values are drawn on the CPU from ``generator`` (the
        global generator when None), so the same seed gives the same weights on any device.
        """
        if self.tokens is not None:
            r = self.tokens // self.heads
            for h in range(self.heads):
                _glorot_uniform_(self.qk_weight[h], r, self.dim, generator)
        _glorot_uniform_(self.p.weight, self.channels, self.channels, generator)
        k2 = self.kernel * self.kernel
        _glorot_uniform_(self.v.weight, k2 * self.channels, k2 * self.channels, generator)
        with torch.no_grad():
            self.qk_bias.zero_()
            self.p.bias.zero_()
            self.v.bias.zero_()
            if self.controller is not None:
                self.controller.fill_(self.controller_init)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A lazy module (size=None) takes its r from the stored qk_weight.
        key = prefix + "qk_weight"
        if self.tokens is None and key in state_dict and state_dict[key].dim() == 3:
            heads, r, _ = state_dict[key].shape
            self.tokens = heads * r
            self.qk_weight = nn.Parameter(torch.empty(state_dict[key].shape, device=self.qk_bias.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        parts = [
            f"{self.channels}",
            f"heads={self.heads}",
            f"dim={self.dim}",
            f"pool={self.pool}",
            f"kernel={self.kernel}",
            f"scale={self.scale}",
        ]
        if self.spatial is not None:
            parts.append(f"size={self.spatial[0]}x{self.spatial[1]}")
        if self.controller is not None:
            parts.append("controller=True")
        return ", ".join(parts)

    # ------------------------------------------------------------------ forward

    def _heads_first(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (heads, B*C, r): row-major positions cut into stripes (step 2)."""
        b, c = t.shape[:2]
        t = t.reshape(b, c, self.heads, -1)  # (B, C, heads, r)
        return t.permute(2, 0, 1, 3).reshape(self.heads, b * c, -1)  # (heads, B*C, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        b, c, h, w = x.shape
        if c != self.channels:
            raise ModelError(f"{self.name}: expects {self.channels} channels, got an input with {c}")
        if (h * w) % self.heads:
            raise ModelError(f"{self.name}: H*W = {h}x{w} = {h * w} positions is not divisible by heads = {self.heads}")
        if self.tokens is None:  # lazy module: build the per-head maps for this size
            self._build((h, w))
            self.reset_parameters()
        elif h * w != self.tokens:
            raise ModelError(
                f"{self.name}: built for {self.tokens} positions (r = {self.head_size} per head), "
                f"got an input of {h}x{w} = {h * w}"
            )

        # Step 1: query / key / value sources, all (B, C, H, W).
        q_src = same_avg_pool(x, self.pool)
        k_src = same_max_pool(x, self.pool)
        if self.kernel % 2 == 0:
            lo, hi = _same_pads(self.kernel)
            value = self.v(F.pad(x, (lo, hi, lo, hi)))
        else:
            value = self.v(x)
        value = same_avg_pool(value, self.value_pool)

        # Steps 2-3: split into heads and embed query and key with the same per-head map.
        # Heads lead the layout so that one bmm over heads applies each head's own weight
        # to all B*C rows at once (no copy of the weight per batch element).
        n, r = self.heads, (h * w) // self.heads
        bias = self.qk_bias.unsqueeze(1)  # (heads, 1, d)
        q = torch.baddbmm(bias, self._heads_first(q_src), self.qk_weight)  # (heads, B*C, d)
        k = torch.baddbmm(bias, self._heads_first(k_src), self.qk_weight)  # (heads, B*C, d)
        q = q.view(n, b, c, self.dim)  # (heads, B, C, d)
        k = k.view(n, b, c, self.dim)  # (heads, B, C, d)

        # Steps 4-5: scores S = q k^T between channels, and the dynamic scaling
        # S / d**(g + T) with T = sigmoid(Wp mean_j S_ij + bp), an exponent per (head, batch,
        # query channel).  Both are computed without extra passes over the (C, C) scores:
        # mean_j S_ij = q_i . mean_j k_j, and dividing row i of S by d**(g + T_i) is scaling
        # q_i before the product.
        # Under autocast the scores, their scaling and the softmax stay in float32, as in
        # fused attention kernels: with bf16 scores LHC-Net's bf16-vs-float32 logit error
        # was twice what all-float32 LHC modules give; now it is within 20% of it.
        # Without autocast the .float() calls are no-ops.
        with torch.autocast(x.device.type, enabled=False):
            q, k = q.float(), k.float()
            k_mean = k.mean(dim=2, keepdim=True)  # (heads, B, 1, d)
            sp = torch.sigmoid(self.p((q * k_mean).sum(dim=-1)))  # (heads, B, C)
            inv = torch.exp((self.scale + sp) * -math.log(self.dim))  # (heads, B, C)
            scaled = torch.matmul(q * inv.unsqueeze(-1), k.transpose(-1, -2))  # (heads, B, C, C)
            # Step 6: softmax over key channels, weighted sum of the value stripes.
            weights = torch.softmax(scaled, dim=-1)  # (heads, B, C, C)
        att = torch.matmul(weights, self._heads_first(value).view(n, b, c, r))  # (heads, B, C, r)

        if self.record:
            self.last_attention = att.detach().transpose(0, 1).contiguous()  # (B, heads, C, r)
            self.last_weights = weights.detach().transpose(0, 1).contiguous()  # (B, heads, C, C)

        # Step 7: reassemble the stripes in order and add the residual.
        att = att.permute(1, 2, 0, 3).reshape(b, c, h, w)  # (heads, B, C, r) -> (B, C, heads, r) -> (B, C, H, W)
        if self.controller is not None:
            att = att * (1.0 + torch.tanh(self.controller))
        return x + att
