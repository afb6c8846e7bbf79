"""Class folders and RAF-DB: scanning, class lists, carved validation, preparation into the FER2013 layout."""

from __future__ import annotations

import csv
import dataclasses
import json

import cv2
import numpy as np
import pytest

from fertool import CLASS_NAMES
from fertool.data.cache import open_image_split
from fertool.data.folders import RAFDB_CLASSES, carve_validation, scan_folder, scan_rafdb
from fertool.data.prepare_images import prepare_images
from fertool.data.sample import FOLDER_CLASSES, generate_folder_sample, generate_rafdb_sample
from fertool.errors import DataError
from fertool.recipe import PrepareConfig


def write_image(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def tree(root, layout: dict[str, dict[str, int]], size=(12, 8)):
    """root/<split>/<class>/NN.png, ``layout[split][class]`` images of ``size`` (w, h)."""
    for split, classes in layout.items():
        for name, n in classes.items():
            for i in range(n):
                write_image(root / split / name / f"{i:02d}.png", np.full((size[1], size[0], 3), 10 * i, np.uint8))
    return root


def test_class_list_from_folders_sorted_or_fer2013_or_explicit(tmp_path):
    five = scan_folder(tree(tmp_path / "a", {"train": {"sad": 2, "Happy": 1, "contempt": 1}, "test": {"sad": 1}}))
    assert five.classes == ("contempt", "Happy", "sad")  # sorted, case-insensitively
    assert five.labels.tolist() == [0, 1, 2, 2, 2] and five.splits.tolist() == [0, 0, 0, 0, 2]
    seven = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    fer = scan_folder(tree(tmp_path / "b", {"Train": dict.fromkeys(seven, 1)}))
    assert fer.classes == CLASS_NAMES  # the FER2013 classes keep FER2013's names and order
    assert [fer.classes[i] for i in fer.labels] == list(CLASS_NAMES)
    explicit = scan_folder(tmp_path / "a", classes=["Sadness", "Contempt", "Happiness", "Fear"])
    assert explicit.classes == ("Sadness", "Contempt", "Happiness", "Fear")
    assert sorted(explicit.labels.tolist()) == [0, 0, 0, 1, 2]
    with pytest.raises(DataError, match=r"class\(es\) contempt are not in data.classes \(Sadness, Happiness\)"):
        scan_folder(tmp_path / "a", classes=["Sadness", "Happiness"])


def test_every_image_type_predict_reads_is_found_in_class_folders(tmp_path):
    """One list of image extensions serves preparation and predict (a .jpe, .pnm or .dib photo is both)."""
    from fertool.deploy.predict import IMAGE_EXTENSIONS as PREDICTED

    for i, ext in enumerate((".png", ".jpe", ".pnm", ".dib")):
        write_image(
            tmp_path / "train" / ("sad" if i % 2 else "happy") / f"{i}{ext}", np.full((8, 8, 3), 40 * i, np.uint8)
        )
    (tmp_path / "train" / "sad" / "notes.txt").write_text("not an image")
    found = scan_folder(tmp_path)
    assert len(found.labels) == 4  # the .txt is no image
    assert {".jpe", ".pnm", ".dib", ".jp2"} <= PREDICTED


def test_folder_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"no training folder .*folders found: images"):
        scan_folder(tree(tmp_path / "a", {"images": {"sad": 1}}))
    with pytest.raises(DataError, match=r"class folders Happiness and happy are the same class"):
        scan_folder(tree(tmp_path / "b", {"train": {"happy": 1, "Happiness": 1}}))
    with pytest.raises(DataError, match=r"no such folder"):
        scan_folder(tmp_path / "missing")


def test_carved_validation_is_seeded_per_class_and_never_from_test(tmp_path):
    images = scan_folder(tree(tmp_path / "a", {"train": {"a": 20, "b": 10, "c": 1}, "test": {"a": 5}}))
    carved, record = carve_validation(images, 0.2, seed=3)
    again, _ = carve_validation(images, 0.2, seed=3)
    other, _ = carve_validation(images, 0.2, seed=4)
    val = carved.splits == 1
    assert np.array_equal(carved.splits, again.splits) and not np.array_equal(carved.splits, other.splits)
    assert np.bincount(carved.labels[val], minlength=3).tolist() == [4, 2, 0]  # round(0.2 n); a lone image stays
    assert (carved.splits[images.splits == 2] == 2).all()  # the test split is untouched
    assert record == {
        "from": "Training",
        "to": "PublicTest",
        "fraction": 0.2,
        "seed": 3,
        "images": 6,
        "per_class": {"a": 4, "b": 2, "c": 0},
    }
    with_val = scan_folder(tree(tmp_path / "b", {"train": {"a": 3, "b": 3}, "val": {"a": 1}}))
    assert carve_validation(with_val, 0.2, seed=0) == (with_val, None)


def test_prepare_images_crop_stretch_colour_and_grey(tmp_path):
    # 60x20: red, green and blue thirds (BGR); "crop" keeps the green centre, "stretch" all three
    image = np.zeros((20, 60, 3), np.uint8)
    image[:, :20, 2], image[:, 20:40, 1], image[:, 40:, 0] = 255, 255, 255
    for split in ("train", "val", "test"):
        write_image(tmp_path / "src" / split / "x" / "0.png", image)
        write_image(tmp_path / "src" / split / "y" / "0.png", image)
    images = scan_folder(tmp_path / "src")
    for fit, colour in (("crop", "keep"), ("stretch", "keep"), ("crop", "grey")):
        out = tmp_path / f"{fit}-{colour}"
        config = PrepareConfig(size=16, fit=fit, colour=colour, jpeg_quality=100)
        summary = prepare_images(images, out, config=config, workers=1)
        assert summary["validation"] is None and summary["classes"] == ["x", "y"]  # val/ kept, nothing carved
        got = cv2.imread(str(out / "Training" / "x" / "00000.jpg"))
        assert got.shape == (16, 16, 3)
        if colour == "grey":
            assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 1], got[..., 2])
        elif fit == "crop":
            assert got[8, 2, 1] > 200 and got[8, 2, 2] < 60 and got[8, 13, 1] > 200  # green edge to edge
        else:
            assert got[8, 1, 2] > 200 and got[8, 8, 1] > 200 and got[8, 14, 0] > 200  # red, green, blue
    assert json.loads((tmp_path / "crop-keep" / "prepare.json").read_text())["dataset"] == "folder"


def test_folder_sample_prepares_into_the_fer2013_layout(tmp_path):
    root = generate_folder_sample(tmp_path / "raw", per_class=8, seed=1)
    shapes = {
        cv2.imread(str(p)).shape[:2] for p in root.rglob("*.*") if not p.name.startswith(".")
    }  # the marker is hidden
    assert all(h != w for h, w in shapes) and len(shapes) > 5  # non-square, assorted sizes
    summary = prepare_images(scan_folder(root), tmp_path / "out", config=PrepareConfig(size=24), workers=2)
    assert summary["classes"] == list(FOLDER_CLASSES)
    assert summary["split_totals"] == {"Training": 35, "PublicTest": 5, "PrivateTest": 10}
    assert summary["validation"]["images"] == 5 and summary["validation"]["seed"] == 0
    with open(tmp_path / "out" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["source"].split("/")[0] for r in rows if r["split"] == "PrivateTest"} == {"test"}
    train = open_image_split(tmp_path / "out", "Training")
    assert train.class_names == FOLDER_CLASSES and train.images.shape == (35, 24, 24, 3)  # colour kept
    assert train.targets is None


def test_unreadable_image_refused_or_skipped(tmp_path):
    root = tree(tmp_path / "src", {"train": {"a": 3, "b": 3}})
    (root / "train" / "a" / "bad.png").write_bytes(b"not an image")
    images = scan_folder(root)
    with pytest.raises(DataError, match=r"1 unreadable image\(s\); nothing was written"):
        prepare_images(images, tmp_path / "out", config=PrepareConfig(size=8), workers=1)
    assert not (tmp_path / "out").exists()
    summary = prepare_images(images, tmp_path / "out", config=PrepareConfig(size=8), workers=1, skip_bad=True)
    assert summary["images"] == 6 and summary["skipped"][0]["path"].endswith("bad.png")


def test_rafdb_labels_are_one_based_in_rafdb_order(tmp_path):
    root = tmp_path / "basic"
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(
        "train_00001.jpg 1\ntrain_00002.jpg 7\ntest_0001.jpg 4\ntrain_00003.jpg 6\n"
    )
    for name in ("train_00001", "train_00002", "test_0001", "train_00003"):
        write_image(root / "Image" / "aligned" / f"{name}_aligned.jpg", np.zeros((10, 10, 3), np.uint8))
    images = scan_rafdb(root)
    assert images.classes == RAFDB_CLASSES
    named = {
        f.name: (images.classes[label], int(split))
        for f, label, split in zip(images.files, images.labels, images.splits)
    }
    assert named == {
        "train_00001_aligned.jpg": ("Surprise", 0),
        "train_00002_aligned.jpg": ("Neutral", 0),
        "train_00003_aligned.jpg": ("Anger", 0),
        "test_0001_aligned.jpg": ("Happiness", 2),
    }
    reordered = scan_rafdb(root, classes=CLASS_NAMES)  # data.classes: FER2013's order
    assert {f.name: reordered.classes[label] for f, label in zip(reordered.files, reordered.labels)} == {
        name: cls for name, (cls, _) in named.items()
    }
    (root / "Image" / "aligned" / "train_00003_aligned.jpg").unlink()
    with pytest.raises(DataError, match=r"1 listed image\(s\) not found, e.g. train_00003.jpg"):
        scan_rafdb(root)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 8\n")
    with pytest.raises(DataError, match=r"list_patition_label.txt:1: label '8' is not 1..7"):
        scan_rafdb(root)


def test_rafdb_sample_prepares_with_a_carved_validation_split(tmp_path):
    root = generate_rafdb_sample(tmp_path / "raf", per_class=4, seed=0)
    assert (root / "EmoLabel" / "list_patition_label.txt").is_file()
    summary = prepare_images(scan_rafdb(root), tmp_path / "out", config=PrepareConfig(size=20), workers=1)
    assert summary["dataset"] == "rafdb" and summary["classes"] == list(RAFDB_CLASSES)
    assert summary["split_totals"] == {"Training": 21, "PublicTest": 7, "PrivateTest": 7}
    assert summary["source"]["label_file"].endswith("EmoLabel/list_patition_label.txt")


@pytest.mark.parametrize("colour", ["keep", "grey"])
def test_predict_prepares_a_photo_exactly_as_training_saw_it(tmp_path, colour):
    """prepared_photo (what predict does to a face of a photo-trained model) == the cached training image."""
    from fertool.data.prepare_images import prepared_photo

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    photo[..., 0] //= 2  # not grey
    for split in ("train", "val"):
        for name in ("a", "b"):
            write_image(tmp_path / "src" / split / name / "0.png", photo)
    config = PrepareConfig(size=24, colour=colour)
    prepare_images(scan_folder(tmp_path / "src"), tmp_path / "out", config=config, workers=1)
    cached = np.asarray(open_image_split(tmp_path / "out", "Training").images[0])
    mine = prepared_photo(photo, **dataclasses.asdict(config))
    assert mine.shape == (24, 24, 3)
    expected = cached if cached.ndim == 3 else np.repeat(cached[..., None], 3, axis=-1)  # grey cached once
    assert np.array_equal(mine, expected)


def test_one_class_is_not_a_data_set(tmp_path):
    with pytest.raises(DataError, match=r"1 class \(sad\); a classifier needs at least two"):
        scan_folder(tree(tmp_path / "a", {"train": {"sad": 2}}))
