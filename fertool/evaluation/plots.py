"""Pictures of evaluation results (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence

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
    diagonal) and annotated with the count and that percentage.  Sized so that two panels
    of 7-8 classes fit a 1068 px page column at 100 dpi without being scaled down, every
    number at 9 pt or more (the panels share the class names on the left and the colour
    scale 0-100% of the row, said in the title, instead of a colour bar).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    cell = 0.55
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(len(panels) * (k * cell + 0.3) + 1.1, k * cell + 1.7),
        squeeze=False,
        constrained_layout=True,
        sharey=True,
    )
    for index, (ax, (title, counts)) in enumerate(zip(axes[0], panels)):
        counts = np.asarray(counts)
        rates = normalise_rows(counts)
        ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(k):
            for j in range(k):
                colour = "white" if rates[i, j] > 0.55 else "black"
                ax.text(
                    j,
                    i,
                    f"{counts[i, j]}\n{100 * rates[i, j]:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color=colour,
                )
        ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=9)
        ax.set_yticks(range(k), class_names, fontsize=9)
        ax.set_xlabel("predicted", fontsize=10)
        if index == 0:
            ax.set_ylabel("true", fontsize=10)
        ax.set_title(f"{title} (colour: % of the row)", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
