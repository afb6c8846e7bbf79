"""The LHC module: local multi-head channel self-attention (SPEC §3, paper eqs. 1-17).

Pecoraro et al., "Local Multi-Head Channel Self-Attention for Facial Expression
Recognition", Information 13(9):419, 2022.  The semantics are those of the authors'
Keras ``LHC_Module`` (``reference/README.md`` §1), which produced the published numbers:

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


def same_avg_pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Keras ``AvgPool2D(kernel, strides=1, padding='same')``: padded cells are not counted."""
    if kernel % 2 == 1:
        return F.avg_pool2d(x, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    lo, hi = _same_pads(kernel)
    summed = F.avg_pool2d(F.pad(x, (lo, hi, lo, hi)), kernel, stride=1, divisor_override=1)
    ones = torch.ones((1, 1) + tuple(x.shape[-2:]), dtype=x.dtype, device=x.device)
    count = F.avg_pool2d(F.pad(ones, (lo, hi, lo, hi)), kernel, stride=1, divisor_override=1)
    return summed / count


def same_max_pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Keras ``MaxPool2D(kernel, strides=1, padding='same')``: padding acts as -inf."""
    if kernel % 2 == 1:
        return F.max_pool2d(x, kernel, stride=1, padding=kernel // 2)
    lo, hi = _same_pads(kernel)
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
            the dynamic scaling, SPEC §3 step 5).
        pool: p, the query/key pooling size (value pooling is fixed at 3, as in the code).
        kernel: s, the value convolution kernel.
        scale: g, the constant of the dynamic scaling exponent.
        controller: None, or the initial value of the LHC-NetC scalar w (SPEC §3,
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
        for label, value in (("channels", channels), ("heads", heads), ("dim", dim), ("pool", pool),
                             ("kernel", kernel)):
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
            raise ModelError(
                f"{self.name}: H*W = {h}x{w} = {h * w} positions is not divisible by heads = {self.heads}"
            )
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
        parts = [f"{self.channels}", f"heads={self.heads}", f"dim={self.dim}", f"pool={self.pool}",
                 f"kernel={self.kernel}", f"scale={self.scale}"]
        if self.spatial is not None:
            parts.append(f"size={self.spatial[0]}x{self.spatial[1]}")
        if self.controller is not None:
            parts.append("controller=True")
        return ", ".join(parts)

    # ------------------------------------------------------------------ forward

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, heads, C, r): row-major positions cut into stripes (step 2)."""
        b, c = t.shape[:2]
        t = t.reshape(b, c, self.heads, -1)  # (B, C, heads, r)
        return t.transpose(1, 2)  # (B, heads, C, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        b, c, h, w = x.shape
        if c != self.channels:
            raise ModelError(f"{self.name}: expects {self.channels} channels, got an input with {c}")
        if (h * w) % self.heads:
            raise ModelError(
                f"{self.name}: H*W = {h}x{w} = {h * w} positions is not divisible by heads = {self.heads}"
            )
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

        # Steps 2-3: split into heads and embed query and key with the same per-head map,
        # in one batched matmul over (B, heads) with the key stacked under the query.
        qk = torch.cat([self._split_heads(q_src), self._split_heads(k_src)], dim=2)  # (B, heads, 2C, r)
        qk = torch.matmul(qk, self.qk_weight) + self.qk_bias[:, None, :]  # (B, heads, 2C, d)
        q, k = qk[:, :, :c], qk[:, :, c:]  # (B, heads, C, d) each

        # Step 4: scores between channels.
        scores = torch.matmul(q, k.transpose(-1, -2))  # (B, heads, C, C)
        # Step 5: dynamic scaling, exponent per (batch, head, query channel).
        sp = torch.sigmoid(self.p(scores.mean(dim=-1)))  # (B, heads, C)
        base = torch.tensor(float(self.dim), dtype=scores.dtype, device=scores.device)
        scaled = scores / torch.pow(base, self.scale + sp).unsqueeze(-1)  # (B, heads, C, C)
        # Step 6: softmax over key channels, weighted sum of the value stripes.
        weights = torch.softmax(scaled, dim=-1)  # (B, heads, C, C)
        att = torch.matmul(weights, self._split_heads(value))  # (B, heads, C, r)

        if self.record:
            self.last_attention = att.detach()
            self.last_weights = weights.detach()

        # Step 7: reassemble the stripes in order and add the residual.
        att = att.transpose(1, 2).reshape(b, c, h, w)  # (B, heads, C, r) -> (B, C, heads, r) -> (B, C, H, W)
        if self.controller is not None:
            att = att * (1.0 + torch.tanh(self.controller))
        return x + att
