"""Training curves (loss and accuracy, train vs validation) drawn from ``metrics.jsonl``.

The plot is made from the metrics file alone, so it can be redrawn at any time without
re-running anything (the engine redraws it during a stage and when it ends).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..files import atomic_path, read_jsonl

__all__ = ["plot_curves"]


def plot_curves(
    metrics: str | os.PathLike | Iterable[Mapping],
    out_path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Write a two-panel PNG (loss, accuracy; train vs validation) of per-epoch metrics.

    ``metrics`` is a ``metrics.jsonl`` path or its rows (``epoch``, ``train_loss``,
    ``val_loss``, ``train_accuracy``, ``val_accuracy``).  The best validation accuracy is
    marked with a star and named in the legend under the axes, clear of the curves.  The
    file is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_jsonl(metrics) if isinstance(metrics, (str, os.PathLike)) else list(metrics)
    out_path = Path(out_path)
    epochs = [r["epoch"] for r in rows]

    def series(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) is not None else float("nan") for r in rows]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4.4), constrained_layout=True)
    marker = "o" if len(rows) <= 30 else None
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        ax.plot(epochs, series(f"train_{key}"), marker=marker, label="train")
        ax.plot(epochs, series(f"val_{key}"), marker=marker, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        if len(epochs) == 1:  # one point: one tick, some room around it
            ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
            ax.set_xticks(epochs)
    val_acc = series("val_accuracy")
    finite = [(a, e) for a, e in zip(val_acc, epochs) if a == a]
    best_label = None
    if finite:
        best_acc, best_epoch = max(finite, key=lambda t: (t[0], -t[1]))  # ties: the earlier epoch
        best_label = f"best validation {best_acc:.4f} @ epoch {best_epoch}"
        ax_acc.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=best_label)
        ax_acc.plot([best_epoch], [best_acc], marker="*", markersize=12, color="C1", linestyle="none")
    # The best epoch is named in the legend, below the axes, where it cannot cover a curve.
    ax_loss.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=9, frameon=False)
    ax_acc.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    try:
        with atomic_path(out_path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return out_path
