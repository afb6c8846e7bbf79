"""FER+ labels: reading the label file, label modes, prepare with --ferplus, soft targets in the cache."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fertool import CLASS_NAMES
from fertool.data.cache import open_image_split
from fertool.data.ferplus import (
    FERPLUS_CLASSES,
    ferplus_crossentropy,
    ferplus_majority,
    majority_labels,
    read_ferplus,
    vote_distribution,
)
from fertool.data.prepare import prepare
from fertool.errors import DataError
from fertool.recipe import PrepareConfig

from .conftest import load_reference, reference_file
from .test_prepare import SPLITS, write_fer_csv

HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
# Votes of the 8 reference rows.  Plurality: neutral, tie (dropped), contempt, unknown (dropped),
# happiness, not a face (dropped), fear, sadness.  FER+'s majority rule (votes of 1 removed, then
# more than half of the rest) also drops row 0: 4 of 4+3+2 = 9 votes is not more than half.
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
PLURALITY = {0: "Neutral", 2: "Contempt", 4: "Happiness", 6: "Fear", 7: "Sadness"}
MAJORITY = {2: "Contempt", 4: "Happiness", 6: "Fear", 7: "Sadness"}
# crossentropy labels the Training rows (0, 3, 6 with the usages below) by FER+'s distribution rule:
# row 0 takes neutral 4 then anger 3 (7 of 9 >= 75%), keeps them (> 50%); row 3's top is unknown;
# row 6 takes fear 6, then surprise 2 and the tied unknown 2, which stops the taking and is left out.
# The other splits keep the majority rule.
CROSSENTROPY = {0: "Neutral", 2: "Contempt", 4: "Happiness", 6: "Fear", 7: "Sadness"}
TARGETS = {0: [4, 0, 0, 0, 3, 0, 0, 0], 6: [0, 0, 2, 0, 0, 0, 6, 0]}


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


def names(labels):
    return [FERPLUS_CLASSES[i] if i >= 0 else None for i in labels]


def test_plurality_labels_drop_ties_unknown_not_a_face_and_empty_rows():
    labels, reasons = majority_labels(np.array(VOTES + [[0] * 10]))
    assert names(labels) == ["Neutral", None, "Contempt", None, "Happiness", None, "Fear", "Sadness", None]
    assert reasons.tolist() == [-1, 6, -1, 3, -1, 4, -1, -1, 5]  # tied, unknown, not a face, no votes


def test_ferplus_majority_removes_single_votes_and_asks_for_more_than_half():
    extra = [
        [5, 4, 1, 0, 0, 0, 0, 0, 0, 0],  # 5 of 9 after the outlier: kept
        [5, 4, 2, 0, 0, 0, 0, 0, 0, 0],  # 5 of 11: dropped
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # every vote an outlier: dropped
        [0] * 10,
    ]
    labels, reasons = ferplus_majority(np.array(VOTES + extra))
    assert names(labels) == [
        None,
        None,
        "Contempt",
        None,
        "Happiness",
        None,
        "Fear",
        "Sadness",
        "Neutral",
        None,
        None,
        None,
    ]
    assert reasons.tolist() == [1, 1, -1, 3, -1, 4, -1, -1, -1, 1, 1, 1]  # no majority, unknown, not a face


def test_ferplus_crossentropy_takes_top_three_until_75_percent():
    rows = VOTES + [
        [3, 3, 3, 3, 0, 0, 0, 0, 0, 0],  # four tied columns: more than three, dropped
        [3, 0, 0, 0, 0, 0, 0, 0, 3, 0],  # unknown ties the top emotion: left out, 3 of 6 is not > 50%
        [4, 3, 2, 2, 0, 0, 0, 0, 0, 0],
    ]  # 4, 3, then the tied 2s make four columns: dropped
    labels, reasons, targets = ferplus_crossentropy(np.array(rows))
    assert names(labels) == [
        "Neutral",
        "Neutral",
        "Contempt",
        None,
        "Happiness",
        None,
        "Fear",
        "Sadness",
        None,
        None,
        None,
    ]
    assert reasons.tolist() == [-1, -1, -1, 3, -1, 4, -1, -1, 2, 2, 2]  # unknown, not a face, too spread
    assert targets[0].tolist() == TARGETS[0] and targets[6].tolist() == TARGETS[6]
    assert targets[1].tolist() == [5, 5, 0, 0, 0, 0, 0, 0]  # a tie is kept as a distribution


def test_vote_distribution_normalises_the_eight_emotions_only():
    dist = vote_distribution(np.array([VOTES[0], VOTES[7]]))
    assert dist.dtype == np.float32 and dist.shape == (2, 8)
    np.testing.assert_allclose(dist[0], [0.4, 0, 0, 0.1, 0.3, 0.2, 0, 0])
    np.testing.assert_allclose(dist[1], [0.25, 0, 0, 0.75, 0, 0, 0, 0])  # unknown and NF votes left out


def test_read_ferplus_names_the_line_of_each_problem(tmp_path):
    usages = ["Training"] * 3
    # as in the real file: the numbering skips the unnamed row, which FER+ dropped
    skipping = write_labels(
        tmp_path / "ok.csv", [VOTES[2], VOTES[2], VOTES[4]], usages, names=["fer0000000.png", "", "fer0000001.png"]
    )
    labels = read_ferplus(skipping)
    assert len(labels) == 3 and labels.labels.tolist() == [7, -1, 1]
    assert labels.dropped()["by_reason"]["no FER+ image"] == 1
    bad = write_labels(tmp_path / "name.csv", VOTES[:1], usages[:1], names=["face1.png"])
    with pytest.raises(DataError, match=r"name.csv:2: image name 'face1.png' is not fer<number>.png"):
        read_ferplus(bad)
    negative = write_labels(tmp_path / "neg.csv", [[1, -1, 0, 0, 0, 0, 0, 0, 0, 0]], ["Training"])
    with pytest.raises(DataError, match=r"neg.csv:2: vote counts must be >= 0"):
        read_ferplus(negative)
    (tmp_path / "head.csv").write_text("Usage,neutral\nTraining,3\n")
    with pytest.raises(
        DataError, match=r"head.csv:1: not a FER\+ label file: missing column\(s\) image name, happiness"
    ):
        read_ferplus(tmp_path / "head.csv")


KEPT = {"majority": MAJORITY, "crossentropy": CROSSENTROPY, "plurality": PLURALITY}
DROPPED = {  # per split: rows 0, 3, 6 are Training, 1, 4, 7 PublicTest, 2, 5 PrivateTest
    "majority": {
        "Training": {"no majority": 1, "unknown": 1},
        "PublicTest": {"no majority": 1},
        "PrivateTest": {"not a face": 1},
    },
    "crossentropy": {"Training": {"unknown": 1}, "PublicTest": {"no majority": 1}, "PrivateTest": {"not a face": 1}},
    "plurality": {"Training": {"unknown": 1}, "PublicTest": {"tied": 1}, "PrivateTest": {"not a face": 1}},
}


@pytest.mark.parametrize("mode", ["majority", "crossentropy", "plurality"])
def test_prepare_with_ferplus_keeps_fer2013_pixels_and_takes_ferplus_labels(tmp_path, ferplus_pair, mode):
    csv_path, labels_path, usages = ferplus_pair
    config = PrepareConfig(size=32, label_mode=mode)
    plain = prepare(csv_path, tmp_path / "fer2013", config=config, workers=1)
    summary = prepare(csv_path, tmp_path / "ferplus", config=config, workers=1, ferplus=labels_path)
    out = tmp_path / "ferplus"
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {int(r["row"]): r["class"] for r in rows} == KEPT[mode]
    for r in rows:
        row = int(r["row"])
        assert r["split"] == usages[row] and FERPLUS_CLASSES[int(r["label"])] == r["class"]
        votes = VOTES[row][:8]
        if mode == "crossentropy":  # the targets: FER+'s distribution in training, the majority label elsewhere
            votes = TARGETS[row] if usages[row] == "Training" else np.eye(8, dtype=int)[int(r["label"])].tolist()
        assert r["votes"] == " ".join(map(str, votes))
        same = tmp_path / "fer2013" / f"{usages[row]}/{CLASS_NAMES[[0, 1, 2, 3, 4, 5, 6, 0][row]]}/{row:05d}.jpg"
        assert (out / r["path"]).read_bytes() == same.read_bytes()  # the FER2013 pixel path, unchanged
    assert plain["classes"] == list(CLASS_NAMES) and plain["dataset"] == "fer2013"
    written = json.loads((out / "prepare.json").read_text())
    assert written == summary
    assert written["dataset"] == "ferplus" and written["classes"] == list(FERPLUS_CLASSES)
    assert written["label_mode"] == mode and written["ferplus"]["label_mode"] == mode
    dropped = written["ferplus"]["dropped"]
    assert dropped["rows"] == sorted(set(range(8)) - set(KEPT[mode])) and dropped["count"] == len(dropped["rows"])
    assert {split: d["dropped"] for split, d in dropped["per_split"].items()} == DROPPED[mode]
    rules = {split: d["rule"] for split, d in dropped["per_split"].items()}
    assert rules == {
        "Training": mode,
        "PublicTest": "plurality" if mode == "plurality" else "majority",
        "PrivateTest": "plurality" if mode == "plurality" else "majority",
    }
    kept_training = [PLURALITY[r] for r in (0, 6) if r in KEPT[mode]]
    assert written["counts"]["Training"] == {name: kept_training.count(name) for name in FERPLUS_CLASSES}


def test_soft_targets_reach_the_split_in_crossentropy_mode_only(tmp_path, ferplus_pair):
    csv_path, labels_path, _ = ferplus_pair
    for mode in ("plurality", "crossentropy"):
        prepare(
            csv_path, tmp_path / mode, config=PrepareConfig(size=32, label_mode=mode), workers=1, ferplus=labels_path
        )
        train = open_image_split(tmp_path / mode, "Training")
        assert train.class_names == FERPLUS_CLASSES
        assert train.labels.tolist() == [FERPLUS_CLASSES.index("Neutral"), FERPLUS_CLASSES.index("Fear")]
        if mode == "plurality":
            assert train.targets is None
        else:  # FER+'s distribution: after its outlier and top-3 rules, not the raw votes
            np.testing.assert_allclose(
                train.targets.numpy(), [[4 / 7, 0, 0, 0, 3 / 7, 0, 0, 0], [0, 0, 0.25, 0, 0, 0, 0.75, 0]], rtol=1e-6
            )


def test_row_count_or_usage_mismatch_is_refused_and_nothing_written(tmp_path, ferplus_pair):
    csv_path, _, usages = ferplus_pair
    short = write_labels(tmp_path / "short.csv", VOTES[:7], usages[:7])
    with pytest.raises(DataError, match=r"short.csv: 7 label rows but .*fer.csv has 8 data rows"):
        prepare(csv_path, tmp_path / "a", config=PrepareConfig(size=16), workers=1, ferplus=short)
    swapped = write_labels(tmp_path / "swapped.csv", VOTES, [usages[1], usages[0], *usages[2:]], names=[""] * 8)
    with pytest.raises(
        DataError,
        match=r"swapped.csv: row 0 is PublicTest but row 0 of .*fer.csv is Training "
        r"\(2 rows disagree\): the two files are not in the same order",
    ):
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
        prepare(
            root / "fer2013.csv", out, config=PrepareConfig(size=16), workers=workers, ferplus=root / "fer2013new.csv"
        )
        manifests.append((out / "manifest.csv").read_text())
    assert manifests[0] == manifests[1]
    rows = list(csv.DictReader(manifests[0].splitlines()))
    assert [int(r["row"]) for r in rows] == np.flatnonzero(labels.labels >= 0).tolist()
    assert [int(r["label"]) for r in rows] == labels.labels[labels.labels >= 0].tolist()


# --- the real FER+ label file (microsoft/FERPlus fer2013new.csv) -----------------------------------


def _ferplus_rule_by_hand(votes, mode):
    """FER+'s rules (src/ferplus.py) re-stated a row at a time: label index or None.

    majority: drop single votes; the first most-voted column wins if it has more than half of
    the rest and is an emotion.  crossentropy: the same outlier removal; walk the vote levels
    downwards taking every column of a level; an unknown/NF column ends the walk (and is left
    out unless it came first); stop once 75% of the votes or three columns are taken; keep
    the row if more than half of the votes and at most three columns were taken and the first
    largest taken column is an emotion."""
    v = [x if x > 1 else 0 for x in votes]
    total = sum(v)
    if mode == "majority":
        top = max(v)
        winner = v.index(top)
        return winner if 2 * top > total and winner < 8 else None
    taken = {}
    for level in sorted({x for x in v if x > 0}, reverse=True):
        if sum(taken.values()) >= 0.75 * total or len(taken) >= 3:
            break
        stop = False
        for column in [i for i, x in enumerate(v) if x == level]:
            if column >= 8:
                if not taken:
                    taken[column] = level
                stop = True
                break
            taken[column] = level
        if stop:
            break
    if not taken or 2 * sum(taken.values()) <= total or len(taken) > 3:
        return None
    winner = max(sorted(taken), key=lambda c: taken[c])
    return winner if winner < 8 else None


@pytest.fixture(scope="module")
def real_ferplus():
    path = reference_file("ferplus/fer2013new.csv")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return path, rows


@pytest.mark.parametrize("mode", ["majority", "crossentropy"])
def test_real_file_labels_are_ferplus_rule(real_ferplus, mode):
    path, rows = real_ferplus
    labels = read_ferplus(path, mode)
    assert len(labels) == len(rows) == 35887
    expected = []
    for usage, name, *votes in rows:
        rule = mode if usage == "Training" else "majority"  # FER+ validates and tests on majority labels
        label = _ferplus_rule_by_hand([int(x) for x in votes], rule) if name.strip() else None
        expected.append(-1 if label is None else label)
    assert labels.labels.tolist() == expected
    assert sum(1 for usage, name, *_ in rows if not name.strip()) == 173
    assert labels.dropped()["by_reason"]["no FER+ image"] == 173


def test_prepare_reads_the_real_file_and_keeps_exactly_ferplus_majority_rows(tmp_path, real_ferplus):
    """Placeholder pixels, the file's own (canonical) Usage blocks; rows paired by position."""
    path, rows = real_ferplus
    pixels = " ".join(["128"] * 48 * 48)
    fer = tmp_path / "fer2013.csv"
    with open(fer, "w") as fh:
        fh.write("emotion,pixels,Usage\n")
        fh.writelines(f"0,{pixels},{usage}\n" for usage, *_ in rows)
    summary = prepare(fer, tmp_path / "out", config=PrepareConfig(size=8), workers=2, ferplus=path)
    counts = {split: dict.fromkeys(FERPLUS_CLASSES, 0) for split in SPLITS}
    kept_rows = []
    for i, (usage, name, *votes) in enumerate(rows):
        label = _ferplus_rule_by_hand([int(x) for x in votes], "majority") if name.strip() else None
        if label is not None:
            counts[usage][FERPLUS_CLASSES[label]] += 1
            kept_rows.append((i, label))
    assert summary["counts"] == counts
    with open(tmp_path / "out" / "manifest.csv", newline="") as fh:
        manifest = [(int(r["row"]), int(r["label"])) for r in csv.DictReader(fh)]
    assert manifest == kept_rows
    assert summary["ferplus"]["dropped"]["per_split"]["Training"]["kept"] == sum(counts["Training"].values())
