"""The synthetic sample: deterministic, FER2013-format, learnable but not trivial."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fertool.data.csv import SPLITS, iter_rows, load_split
from fertool.data.sample import generate_sample, split_sizes
from fertool.errors import DataError


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate_sample(tmp_path / "a.csv", per_class=4, seed=7)
    b = generate_sample(tmp_path / "b.csv", per_class=4, seed=7)
    c = generate_sample(tmp_path / "c.csv", per_class=4, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_fer2013_format_with_all_splits_and_classes(tmp_path):
    path = generate_sample(tmp_path / "s.csv", per_class=8, seed=0)
    assert path.read_text().splitlines()[0] == "emotion,pixels,Usage"
    rows = list(iter_rows(path))  # parses and validates like any FER2013 CSV
    sizes = split_sizes(8)
    assert sizes == {"Training": 8, "PublicTest": 2, "PrivateTest": 2}
    for split in SPLITS:
        labels = [r.label for r in rows if r.usage == split]
        assert np.bincount(labels, minlength=7).tolist() == [sizes[split]] * 7
    assert [r.usage for r in rows] == sorted((r.usage for r in rows), key=SPLITS.index)  # FER2013 order
    pixels = np.stack([r.pixels for r in rows])
    assert pixels.std() > 20 and len({p.tobytes() for p in pixels}) == len(rows)  # varied, no duplicates


def test_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("keep me")
    with pytest.raises(DataError, match="file exists"):
        generate_sample(path, per_class=1, overwrite=False)
    assert path.read_text() == "keep me"
    generate_sample(path, per_class=1, overwrite=True)
    assert path.read_text().startswith("emotion,pixels,Usage")


def _features(images: np.ndarray) -> np.ndarray:
    small = np.stack([cv2.resize(im, (16, 16), interpolation=cv2.INTER_AREA) for im in images])
    x = small.reshape(len(images), -1).astype(np.float64)
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    return np.hstack([x, np.ones((len(x), 1))])  # + bias


def test_classes_are_learnable_but_not_trivial(tmp_path):
    """A ridge-regression classifier on 16x16 standardised pixels (numpy only) is
    clearly above chance (1/7) on PrivateTest and clearly below perfect."""
    path = generate_sample(tmp_path / "s.csv", per_class=100, seed=0)
    train, test = load_split(path, "Training"), load_split(path, "PrivateTest")
    x, y, xt, yt = _features(train.images), train.labels, _features(test.images), test.labels
    w = np.linalg.solve(x.T @ x + 100 * np.eye(x.shape[1]), x.T @ np.eye(7)[y])
    accuracy = ((xt @ w).argmax(1) == yt).mean()
    assert 0.35 < accuracy < 0.90, accuracy
    # Pixel-wise nearest class mean is much weaker: pose, lighting and background vary a lot.
    means = np.stack([x[y == c].mean(0) for c in range(7)])
    assert ((xt @ means.T).argmax(1) == yt).mean() < accuracy - 0.1


def test_ferplus_sample_has_eight_classes_and_rows_ferplus_drops(tmp_path):
    from fertool.data.ferplus import FERPLUS_CLASSES, read_ferplus
    from fertool.data.sample import generate_ferplus_sample

    root = generate_ferplus_sample(tmp_path / "a", per_class=8, seed=2)
    again = generate_ferplus_sample(tmp_path / "b", per_class=8, seed=2)
    for name in ("fer2013.csv", "fer2013new.csv"):
        assert (root / name).read_bytes() == (again / name).read_bytes()
    rows = list(iter_rows(root / "fer2013.csv"))
    labels = read_ferplus(root / "fer2013new.csv")
    assert len(rows) == len(labels) and [r.usage for r in rows] == [SPLITS[c] for c in labels.splits]
    kept = labels.labels[labels.labels >= 0]
    assert np.bincount(kept[labels.splits[labels.labels >= 0] == 0], minlength=8).tolist() == [8] * len(FERPLUS_CLASSES)
    assert labels.dropped()["count"] > 0 and all(
        labels.dropped()["by_reason"][r] > 0 for r in ("no majority", "unknown", "no FER+ image")
    )
    for mode in ("crossentropy", "plurality"):  # the same rows in every label mode
        assert read_ferplus(root / "fer2013new.csv", mode).labels.tolist() == labels.labels.tolist()
    soft = labels.votes[labels.labels >= 0]
    assert (soft.max(axis=1) < 10).any()  # not one-hot: the probability mode has something to learn from


def test_cli_sample_data_formats(cli_runner, tmp_path):
    from fertool.cli import app

    for fmt, marker in (("ferplus", "fer2013new.csv"), ("folder", "train"), ("rafdb", "EmoLabel")):
        result = cli_runner.invoke(
            app, ["sample-data", "--format", fmt, "--out", str(tmp_path / fmt), "--per-class", "2"]
        )
        assert result.exit_code == 0, result.output
        assert (tmp_path / fmt / marker).exists() and f"the {fmt} layout" in result.stdout
    result = cli_runner.invoke(app, ["sample-data", "--format", "folder", "--out", str(tmp_path / "folder")])
    assert result.exit_code == 1 and "directory exists and is not empty" in result.stderr
    result = cli_runner.invoke(app, ["sample-data", "--format", "affectnet", "--out", str(tmp_path / "x")])
    assert (
        result.exit_code == 1
        and "--format affectnet: unknown format (expected csv, ferplus, folder, rafdb)" in result.stderr
    )


def test_sample_data_overwrite_keeps_the_files_it_did_not_write(tmp_path, cli_runner):
    from fertool.cli import app

    out = tmp_path / "folder"
    args = ["sample-data", "--format", "folder", "--out", str(out), "--per-class", "1"]
    assert cli_runner.invoke(app, args).exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "prepare.json").write_text("{}")  # a name prepare writes, but not sample-data: the user's
    result = cli_runner.invoke(app, [*args, "--overwrite", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "prepare.json").read_text() == "{}"
    assert (out / "train").is_dir() and not [p for p in tmp_path.iterdir() if p.name.startswith(".folder.")]
