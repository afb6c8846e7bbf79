"""Pictures of the analysis commands (matplotlib, Agg backend, written atomically).

Every function takes plain arrays / dicts and a destination path; none runs a model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..files import atomic_path

__all__ = ["plot_runs", "plot_ablation", "plot_head_correlation", "plot_attention", "attention_colour_range"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int = 100, tight: bool = True) -> None:
    """``tight``: cropped to the drawing (pictures of one kind then differ in size)."""
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)


def plot_runs(results: Sequence[Any], path: str | os.PathLike, *, groups: Sequence[str], title: str = "") -> None:
    """Strip plot: test accuracy of every run per group; TTA as a second (hollow) marker.

    ``results`` are :class:`fertool.analysis.report.RunResult` s, drawn in the order of
    ``groups``; rejected runs are grey crosses, superseded stages are not drawn.
    """
    plt = _pyplot()
    shown = {r.group for r in results if r.status != "superseded"}
    groups = [g for g in groups if g in shown]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.8 * len(groups) + 1.5), 4.5))
    rng = np.random.default_rng(0)  # fixed jitter: the same runs give the same picture
    labels_done: set[str] = set()

    def mark(x, y, label, **kw):
        ax.scatter(x, y, label=None if label in labels_done else label, **kw)
        labels_done.add(label)

    for gi, group in enumerate(groups):
        for r in (r for r in results if r.group == group and r.status != "superseded"):
            x = gi + rng.uniform(-0.12, 0.12)
            if r.status == "rejected":
                mark(x - 0.1, 100 * r.accuracy, "rejected (no TTA)", marker="x", color="0.5")
                continue
            mark(x - 0.1, 100 * r.accuracy, "no TTA", marker="o", color="C0", alpha=0.8)
            if r.tta_accuracy is not None:
                mark(x + 0.1, 100 * r.tta_accuracy, "TTA", marker="^", facecolors="none", edgecolors="C3")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=15 if len(groups) > 3 else 0)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    if labels_done:
        ax.legend(loc="best", fontsize=9)
    _save(fig, path)


def plot_ablation(results: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str = "") -> None:
    """Horizontal bars: accuracy change (percentage points) of each ablated set, per mode.

    ``results`` are the ``ablation.json`` rows (``mode``, ``set``, ``delta``, ``tta_delta``).
    """
    plt = _pyplot()
    modes = list(dict.fromkeys(r["mode"] for r in results))
    sets = list(dict.fromkeys(tuple(r["set"]) for r in results))
    has_tta = any(r.get("tta_delta") is not None for r in results)
    series = [(m, "delta") for m in modes] + ([(m, "tta_delta") for m in modes] if has_tta else [])
    height = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(sets) * max(1, len(series)) ** 0.5))
    lookup = {(r["mode"], tuple(r["set"])): r for r in results}
    for si, (mode, key) in enumerate(series):
        ys, xs = [], []
        for i, s in enumerate(sets):
            row = lookup.get((mode, s))
            if row is not None and row.get(key) is not None:
                ys.append(i + (si - (len(series) - 1) / 2) * height)
                xs.append(100 * row[key])
        label = mode + (" (TTA)" if key == "tta_delta" else "")
        ax.barh(ys, xs, height=height, label=label, color=f"C{si}", hatch="//" if key == "tta_delta" else None)
    ax.set_yticks(range(len(sets)))
    ax.set_yticklabels(["+".join(s) for s in sets], fontsize=10)
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("accuracy change vs the full model (percentage points)")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize=9)
    _save(fig, path)


def plot_head_correlation(corr: np.ndarray, path: str | os.PathLike, *, title: str = "") -> None:
    """Heatmap of a heads x heads correlation matrix, values written in the cells.

    Every module's picture has the same size and the same colour scale (-1 to 1), so that
    the pictures side by side on the report page show their numbers at one size and their
    colours mean the same.  A module with one head has no such matrix; ``ablate`` notes it
    instead of drawing one.
    """
    plt = _pyplot()
    n = corr.shape[0]
    side = max(4.4, 0.5 * n)  # up to 8 heads one size; more heads, bigger cells
    fig, ax = plt.subplots(figsize=(side + 1.4, side + 0.5), constrained_layout=True)
    im = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
    for i in range(n):
        for j in range(n):
            if np.isfinite(corr[i, j]):
                ax.text(
                    j,
                    i,
                    f"{corr[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=10 if n <= 8 else 9,
                    color="w" if abs(corr[i, j]) > 0.6 else "k",
                )
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels([str(i + 1) for i in range(n)], fontsize=10)
    ax.set_yticklabels([str(i + 1) for i in range(n)], fontsize=10)
    ax.set_xlabel("head", fontsize=10)
    ax.set_ylabel("head", fontsize=10)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("Pearson correlation (same scale, -1 to 1, for every module)", fontsize=9)
    bar.ax.tick_params(labelsize=9)
    if title:
        ax.set_title(title, fontsize=10, wrap=True)
    _save(fig, path, tight=False)


def attention_colour_range(relative: np.ndarray, share: float = 0.02) -> tuple[float, float, float]:
    """(low, high, fraction outside) of a colour range for log2(W x C) values chosen from the
    data: the ``share`` and ``1 - share`` quantiles, widened to include 0 (uniform attention,
    drawn white) and at least 0.1 wide.  Values outside are drawn in the end colours."""
    finite = relative[np.isfinite(relative)]
    if finite.size == 0:
        return -1.0, 1.0, 0.0
    low, high = (float(v) for v in np.quantile(finite, [share, 1 - share]))
    low, high = min(low, -0.05), max(high, 0.05)
    outside = float(((finite < low) | (finite > high)).mean())
    return low, high, outside


def plot_attention(
    image: np.ndarray,
    weights: np.ndarray,
    energy: np.ndarray,
    stripe_rows: float,
    path: str | os.PathLike,
    *,
    title: str = "",
) -> None:
    """One image through one LHC module.

    Args:
        image: (S, S, 3) float 0..255, the network input.
        weights: (heads, C, C) softmax attention weights W_h (rows: query channel).
        energy: (H, W) output energy mean_c |A[c, y, x]| of the module's attention output.
        stripe_rows: stripe height in rows (r / W, may be fractional); stripes are drawn.

    The heads' W are drawn as log2(W x C) (0, white: uniform attention) on one colour bar
    for all heads whose range comes from the data (:func:`attention_colour_range`); the
    picture says how many values lie outside it.  Sized for a 1068 px page column: four
    panels a row, text at 9 pt or more.
    """
    from matplotlib.colors import TwoSlopeNorm

    plt = _pyplot()
    heads = weights.shape[0]
    panels = 2 + heads
    ncols = min(4, panels)
    nrows = -(-panels // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(2.6 * ncols, 2.7 * nrows + 0.9),
        squeeze=False,
        gridspec_kw={"wspace": 0.45, "hspace": 0.35},
    )
    for ax in axes.flat:
        ax.axis("off")
    size = image.shape[0]
    shown = np.clip(image / 255.0, 0, 1)
    axes[0, 0].imshow(shown)
    axes[0, 0].set_title("input", fontsize=10)
    ax = axes.flat[1]
    ax.imshow(shown)
    h, w = energy.shape
    im = ax.imshow(energy, cmap="inferno", alpha=0.6, extent=(0, size, size, 0), interpolation="nearest")
    # Stripe boundaries: head k covers flattened positions [k*r, (k+1)*r), row-major.
    for k in range(1, heads):
        y = k * stripe_rows * size / h
        ax.axhline(y, color="c", lw=0.8)
    if heads <= 8:  # mean energy of each head's stripe (more stripes have no room for a number)
        per_stripe = energy.reshape(heads, -1).mean(axis=1)  # (heads,)
        for k, value in enumerate(per_stripe):
            y = (k + 0.5) * stripe_rows * size / h
            ax.text(
                size * 0.02,
                y,
                f"{value:.3g}",
                fontsize=9,
                va="center",
                ha="left",
                color="w",
                bbox={"facecolor": "k", "alpha": 0.5, "pad": 1, "lw": 0},
            )
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)
    ax.set_title("output energy mean|A|", fontsize=10)
    energy_bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    energy_bar.ax.tick_params(labelsize=9)
    # Softmax rows of C weights average 1/C, so raw weights look uniformly dark.  Shown as
    # log2(W x C): 0 = uniform attention, +1 = twice the uniform weight, -1 = half.  Peaked
    # heads put most weights near 0 (log2 far below -6): a fixed range painted them one
    # colour, so the range comes from the data's quantiles and the clipping is stated.
    channels = weights.shape[-1]
    relative = np.log2(np.maximum(weights * channels, 2.0**-60))  # (heads, C, C)
    low, high, outside = attention_colour_range(relative)
    norm = TwoSlopeNorm(vmin=low, vcenter=0.0, vmax=high)
    # The channel axis names go on a head in the first column, away from the energy colour bar.
    labelled = next((hd for hd in range(heads) if (2 + hd) % ncols == 0), 0)
    head_image = None
    for hd in range(heads):
        ax = axes.flat[2 + hd]
        ax.axis("on")
        head_image = ax.imshow(relative[hd], cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set_title(f"head {hd + 1}: W (C x C)", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if hd == labelled:
            ax.set_xlabel(f"key channel 1..{channels}", fontsize=9)
            ax.set_ylabel(f"query channel 1..{channels}", fontsize=9)
    if head_image is not None:
        bar = fig.colorbar(head_image, ax=list(axes.flat[2 : 2 + heads]), fraction=0.03, pad=0.02)
        bar.set_label("log2(W x C); 0 = uniform", fontsize=9)
        bar.ax.tick_params(labelsize=9)
    fig.text(
        0.5,
        0.0,
        f"Row i of W: the weights with which query channel i gathers the {channels} key channels "
        f"over its head's stripe (a row sums to 1). Colour: log2 of the weight over the uniform "
        f"1/{channels}; white = uniform, red = more, blue = less. Colour range {low:+.1f} to {high:+.1f}, "
        f"the 2-98% quantiles of these values; {100 * outside:.0f}% lie outside and are drawn in the "
        f"end colours.",
        ha="center",
        va="top",
        fontsize=9,
        wrap=True,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)
