"""The decode-once image cache: prepared folders, class-subfolder datasets, errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fertool import CLASS_NAMES
from fertool.data import cache as cache_mod
from fertool.data.cache import open_image_split
from fertool.errors import DataError

S = 16


def _grey(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (S, S), dtype=np.uint8)


def _write_jpeg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
    params = [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    assert cv2.imwrite(str(path), bgr, params)


def make_prepared(root: Path, splits=(("Training", 5), ("PublicTest", 3))) -> list[dict]:
    """A tiny folder laid out like ``fertool prepare`` output (3-channel grey JPEGs)."""
    records = []
    row = 0
    for split, count in splits:
        for _ in range(count):
            label = (row * 3) % 7
            rel = f"{split}/{CLASS_NAMES[label]}/{row}.jpg"
            _write_jpeg(root / rel, _grey(row))
            records.append(
                {
                    "row": row,
                    "split": split,
                    "label": label,
                    "class": CLASS_NAMES[label],
                    "path": rel,
                    "pixels_sha256": "0" * 64,
                }
            )
            row += 1
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    (root / "prepare.json").write_text(json.dumps({"size": S, "truncate": True}))
    return records


def cache_files(root: Path) -> list[str]:
    """Cache folder contents except the (empty) lock files."""
    return sorted(p.name for p in (root / ".cache").iterdir() if p.suffix != ".lock")


# --------------------------------------------------------------------------- prepared


def test_prepared_grey_stored_as_one_channel(tmp_path):
    records = make_prepared(tmp_path)
    split = open_image_split(tmp_path, "Training")
    train = [r for r in records if r["split"] == "Training"]
    assert split.images.shape == (5, S, S) and split.images.dtype == np.uint8
    assert isinstance(split.images, np.memmap)
    assert split.labels.tolist() == [r["label"] for r in train]
    assert split.rows.tolist() == [r["row"] for r in train]
    assert split.size == S and split.name == "Training"
    for i, r in enumerate(train):
        decoded = cv2.imread(str(tmp_path / r["path"]), cv2.IMREAD_COLOR)  # independent decode
        assert np.array_equal(decoded[..., 0], decoded[..., 2])
        assert np.array_equal(split.images[i], decoded[..., 0])
    batch = split.load(torch.tensor([3, 0]))  # (2, 3, S, S) float 0..255
    assert batch.shape == (2, 3, S, S)
    assert torch.equal(batch[0, 1], torch.from_numpy(np.array(split.images[3])).float())
    assert cache_files(tmp_path)[0].startswith("Training-")


def test_cache_reused_without_decoding(tmp_path, monkeypatch):
    make_prepared(tmp_path)
    first = open_image_split(tmp_path, "Training")
    npy = next((tmp_path / ".cache").glob("Training-*.npy"))
    mtime = npy.stat().st_mtime_ns

    def no_decode(path):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_mod, "_decode", no_decode)
    second = open_image_split(tmp_path, "Training")
    assert np.array_equal(first.images, second.images)
    assert npy.stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="decoded again"):  # another split is decoded
        open_image_split(tmp_path, "PublicTest")


def test_manifest_or_prepare_change_invalidates(tmp_path):
    records = make_prepared(tmp_path)
    open_image_split(tmp_path, "Training")
    old = cache_files(tmp_path)
    # re-prepare with one training row fewer: a new cache, the stale one removed
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows([r for r in records if r["row"] != 1])
    split = open_image_split(tmp_path, "Training")
    assert len(split) == 4 and split.rows.tolist() == [0, 2, 3, 4]
    new = cache_files(tmp_path)
    assert len(new) == 2 and not set(new) & set(old)
    (tmp_path / "prepare.json").write_text(json.dumps({"size": S, "truncate": False}))
    open_image_split(tmp_path, "Training")
    assert not set(cache_files(tmp_path)) & set(new)


def test_rgb_fallback_when_one_image_has_colour(tmp_path):
    records = make_prepared(tmp_path)
    colour_rel = [r for r in records if r["split"] == "Training"][3]["path"]
    bgr = np.zeros((S, S, 3), np.uint8)
    bgr[..., 2] = 200  # red in BGR
    bgr[:, : S // 2, 0] = 90
    _write_jpeg(tmp_path / colour_rel, bgr)
    split = open_image_split(tmp_path, "Training")
    assert split.images.shape == (5, S, S, 3)
    train = [r for r in records if r["split"] == "Training"]
    for i, r in enumerate(train):
        decoded = cv2.imread(str(tmp_path / r["path"]), cv2.IMREAD_COLOR)[..., ::-1]  # RGB
        assert np.array_equal(split.images[i], decoded)
    assert split.images[3, 0, -1, 0] > 150  # red channel first
    batch = split.load(torch.tensor([0]))
    assert torch.equal(batch[0, 0], batch[0, 2])  # grey images before the colour one kept grey


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    make_prepared(tmp_path)
    real = cache_mod._decode
    calls = []

    def flaky(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(cache_mod, "_decode", flaky)
    monkeypatch.setattr(cache_mod, "_DECODE_CHUNK", 2)
    with pytest.raises(KeyboardInterrupt):
        open_image_split(tmp_path, "Training", workers=1)
    assert cache_files(tmp_path) == []  # no temp file, nothing that looks complete
    monkeypatch.setattr(cache_mod, "_decode", real)
    assert len(open_image_split(tmp_path, "Training")) == 5


def test_concurrent_openers_decode_once(tmp_path, monkeypatch):
    import threading

    make_prepared(tmp_path)
    real = cache_mod._decode
    calls = []

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(cache_mod, "_decode", counting)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(open_image_split(tmp_path, "Training"))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(calls) == 5  # one build, two reuses
    assert all(np.array_equal(r.images, results[0].images) for r in results)


def test_progress_and_cache_dir(tmp_path):
    make_prepared(tmp_path / "data")
    seen = []
    split = open_image_split(
        tmp_path / "data",
        "PublicTest",
        cache_dir=tmp_path / "c",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert len(split) == 3 and seen[-1] == (3, 3)
    assert not (tmp_path / "data" / ".cache").exists()
    assert len(list((tmp_path / "c").glob("PublicTest-*.npy"))) == 1


# --------------------------------------------------------------------------- errors


def test_errors_prepared(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_image_split(tmp_path / "nope")
    records = make_prepared(tmp_path)
    with pytest.raises(DataError, match=r"PrivateTest.*present: Training, PublicTest"):
        open_image_split(tmp_path, "PrivateTest")
    bad = tmp_path / [r for r in records if r["split"] == "Training"][2]["path"]
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=rf"{bad.name}: not a readable image"):
        open_image_split(tmp_path, "Training")
    bad.unlink()
    with pytest.raises(DataError, match=rf"{bad.name}: listed in .*manifest.csv line 4 but cannot be read"):
        open_image_split(tmp_path, "Training")


def test_manifest_errors(tmp_path):
    (tmp_path / "manifest.csv").write_text("row,split,path\n0,Training,a.jpg\n")
    with pytest.raises(DataError, match="missing column.*label"):
        open_image_split(tmp_path)
    (tmp_path / "manifest.csv").write_text("row,split,label,class,path\n0,Training,9,Anger,a.jpg\n")
    with pytest.raises(DataError, match="line 2: label 9"):
        open_image_split(tmp_path)
    (tmp_path / "manifest.csv").write_text("row,split,label,class,path\n0,Training,1,Anger,a.jpg\n")
    with pytest.raises(DataError, match="line 2: class 'Anger' does not match label 1"):
        open_image_split(tmp_path)


# --------------------------------------------------------------------------- plain folders


def _write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def test_folder_dataset_with_split_folders_and_aliases(tmp_path):
    imgs = {}
    for split in ("train", "test"):
        for folder, seed in (("happy", 1), ("Angry", 2), ("NEUTRAL", 3)):
            for k in range(2):
                img = _grey(seed * 10 + k + (100 if split == "test" else 0))
                _write_png(tmp_path / split / folder / f"{k}.png", img)
                imgs[(split, folder, k)] = img
    (tmp_path / "train" / "happy" / "notes.txt").write_text("ignored")
    train = open_image_split(tmp_path, "Training")
    # order: by class index (Anger 0, Happiness 3, Neutral 6), then file name
    assert train.labels.tolist() == [0, 0, 3, 3, 6, 6]
    assert train.rows is None and train.images.shape == (6, S, S)
    assert np.array_equal(train.images[2], imgs[("train", "happy", 0)])  # PNG: lossless
    test = open_image_split(tmp_path, "PrivateTest")
    assert np.array_equal(test.images[5], imgs[("test", "NEUTRAL", 1)])
    with pytest.raises(DataError, match=r"no folder for split 'PublicTest' \(folders found: test, train\)"):
        open_image_split(tmp_path, "PublicTest")


def test_folder_dataset_flat_layout_and_rgb(tmp_path):
    _write_png(tmp_path / "Sadness" / "a.png", _grey(1))
    colour = np.stack([_grey(2), _grey(3), _grey(4)], axis=-1)  # BGR
    _write_png(tmp_path / "surprise" / "b.png", colour)
    split = open_image_split(tmp_path, "Training")
    assert split.labels.tolist() == [4, 5]
    assert split.images.shape == (2, S, S, 3)
    assert np.array_equal(split.images[1], colour[..., ::-1])
    assert np.array_equal(split.images[0, ..., 1], _grey(1))
    assert len(open_image_split(tmp_path, None)) == 2
    with pytest.raises(DataError, match="no folder for split 'PublicTest'"):
        open_image_split(tmp_path, "PublicTest")  # never silently the training images


def test_folder_dataset_cache_invalidated_by_new_file(tmp_path):
    _write_png(tmp_path / "fear" / "a.png", _grey(1))
    assert len(open_image_split(tmp_path, "Training")) == 1
    _write_png(tmp_path / "fear" / "b.png", _grey(2))
    assert len(open_image_split(tmp_path, "Training")) == 2
    assert len(list((tmp_path / ".cache").glob("*.npy"))) == 1


def test_folder_dataset_errors(tmp_path):
    _write_png(tmp_path / "happy" / "a.png", _grey(1))
    _write_png(tmp_path / "cats" / "b.png", _grey(2))
    with pytest.raises(DataError, match=r"must be FER2013 classes \(Anger, .*Neutral\); found: cats, happy"):
        open_image_split(tmp_path, "Training")
    (tmp_path / "cats" / "b.png").unlink()
    (tmp_path / "cats").rmdir()
    _write_png(tmp_path / "happy" / "c.png", np.zeros((S, S + 2), np.uint8))
    with pytest.raises(DataError, match=r"c.png: image is 18x16, not square"):
        open_image_split(tmp_path, "Training")
    _write_png(tmp_path / "happy" / "c.png", np.zeros((S + 2, S + 2), np.uint8))
    with pytest.raises(DataError, match=r"c.png: image is 18x18 but a.png is 16x16"):
        open_image_split(tmp_path, "Training")
    os.remove(tmp_path / "happy" / "c.png")
    os.remove(tmp_path / "happy" / "a.png")
    with pytest.raises(DataError, match="no images"):
        open_image_split(tmp_path, "Training")
    _write_png(tmp_path / "Happiness" / "a.png", _grey(1))
    with pytest.raises(DataError, match="'Happiness' and 'happy' are both class Happiness"):
        open_image_split(tmp_path, "Training")


def test_cache_of_fertool_prepare_output(tmp_path):
    import fertool.data.prepare as prepare_mod
    import fertool.data.sample as sample_mod
    from fertool.data.csv import load_split
    from fertool.data.resize import resize_bilinear
    from fertool.recipe import PrepareConfig

    sample_mod.generate_sample(tmp_path / "s.csv", per_class=2, seed=0)
    prepare_mod.prepare(tmp_path / "s.csv", tmp_path / "prep", config=PrepareConfig(size=32), workers=1)
    split = open_image_split(tmp_path / "prep", "Training")
    arrays = load_split(tmp_path / "s.csv", "Training")
    assert split.images.shape == (len(arrays.labels), 32, 32)  # RGB JPEGs of grey: one channel kept
    assert split.labels.tolist() == list(arrays.labels) and split.rows.tolist() == list(arrays.rows)
    expected = torch.floor(resize_bilinear(torch.from_numpy(arrays.images), 32)).clamp(0, 255).numpy()  # (N, 32, 32)
    assert np.abs(split.images.astype(int) - expected.astype(int)).max() <= 2  # JPEG q100 4:4:4 only


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../../outside.jpg", "Training/../../x.jpg", "C:/x.jpg", "Training\\..\\..\\x.jpg", ""]
)
def test_manifest_paths_must_stay_inside_the_folder(tmp_path, path):
    make_prepared(tmp_path)
    text = (tmp_path / "manifest.csv").read_text().splitlines()
    fields = text[1].split(",")
    fields[4] = path
    (tmp_path / "manifest.csv").write_text("\n".join([text[0], ",".join(fields), *text[2:]]) + "\n")
    with pytest.raises(
        DataError,
        match=r"manifest.csv line 2: path .* must be relative to the prepared folder "
        r"and stay inside it",
    ):
        open_image_split(tmp_path, "Training")
    assert not (tmp_path / ".cache").exists() or not any((tmp_path / ".cache").glob("*.npy"))


def test_an_unwritable_cache_folder_names_no_option_the_cli_lacks(tmp_path):
    make_prepared(tmp_path)
    (tmp_path / ".cache").write_text("a file where the cache folder goes")
    with pytest.raises(DataError) as info:
        open_image_split(tmp_path, "Training")
    message = str(info.value)
    assert "cache_dir" not in message and "cannot create the image cache folder" in message
    assert "make the image folder writable or copy it to a writable place" in message


# --------------------------------------------------------------------------- tampering (issue 26)


def test_a_replaced_or_truncated_image_is_noticed_before_training(tmp_path):
    records = make_prepared(tmp_path)
    first = open_image_split(tmp_path, "Training")
    victim = tmp_path / records[1]["path"]
    _write_jpeg(victim, 255 - _grey(1))  # replaced while .cache exists
    os.utime(victim, ns=(1, 1))  # even with an old modification time: the size differs
    again = open_image_split(tmp_path, "Training")
    assert not np.array_equal(again.images[1], first.images[1])
    assert np.abs(again.images[1].astype(int) - (255 - _grey(1)).astype(int)).max() <= 2
    victim.write_bytes(victim.read_bytes()[:100])  # truncated: rebuilt, and the rebuild says which file
    with pytest.raises(DataError, match=f"{victim}: not a readable image"):
        open_image_split(tmp_path, "Training")
    victim.unlink()
    with pytest.raises(DataError, match=rf"{victim}: listed in .*manifest.csv line 3 but cannot be read"):
        open_image_split(tmp_path, "Training")


def test_manifest_rows_must_match_prepare_json_counts(tmp_path):
    records = make_prepared(tmp_path)
    counts = {}
    for r in records:
        counts.setdefault(r["split"], {}).setdefault(r["class"], 0)
        counts[r["split"]][r["class"]] += 1
    (tmp_path / "prepare.json").write_text(json.dumps({"size": S, "counts": counts}))
    assert len(open_image_split(tmp_path, "Training")) == 5
    lines = (tmp_path / "manifest.csv").read_text().splitlines()
    (tmp_path / "manifest.csv").write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # a row removed
    with pytest.raises(DataError, match="split 'Training' has 4 rows, .*prepare.json counts 5"):
        open_image_split(tmp_path, "Training")
    (tmp_path / "manifest.csv").write_text("\n".join(lines + [lines[1]]) + "\n")  # a row duplicated
    with pytest.raises(DataError, match="is listed twice"):
        open_image_split(tmp_path, "Training")


def test_a_damaged_cache_of_the_wrong_shape_is_rebuilt(tmp_path):
    make_prepared(tmp_path)
    expected = np.array(open_image_split(tmp_path, "Training").images)
    cached = next(p for p in (tmp_path / ".cache").iterdir() if p.suffix == ".npy")
    np.save(cached, np.zeros((len(expected), S, S + 4), np.uint8))
    again = open_image_split(tmp_path, "Training")
    assert again.images.shape == expected.shape and np.array_equal(again.images, expected)


def test_prepare_verify(tmp_path, cli_runner):
    import fertool.data.prepare as prepare_mod
    import fertool.data.sample as sample_mod
    from fertool.cli import app
    from fertool.recipe import PrepareConfig

    csv_path = sample_mod.generate_sample(tmp_path / "s.csv", per_class=1, seed=0)
    prep = tmp_path / "prep"
    prepare_mod.prepare(csv_path, prep, config=PrepareConfig(size=32), workers=1)
    res = cli_runner.invoke(app, ["prepare", "--verify", str(prep), "-q"])
    assert res.exit_code == 0, res.output
    assert "OK, 21 images" in res.output and "1 source sha256 checked" in res.output
    victim = next(prep.glob("Training/*/*.jpg"))
    victim.write_bytes(victim.read_bytes()[:200])
    csv_path.write_text(csv_path.read_text() + "\n")
    res = cli_runner.invoke(app, ["prepare", "--verify", str(prep), "-q"])
    assert res.exit_code == 1
    assert f"{victim}: not a readable image" in res.output and "the source CSV changed" in res.output


def test_dead_temporaries_of_a_cache_are_swept_before_it_is_built(tmp_path):
    import cv2

    from fertool.data.cache import _folder_source

    root = tmp_path / "images"
    for cls in ("Anger", "Happiness"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(root / cls / f"{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
    source = _folder_source(root, None)
    name = f"{source.tag}-{source.key}"
    (root / ".cache").mkdir()
    dead = [
        root / ".cache" / f".{name}.npy.999999999-abc-grey.tmp",
        root / ".cache" / f".{name}.meta.npz.999999999-x.tmp",
    ]
    for path in dead:  # a killed build's (no such pid)
        path.write_bytes(b"\0" * 100)
    other = root / ".cache" / ".PublicTest-0123456789abcdef.npy.999999999-abc.tmp"  # another cache's: not ours to judge
    other.write_bytes(b"\0")
    open_image_split(root, None)
    assert not any(path.exists() for path in dead) and other.exists()
