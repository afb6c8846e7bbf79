"""Head redundancy of the LHC modules and the LHC-NetC controller weights (docs/protocol.md §6).

Correlation between heads
    Head h of a module produces ``A_h = W_h v_h``, a (C, r) matrix per image (C channels,
    r = H*W/heads positions of its stripe; docs/protocol.md §3 step 6), before the residual and before
    any controller scaling.  Flattened, every head gives one value per *feature*
    ``(image b, channel c, position j)`` of its stripe, ``j = 0..r-1``.  The correlation of
    heads h and k is the Pearson correlation of these two paired samples over all images,
    channels and positions::

        rho_hk = cov(a_h, a_k) / (std(a_h) std(a_k)),   a_h = (A_h[b, c, j])_{b, c, j}

    i.e. heads are compared feature-wise, as one compares the outputs of the heads of a
    Transformer layer (same shape, position j of head h paired with position j of head k;
    for LHC those are the j-th cells of two different stripes).  The redundancy of a module
    is the mean of ``|rho_hk|`` over the ``n (n - 1)`` off-diagonal pairs (the paper: 63% for
    LHC-Net); overall it is the mean over all off-diagonal pairs of all modules with more
    than one head (pooled), and the plain mean of the module values is given too.  A module
    with one head has no pair: n/a.  A head whose output is constant has no correlation
    (NaN in the matrix, left out of the means).

    Memory: :class:`HeadCorrelation` keeps only the count, the per-head mean and the matrix
    of centred sums of products, merged batch by batch in float64 (Chan et al.'s pairwise
    update), never the outputs themselves.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "HeadCorrelation",
    "mean_abs_offdiag",
    "record_heads",
    "controller_weights",
    "head_summary",
]


class HeadCorrelation:
    """Running Pearson correlation between the ``heads`` outputs of one LHC module."""

    def __init__(self, heads: int) -> None:
        self.heads = int(heads)
        self.count = 0
        self.mean = np.zeros(self.heads, dtype=np.float64)
        self.comoment = np.zeros((self.heads, self.heads), dtype=np.float64)  # sum of centred products

    def update(self, att: torch.Tensor) -> None:
        """Add a batch of head outputs ``att`` (B, heads, C, r) (the LHC ``last_attention``)."""
        if att.ndim != 4 or att.shape[1] != self.heads:
            raise ValueError(f"expected (B, {self.heads}, C, r) head outputs, got {tuple(att.shape)}")
        per_image = att.shape[2] * att.shape[3]
        step = max(1, self.CHUNK // max(1, per_image))  # bounds the float64 copy
        for start in range(0, att.shape[0], step):
            self._update(att[start : start + step])

    #: Values per head converted to float64 at a time.
    CHUNK = 1 << 22

    def _update(self, att: torch.Tensor) -> None:
        x = att.detach().to(torch.float64).transpose(0, 1).reshape(self.heads, -1)  # (heads, B*C*r)
        n = x.shape[1]
        if n == 0:
            return
        mean = x.mean(dim=1)  # (heads,)
        xc = x - mean[:, None]
        comoment = (xc @ xc.T).cpu().numpy()  # (heads, heads)
        mean = mean.cpu().numpy()
        total = self.count + n
        delta = mean - self.mean
        self.comoment += comoment + np.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def covariance(self) -> np.ndarray:
        """Population covariance (heads, heads) of the head outputs seen so far."""
        if self.count == 0:
            return np.full((self.heads, self.heads), np.nan)
        return self.comoment / self.count

    def correlation(self) -> np.ndarray:
        """Pearson correlation matrix (heads, heads); NaN where a head is constant."""
        cov = self.covariance()
        std = np.sqrt(np.clip(np.diag(cov), 0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = cov / np.outer(std, std)
        corr[~np.isfinite(corr)] = np.nan
        np.clip(corr, -1.0, 1.0, out=corr)
        idx = np.arange(self.heads)
        corr[idx, idx] = np.where(std > 0, 1.0, np.nan)
        return corr


def _offdiag(corr: np.ndarray) -> np.ndarray:
    n = corr.shape[0]
    return corr[~np.eye(n, dtype=bool)]


def mean_abs_offdiag(corr: np.ndarray) -> float | None:
    """Mean of |rho| over the off-diagonal entries (NaNs ignored); None for one head."""
    vals = _offdiag(np.asarray(corr, dtype=np.float64))
    vals = vals[np.isfinite(vals)]
    return float(np.abs(vals).mean()) if len(vals) else None


@contextlib.contextmanager
def record_heads(model: nn.Module) -> Iterator[dict[str, HeadCorrelation]]:
    """Accumulate head correlations of every enabled LHC module during forward passes.

    Sets ``record=True`` on the modules and hooks them; after each forward call the
    module's ``last_attention`` (B, heads, C, r) is added to its :class:`HeadCorrelation`
    and released.  Yields ``{name: HeadCorrelation}``; the modules' ``record`` flags and
    hooks are restored on exit.  Run the model on the plain images only (no TTA views).
    """
    modules = model.lhc_modules()
    stats = {name: HeadCorrelation(m.heads) for name, m in modules.items()}
    saved = {name: m.record for name, m in modules.items()}
    handles = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            att = module.last_attention
            if att is not None:
                stats[name].update(att)
                module.last_attention = None  # keep memory flat: only sufficient statistics stay
                module.last_weights = None

        return hook

    try:
        for name, m in modules.items():
            m.record = True
            m.last_attention = None
            handles.append(m.register_forward_hook(make_hook(name)))
        yield stats
    finally:
        for h in handles:
            h.remove()
        for name, m in modules.items():
            m.record = saved[name]
            m.last_attention = None
            m.last_weights = None


def controller_weights(model: nn.Module) -> dict[str, dict[str, float]] | None:
    """LHC-NetC controllers: ``{name: {"w", "tanh_w", "gain"}}`` with gain = 1 + tanh(w).

    The module output is ``x + A * gain`` (docs/protocol.md §3, LHC-NetC).  None for an LHC-Net.
    """
    out = {}
    for name, m in model.lhc_modules().items():
        if m.controller is not None:
            w = float(m.controller.detach().cpu())
            out[name] = {"w": w, "tanh_w": math.tanh(w), "gain": 1.0 + math.tanh(w)}
    return out or None


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def head_summary(stats: Mapping[str, HeadCorrelation], modules: Mapping[str, Any]) -> dict:
    """JSON-ready head analysis: per module the matrix and mean |off-diagonal|, and overall."""
    per_module: dict[str, Any] = {}
    pooled: list[np.ndarray] = []
    module_means: list[float] = []
    for name, st in stats.items():
        entry: dict[str, Any] = {"heads": st.heads, "samples": st.count}
        if st.heads < 2:
            entry.update({"correlation": None, "mean_abs_offdiag": None, "note": "n/a: one head"})
        elif st.count == 0:
            entry.update({"correlation": None, "mean_abs_offdiag": None, "note": "n/a: module not run"})
        else:
            corr = st.correlation()
            value = mean_abs_offdiag(corr)
            entry["correlation"] = [[_finite(v) for v in row] for row in corr.tolist()]
            entry["mean_abs_offdiag"] = value
            offdiag = _offdiag(corr)
            pooled.append(np.abs(offdiag[np.isfinite(offdiag)]))
            if value is not None:
                module_means.append(value)
        per_module[name] = entry
    all_pairs = np.concatenate(pooled) if pooled else np.zeros(0)
    return {
        "definition": "Pearson correlation between heads over (image, channel, stripe position) "
        "of the attention outputs A_h (before residual and controller); "
        "mean |rho| over off-diagonal pairs",
        "modules": per_module,
        "overall_mean_abs_offdiag": float(all_pairs.mean()) if len(all_pairs) else None,
        "mean_of_module_means": float(np.mean(module_means)) if module_means else None,
        "controller": None,
    }
