"""Every number and word in the figures the report shows can be read at 1280 px (issue 25).

The HTML page is 1068 px wide inside a 1280 px window (max-width 1100 px less its padding);
a wider PNG is scaled down to fit.  Each saved figure's text artists are checked: their
height on the page, ``fontsize`` (pt) x dpi / 72 x the scale-down, must be at least 12 px,
the size of 9 pt text at 96 px per inch.
"""

from __future__ import annotations

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

PAGE_WIDTH_PX = 1068
MIN_TEXT_PX = 12.0  # 9 pt at 96 px/in
CLASSES = ["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Neutral"]


@pytest.fixture
def saved(monkeypatch):
    """Records (texts as (string, fontsize pt), dpi, width in px) of every figure saved."""
    records = []
    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        dpi = kwargs.get("dpi") or self.dpi
        texts = [
            (t.get_text(), t.get_fontsize()) for t in self.findobj(Text) if t.get_visible() and t.get_text().strip()
        ]
        original(self, fname, *args, **kwargs)
        records.append((texts, float(dpi), Image.open(fname).size[0]))  # before an atomic rename

    monkeypatch.setattr(Figure, "savefig", savefig)
    return records


def too_small(records) -> list[str]:
    problems = []
    for texts, dpi, width in records:
        scale = min(1.0, PAGE_WIDTH_PX / width)
        for text, size in texts:
            shown = size * dpi / 72 * scale
            if shown < MIN_TEXT_PX - 1e-6:
                problems.append(f"{text[:40]!r}: {size:g} pt at {dpi:g} dpi in a {width} px picture = {shown:.1f} px")
    return problems


def test_the_check_finds_small_text(saved, tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(16, 3))  # 1600 px: shown at two thirds
    ax.set_title("tiny", fontsize=9)
    fig.savefig(tmp_path / "a.png", dpi=100)
    plt.close(fig)
    assert too_small(saved) and "tiny" in too_small(saved)[0]


def test_confusion_matrices_plain_and_tta(saved, tmp_path):
    from fertool.evaluation.plots import plot_confusion

    counts = np.full((7, 7), 7) + np.diag([442, 48, 521, 872, 587, 409, 619])
    plot_confusion([("plain", counts), ("TTA (paper)", counts)], CLASSES, tmp_path / "confusion.png")
    assert too_small(saved) == []


def test_training_curves(saved, tmp_path):
    from fertool.engine.plots import plot_curves

    rows = [
        {
            "epoch": e,
            "train_loss": 1.9 - 0.1 * e,
            "val_loss": 1.8 - 0.05 * e,
            "train_accuracy": 0.2 + 0.03 * e,
            "val_accuracy": 0.25 + 0.02 * e,
        }
        for e in range(1, 13)
    ]
    plot_curves(rows, tmp_path / "curves.png", title="stage 2: resnet34v2")
    assert too_small(saved) == []


def test_head_correlations_ablation_and_runs(saved, tmp_path):
    from types import SimpleNamespace

    from fertool.analysis.plots import plot_ablation, plot_head_correlation, plot_runs

    rng = np.random.default_rng(0)
    for heads in (8, 7, 2):
        corr = np.corrcoef(rng.normal(size=(heads, 50)))
        plot_head_correlation(corr, tmp_path / f"heads-{heads}.png", title=f"lhc1: correlation of the {heads} heads")
    modules = [f"lhc{i}" for i in range(1, 6)]
    results = [
        {"mode": mode, "set": [m], "delta": -0.01 * i, "tta_delta": -0.005 * i}
        for mode in ("off", "detrain")
        for i, m in enumerate(modules)
    ]
    plot_ablation(results, tmp_path / "ablation.png", title="LHC-Net on PrivateTest")
    runs = [
        SimpleNamespace(group=g, status="ok", accuracy=0.7 + 0.01 * i, tta_accuracy=0.71 + 0.01 * i)
        for i, g in enumerate(["ResNet34v2", "LHC-Net", "LHC-NetC"] * 3)
    ]
    plot_runs(runs, tmp_path / "runs.png", groups=["ResNet34v2", "LHC-Net", "LHC-NetC"], title="PrivateTest")
    assert too_small(saved) == []


def test_attention_pictures(saved, tmp_path):
    from fertool.analysis.plots import plot_attention

    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4, size=(8, 64, 64))
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    plot_attention(
        rng.uniform(0, 255, (48, 48, 3)),
        weights,
        rng.uniform(0, 2, (12, 12)),
        1.5,
        tmp_path / "attention.png",
        title="image 3, lhc1",
    )
    assert too_small(saved) == []


def test_table_7_lists_the_same_groups_with_and_without_tta():
    from fertool.analysis.stats import run_statistics, table_rows

    groups = {
        "ResNet34v2": {"plain": run_statistics([0.70, 0.71]), "tta": run_statistics([0.72, 0.73])},
        "LHC-Net": {"plain": run_statistics([]), "tta": None},  # every run rejected by the selection rule
        "LHC-NetC": {"plain": run_statistics([0.74]), "tta": None},  # evaluated without TTA
    }
    plain = [g for g, _, _ in table_rows(groups, "plain")]
    tta = table_rows(groups, "tta")
    assert plain == [g for g, _, _ in tta] == ["ResNet34v2", "LHC-NetC"]
    assert tta[1][2]["best"] is None  # n/a, not left out
    assert table_rows({"LHC-NetC": groups["LHC-NetC"]}, "tta") == []  # no TTA at all: no TTA table
