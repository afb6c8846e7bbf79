"""Pictures of evaluation results (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..files import atomic_path
from .metrics import normalise_rows

__all__ = ["plot_confusion"]


def plot_confusion(
    panels: Sequence[tuple[str, np.ndarray]],
    class_names: Sequence[str],
    path: str | os.PathLike,
) -> None:
    """One confusion matrix per ``(title, counts)`` panel, side by side, in one PNG.

    Cells are coloured by the row-normalised value (the recall of the true class on the
    diagonal) and annotated with the count and that percentage.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    cell = 0.62 + 0.02 * max(0, 10 - k)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(len(panels) * (k * cell + 1.8), k * cell + 1.6), squeeze=False, constrained_layout=True
    )
    image = None
    for ax, (title, counts) in zip(axes[0], panels):
        counts = np.asarray(counts)
        rates = normalise_rows(counts)
        image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(k):
            for j in range(k):
                colour = "white" if rates[i, j] > 0.55 else "black"
                ax.text(j, i, f"{counts[i, j]}\n{100 * rates[i, j]:.0f}%", ha="center", va="center",
                        fontsize=7, color=colour)
        ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), class_names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="fraction of the true class")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
