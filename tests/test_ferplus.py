"""FER+ labels: reading the label file, label modes, prepare with --ferplus, soft targets in the cache."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fertool import CLASS_NAMES
from fertool.data.cache import open_image_split
from fertool.data.ferplus import FERPLUS_CLASSES, majority_labels, read_ferplus, vote_distribution
from fertool.data.prepare import prepare
from fertool.errors import DataError
from fertool.recipe import PrepareConfig

from .conftest import load_reference
from .test_prepare import SPLITS, write_fer_csv

HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
# Votes of the 8 reference rows: neutral, tie (dropped), contempt, unknown majority (dropped),
# happiness, not a face (dropped), fear, sadness.
VOTES = [
    [4, 0, 0, 1, 3, 2, 0, 0, 0, 0],
    [5, 5, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 2, 0, 8, 0, 0],
    [1, 0, 0, 0, 0, 0, 0, 0, 9, 0],
    [0, 7, 3, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],
    [0, 0, 2, 0, 0, 0, 6, 0, 2, 0],
    [2, 0, 0, 6, 0, 0, 0, 0, 1, 1],
]
KEPT = {0: "Neutral", 2: "Contempt", 4: "Happiness", 6: "Fear", 7: "Sadness"}


def write_labels(path, votes, usages, names=None):
    names = names if names is not None else [f"fer{i:07d}.png" for i in range(len(votes))]
    lines = [HEADER] + [f"{u},{n},{','.join(map(str, v))}" for u, n, v in zip(usages, names, votes)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def ferplus_pair(tmp_path):
    ref = load_reference("prepare_resize.npz")
    usages = [SPLITS[i % 3] for i in range(8)]
    csv_path = write_fer_csv(tmp_path / "fer.csv", ref["src"], [0, 1, 2, 3, 4, 5, 6, 0], usages)
    return csv_path, write_labels(tmp_path / "fer2013new.csv", VOTES, usages), usages


def test_majority_labels_drop_ties_unknown_not_a_face_and_empty_rows():
    labels, reasons = majority_labels(np.array(VOTES + [[0] * 10]))
    names = [FERPLUS_CLASSES[i] if i >= 0 else None for i in labels]
    assert names == ["Neutral", None, "Contempt", None, "Happiness", None, "Fear", "Sadness", None]
    assert reasons.tolist() == [-1, 1, -1, 2, -1, 3, -1, -1, 0]  # tied, unknown, not a face, no votes


def test_vote_distribution_normalises_the_eight_emotions_only():
    dist = vote_distribution(np.array([VOTES[0], VOTES[7]]))
    assert dist.dtype == np.float32 and dist.shape == (2, 8)
    np.testing.assert_allclose(dist[0], [0.4, 0, 0, 0.1, 0.3, 0.2, 0, 0])
    np.testing.assert_allclose(dist[1], [0.25, 0, 0, 0.75, 0, 0, 0, 0])  # unknown and NF votes left out


def test_read_ferplus_names_the_line_of_each_problem(tmp_path):
    usages = ["Training"] * 3
    labels = read_ferplus(write_labels(tmp_path / "ok.csv", VOTES[:3], usages, names=["fer0000000.png", "", "fer0000002.png"]))
    assert len(labels) == 3 and labels.labels.tolist() == [0, -1, 7]
    bad = write_labels(tmp_path / "order.csv", VOTES[:3], usages, names=["fer0000000.png", "fer0000002.png", ""])
    with pytest.raises(DataError, match=r"order.csv:3: image name 'fer0000002.png' belongs to FER2013 row 2, "
                                        r"but this is row 1: the label file is not in the order"):
        read_ferplus(bad)
    negative = write_labels(tmp_path / "neg.csv", [[1, -1, 0, 0, 0, 0, 0, 0, 0, 0]], ["Training"])
    with pytest.raises(DataError, match=r"neg.csv:2: vote counts must be >= 0"):
        read_ferplus(negative)
    (tmp_path / "head.csv").write_text("Usage,neutral\nTraining,3\n")
    with pytest.raises(DataError, match=r"head.csv:1: not a FER\+ label file: missing column\(s\) image name, happiness"):
        read_ferplus(tmp_path / "head.csv")


@pytest.mark.parametrize("mode", ["majority", "probability"])
def test_prepare_with_ferplus_keeps_fer2013_pixels_and_takes_ferplus_labels(tmp_path, ferplus_pair, mode):
    csv_path, labels_path, usages = ferplus_pair
    config = PrepareConfig(size=32, label_mode=mode)
    plain = prepare(csv_path, tmp_path / "fer2013", config=config, workers=1)
    summary = prepare(csv_path, tmp_path / "ferplus", config=config, workers=1, ferplus=labels_path)
    out = tmp_path / "ferplus"
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {int(r["row"]): r["class"] for r in rows} == KEPT
    for r in rows:
        row = int(r["row"])
        assert r["split"] == usages[row] and FERPLUS_CLASSES[int(r["label"])] == r["class"]
        assert r["votes"] == " ".join(map(str, VOTES[row][:8]))
        same = tmp_path / "fer2013" / f"{usages[row]}/{CLASS_NAMES[[0, 1, 2, 3, 4, 5, 6, 0][row]]}/{row:05d}.jpg"
        assert (out / r["path"]).read_bytes() == same.read_bytes()  # the FER2013 pixel path, unchanged
    assert plain["classes"] == list(CLASS_NAMES) and plain["dataset"] == "fer2013"
    written = json.loads((out / "prepare.json").read_text())
    assert written == summary
    assert written["dataset"] == "ferplus" and written["classes"] == list(FERPLUS_CLASSES)
    assert written["label_mode"] == mode and written["ferplus"]["label_mode"] == mode
    assert written["ferplus"]["dropped"] == {"count": 3, "rows": [1, 3, 5],
                                             "by_reason": {"no votes": 0, "tied": 1, "unknown": 1, "not a face": 1}}
    assert written["split_totals"] == {"Training": 2, "PublicTest": 2, "PrivateTest": 1}  # rows 0,6 | 4,7 | 2
    assert written["counts"]["Training"] == {name: int(name in ("Neutral", "Fear")) for name in FERPLUS_CLASSES}


def test_soft_targets_reach_the_split_in_probability_mode_only(tmp_path, ferplus_pair):
    csv_path, labels_path, _ = ferplus_pair
    for mode in ("majority", "probability"):
        prepare(csv_path, tmp_path / mode, config=PrepareConfig(size=32, label_mode=mode), workers=1,
                ferplus=labels_path)
        train = open_image_split(tmp_path / mode, "Training")
        assert train.class_names == FERPLUS_CLASSES
        assert train.labels.tolist() == [FERPLUS_CLASSES.index("Neutral"), FERPLUS_CLASSES.index("Fear")]
        if mode == "majority":
            assert train.targets is None
        else:
            np.testing.assert_allclose(train.targets.numpy(), vote_distribution(np.array([VOTES[0], VOTES[6]])))


def test_row_count_or_usage_mismatch_is_refused_and_nothing_written(tmp_path, ferplus_pair):
    csv_path, _, usages = ferplus_pair
    short = write_labels(tmp_path / "short.csv", VOTES[:7], usages[:7])
    with pytest.raises(DataError, match=r"short.csv: 7 label rows but .*fer.csv has 8 data rows"):
        prepare(csv_path, tmp_path / "a", config=PrepareConfig(size=16), workers=1, ferplus=short)
    swapped = write_labels(tmp_path / "swapped.csv", VOTES, [usages[1], usages[0], *usages[2:]], names=[""] * 8)
    with pytest.raises(DataError, match=r"swapped.csv: row 0 is PublicTest but row 0 of .*fer.csv is Training "
                                        r"\(2 rows disagree\): the two files are not in the same order"):
        prepare(csv_path, tmp_path / "b", config=PrepareConfig(size=16), workers=1, ferplus=swapped)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folders left


def test_labels_stay_aligned_across_chunks_and_worker_processes(tmp_path):
    from fertool.data.prepare import CHUNK_ROWS
    from fertool.data.sample import generate_ferplus_sample

    root = generate_ferplus_sample(tmp_path / "fp", per_class=12, seed=1)
    labels = read_ferplus(root / "fer2013new.csv")
    assert len(labels) > 2 * CHUNK_ROWS  # several chunks
    manifests = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        prepare(root / "fer2013.csv", out, config=PrepareConfig(size=16), workers=workers, ferplus=root / "fer2013new.csv")
        manifests.append((out / "manifest.csv").read_text())
    assert manifests[0] == manifests[1]
    rows = list(csv.DictReader(manifests[0].splitlines()))
    assert [int(r["row"]) for r in rows] == np.flatnonzero(labels.labels >= 0).tolist()
    assert [int(r["label"]) for r in rows] == labels.labels[labels.labels >= 0].tolist()
