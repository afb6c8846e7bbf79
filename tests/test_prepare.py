"""fertool prepare: exact pixels vs the reference, JPEG settings, layout, manifest, safety."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from fertool import CLASS_NAMES
from fertool.data.prepare import (
    CANONICAL_FER2013,
    canonical_differences,
    encode_jpeg,
    jpeg_params,
    prepare,
    prepare_pixels,
)
from fertool.data.resize import TFBilinear, resize_bilinear
from fertool.errors import DataError, FertoolError
from fertool.files import OUTPUT_MARKER
from fertool.recipe import PrepareConfig, load_recipe

from .conftest import load_reference

SPLITS = ("Training", "PublicTest", "PrivateTest")


def resize_float(grey: np.ndarray, size: int) -> np.ndarray:
    """The NumPy resize of ``prepare`` on a whole stack at once."""
    return TFBilinear(grey.shape[1], grey.shape[2], size, len(grey))(np.asarray(grey)).copy()


def pixel_text(image: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in image.ravel())


def write_fer_csv(path: Path, images, labels, usages, extra_lines=()) -> Path:
    lines = ["emotion,pixels,Usage"]
    lines += [f"{label},{pixel_text(image)},{usage}" for image, label, usage in zip(images, labels, usages)]
    lines += list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def reference_csv(tmp_path):
    """The 8 reference sources as a FER2013 CSV: labels 0..6,0; splits cycling."""
    ref = load_reference("prepare_resize.npz")
    labels = [0, 1, 2, 3, 4, 5, 6, 0]
    usages = [SPLITS[i % 3] for i in range(8)]
    path = write_fer_csv(tmp_path / "ref.csv", ref["src"], labels, usages)
    return path, ref, labels, usages


def small(size: int = 32) -> PrepareConfig:
    return PrepareConfig(size=size)


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


# --------------------------------------------------------------------------- pixels


def test_float_resize_is_bit_identical_to_the_reference():
    ref = load_reference("prepare_resize.npz")
    out = resize_float(ref["src"], 224)
    assert out.dtype == np.float32
    assert np.array_equal(out, ref["resized_float"])  # bit for bit, not allclose


def test_prepared_uint8_equal_the_reference_exactly():
    ref = load_reference("prepare_resize.npz")
    prepared = prepare_pixels(ref["src"], size=224)
    assert prepared.dtype == np.uint8 and prepared.shape == (8, 224, 224, 3)
    assert np.array_equal(prepared, ref["prepared"])


def test_numpy_resize_matches_the_torch_resize_on_random_images():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 48, 48), dtype=np.uint8)
    x[:4] = 255 * rng.integers(0, 2, (4, 48, 48))  # extremes: the uint8 conversion must not wrap
    x[4], x[5] = 0, 255
    for size in (224, 100, 48, 17):
        expected = resize_bilinear(torch.from_numpy(x), size)
        assert np.array_equal(resize_float(x, size), expected.numpy())
        floor = torch.floor(expected).clamp(0, 255).to(torch.uint8).numpy()
        assert np.array_equal(prepare_pixels(x, size=size, rgb=False), floor)
        rounded = torch.round(expected).clamp(0, 255).to(torch.uint8).numpy()
        assert np.array_equal(prepare_pixels(x, size=size, rgb=False, truncate=False), rounded)


def test_rounding_and_grey_options():
    ref = load_reference("prepare_resize.npz")
    rounded = prepare_pixels(ref["src"], truncate=False, rgb=False)
    assert rounded.shape == (8, 224, 224)
    np.testing.assert_array_equal(rounded, np.clip(np.rint(ref["resized_float"]), 0, 255).astype(np.uint8))
    assert (rounded.astype(int) - ref["prepared"][..., 0]).max() == 1  # rounding differs from floor


def test_jpeg_is_quality_100_and_444(tmp_path):
    ref = load_reference("prepare_resize.npz")
    image = ref["prepared"][6]
    path = tmp_path / "x.jpg"
    path.write_bytes(encode_jpeg(image, jpeg_params(100, "4:4:4")))
    with Image.open(path) as img:
        assert img.format == "JPEG" and img.mode == "RGB"
        assert JpegImagePlugin.get_sampling(img) == 0  # 4:4:4, no chroma subsampling
        assert all(max(table) == 1 for table in img.quantization.values())  # quality 100: all-ones tables
        decoded = np.asarray(img)
    error = np.abs(decoded.astype(int) - image.astype(int))
    assert error.max() <= 2 and error.mean() < 0.3
    path.write_bytes(encode_jpeg(image, jpeg_params(90, "4:2:0")))
    with Image.open(path) as img:
        assert JpegImagePlugin.get_sampling(img) == 2
        assert max(max(t) for t in img.quantization.values()) > 1


# --------------------------------------------------------------------------- prepare


def test_prepare_writes_layout_manifest_and_summary(reference_csv, tmp_path):
    csv_path, ref, labels, usages = reference_csv
    out = tmp_path / "prepared"
    seen = []
    summary = prepare(csv_path, out, config=PrepareConfig(), workers=1, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (8, 8)

    # images: exact pre-JPEG pixels, JPEG q100 4:4:4 on disk
    for row, (label, usage) in enumerate(zip(labels, usages)):
        path = out / usage / CLASS_NAMES[label] / f"{row:05d}.jpg"
        with Image.open(path) as img:
            assert img.size == (224, 224) and JpegImagePlugin.get_sampling(img) == 0
            decoded = np.asarray(img).astype(int)
        assert np.abs(decoded - ref["prepared"][row]).max() <= 2

    # manifest
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["row", "split", "label", "class", "path", "pixels_sha256"]
    assert [int(r["row"]) for r in rows] == list(range(8))
    for r, label, usage, src in zip(rows, labels, usages, ref["src"]):
        assert (r["split"], int(r["label"]), r["class"]) == (usage, label, CLASS_NAMES[label])
        assert r["path"] == f"{usage}/{CLASS_NAMES[label]}/{int(r['row']):05d}.jpg" and (out / r["path"]).is_file()
        assert r["pixels_sha256"] == hashlib.sha256(src.astype(np.uint8).tobytes()).hexdigest()

    # prepare.json and recipe.yaml
    written = json.loads((out / "prepare.json").read_text())
    assert written == summary
    assert written["source"]["sha256"] == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    assert written["source"]["format"] == "fer2013" and written["source"]["data_rows"] == 8
    assert written["recipe"] == {
        "size": 224,
        "rgb": True,
        "truncate": True,
        "jpeg_quality": 100,
        "subsampling": "4:4:4",
        "label_mode": "majority",
        "fit": "crop",
        "colour": "keep",
        "val_fraction": 0.1,
        "val_seed": 0,
    }
    assert written["dataset"] == "fer2013" and written["classes"] == list(CLASS_NAMES)
    assert written["images"] == 8 and written["skipped"] == []
    # rows 0, 3, 6 are Training (Anger, Happiness, Neutral); rows 1, 4, 7 PublicTest (Disgust, Sadness, Anger)
    assert written["counts"]["Training"] == {
        name: int(name in ("Anger", "Happiness", "Neutral")) for name in CLASS_NAMES
    }
    assert written["counts"]["PublicTest"] == {
        name: int(name in ("Disgust", "Sadness", "Anger")) for name in CLASS_NAMES
    }
    assert written["split_totals"] == {"Training": 3, "PublicTest": 3, "PrivateTest": 2}
    assert written["fertool_version"]
    assert written["canonical_fer2013"]["match"] is False
    assert "8 rows, the canonical FER2013 has 35,887" in written["canonical_fer2013"]["differences"]
    assert load_recipe(out / "recipe.yaml").prepare == PrepareConfig()
    assert siblings(out) == []  # no temporary folder left


def test_canonical_check():
    canonical = {
        "Training": list(CANONICAL_FER2013["training_classes"]),
        "PublicTest": [3589, 0, 0, 0, 0, 0, 0],
        "PrivateTest": [0, 0, 0, 0, 0, 0, 3589],
    }
    assert canonical_differences(canonical) == []
    changed = dict(canonical, Training=[3995, 430, 4097, 7215, 4830, 3171, 4965], PublicTest=[0] * 7)
    assert canonical_differences(changed) == [
        "32,292 rows, the canonical FER2013 has 35,887",
        "Training: 28,703 rows, canonical 28,709",
        "PublicTest: 0 rows, canonical 3,589",
        "Training/Disgust: 430 images, canonical 436",
    ]


def test_train_csv_variant_is_all_training(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 48, 48))
    path = tmp_path / "train.csv"
    path.write_text("emotion,pixels\n" + "".join(f"{i},{pixel_text(im)}\n" for i, im in enumerate(images)))
    summary = prepare(path, tmp_path / "out", config=small(), workers=1)
    assert summary["split_totals"] == {"Training": 5} and summary["source"]["format"] == "train"
    assert sorted(p.parent.parent.name for p in (tmp_path / "out").rglob("*.jpg")) == ["Training"] * 5


def test_config_options_reach_the_files(reference_csv, tmp_path):
    csv_path, *_ = reference_csv
    out = tmp_path / "grey"
    prepare(csv_path, out, config=PrepareConfig(size=64, rgb=False, jpeg_quality=80, subsampling="4:2:0"), workers=1)
    with Image.open(out / "Training" / "Anger" / "00000.jpg") as img:
        assert img.size == (64, 64) and img.mode == "L"


def test_workers_give_the_same_result_as_one_process(tmp_path):
    rng = np.random.default_rng(3)
    n = 150  # several chunks
    path = write_fer_csv(
        tmp_path / "x.csv", rng.integers(0, 256, (n, 48, 48)), rng.integers(0, 7, n), [SPLITS[i % 3] for i in range(n)]
    )
    one = prepare(path, tmp_path / "one", config=small(), workers=1)
    two = prepare(path, tmp_path / "two", config=small(), workers=2)
    assert two["workers"] == 2 and one["counts"] == two["counts"]
    assert (tmp_path / "one" / "manifest.csv").read_bytes() == (tmp_path / "two" / "manifest.csv").read_bytes()
    for jpg in (tmp_path / "one").rglob("*.jpg"):
        assert jpg.read_bytes() == (tmp_path / "two" / jpg.relative_to(tmp_path / "one")).read_bytes()


# --------------------------------------------------------------------------- bad input and safety


def _bad_csv(tmp_path, n_bad: int = 2) -> Path:
    rng = np.random.default_rng(0)
    good = " ".join(["1"] * 2304)
    bad_lines = [f"9,{good},Training"] * (n_bad - 1) + ["0,1 2 3,PublicTest"]
    return write_fer_csv(tmp_path / "bad.csv", rng.integers(0, 256, (3, 48, 48)), [0, 1, 2], SPLITS, bad_lines)


def test_bad_rows_write_nothing_and_are_all_listed(tmp_path):
    path = _bad_csv(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        prepare(path, out, config=small(), workers=1)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: 2 bad rows; nothing was written (--skip-bad writes the good rows):"
    assert lines[1] == f"{path}:5: unknown emotion label 9 (expected 0..6: {', '.join(CLASS_NAMES)})"
    assert lines[2] == f"{path}:6: expected 2304 pixel values (48x48), got 3"
    assert not out.exists() and siblings(out) == []


def test_long_bad_lists_are_cut(tmp_path):
    path = _bad_csv(tmp_path, n_bad=25)
    with pytest.raises(DataError) as info:
        prepare(path, tmp_path / "out", config=small(), workers=1)
    lines = str(info.value).splitlines()
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "... and 5 more bad rows"


def test_skip_bad_writes_the_good_rows_and_records_the_rest(tmp_path):
    path = _bad_csv(tmp_path)
    out = tmp_path / "out"
    summary = prepare(path, out, config=small(), workers=1, skip_bad=True)
    assert summary["images"] == 3 and len(list(out.rglob("*.jpg"))) == 3
    assert [(s["row"], s["line"]) for s in summary["skipped"]] == [(3, 5), (4, 6)]
    assert summary["skipped"][1]["problem"] == "expected 2304 pixel values (48x48), got 3"
    assert summary["warnings"][0] == "skipped 2 bad rows (listed in prepare.json)"
    assert json.loads((out / "prepare.json").read_text())["skipped"] == summary["skipped"]
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in manifest[1:]] == ["0", "1", "2"]


def test_header_problems_come_first_and_write_nothing(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("pixels\n" + " ".join(["1"] * 2304) + "\n")
    with pytest.raises(DataError, match="no labels"):
        prepare(path, tmp_path / "out", config=small(), workers=1)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=re.escape(f"{empty}: empty file")):
        prepare(empty, tmp_path / "out", config=small(), workers=1)
    header_only = tmp_path / "header.csv"
    header_only.write_text("emotion,pixels,Usage\n")
    with pytest.raises(DataError, match="no data rows"):
        prepare(header_only, tmp_path / "out", config=small(), workers=1)
    assert not (tmp_path / "out").exists() and siblings(tmp_path / "out") == []


def test_refuses_a_non_empty_folder_and_overwrite_replaces(reference_csv, tmp_path):
    csv_path, *_ = reference_csv
    out = tmp_path / "out"
    out.mkdir()
    prepare(csv_path, out, config=small(), workers=1)  # an existing EMPTY folder is fine
    with pytest.raises(DataError, match=re.escape(f"{out}: directory exists and is not empty (use --overwrite")):
        prepare(csv_path, out, config=small(), workers=1)
    (out / "notes.txt").write_text("the user's")  # planted among fertool's files: never removed
    (out / "PublicTest" / "mine.jpg").write_bytes(b"not fertool's")
    (out / ".cache").mkdir()
    (out / ".cache" / "PublicTest-0123456789abcdef.npy").write_bytes(b"old cache")  # fertool's: goes
    (out / OUTPUT_MARKER).unlink()  # a prepared folder from before markers: its manifest says what is fertool's
    old_image = next(p for p in (out / "Training").rglob("*.jpg"))
    old_image.rename(old_image.with_name("99999.jpg"))  # an image of the old run the new one does not have
    listed = (out / "manifest.csv").read_text().replace(f"/{old_image.name}", "/99999.jpg")
    (out / "manifest.csv").write_text(listed)
    summary = prepare(csv_path, out, config=small(16), workers=1, overwrite=True)
    assert summary["recipe"]["size"] == 16
    assert (out / "notes.txt").read_text() == "the user's"
    assert (out / "PublicTest" / "mine.jpg").read_bytes() == b"not fertool's"
    assert not (out / ".cache").exists() and not old_image.with_name("99999.jpg").exists()
    assert old_image.is_file() and Image.open(old_image).size == (16, 16)
    assert siblings(out) == []


def test_overwrite_keeps_the_old_data_when_the_new_run_fails(reference_csv, tmp_path):
    csv_path, *_ = reference_csv
    out = tmp_path / "out"
    prepare(csv_path, out, config=small(), workers=1)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match="bad rows"):
        prepare(_bad_csv(tmp_path), out, config=small(), workers=1, overwrite=True)

    def interrupt(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(csv_path, out, config=small(), workers=1, overwrite=True, progress=interrupt)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and siblings(out) == []


def test_a_folder_that_is_not_a_prepared_dataset_keeps_its_files(reference_csv, tmp_path):
    csv_path, *_ = reference_csv
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    (precious / "manifest.csv").write_text("the user's own manifest")  # a name fertool writes: replaced, as asked
    with pytest.raises(DataError, match="not a fertool prepared dataset"):
        prepare(csv_path, precious, config=small(), workers=1)
    assert sorted(p.name for p in precious.iterdir()) == ["manifest.csv", "thesis.tex"]
    prepare(csv_path, precious, config=small(), workers=1, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "..."
    assert (precious / "prepare.json").is_file() and siblings(precious) == []
    prepare(csv_path, precious, config=small(16), workers=1, overwrite=True)  # now fertool's: replaced again
    assert (precious / "thesis.tex").read_text() == "..."
    # nor a prepared folder that holds the CSV itself
    out = tmp_path / "out"
    prepare(csv_path, out, config=small(), workers=1)
    inside = out / "fer.csv"
    inside.write_bytes(csv_path.read_bytes())
    with pytest.raises(DataError, match="the CSV is inside"):
        prepare(inside, out, config=small(), workers=1, overwrite=True)
    assert inside.is_file()


def test_an_output_that_cannot_be_created_is_one_clear_error(reference_csv, tmp_path):
    csv_path, *_ = reference_csv
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FertoolError, match=re.escape(f"{blocker / 'out'}: cannot create it ({blocker} is a file")):
        prepare(csv_path, blocker / "out", config=small(), workers=1)


# --------------------------------------------------------------------------- reliability (issue 11)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cr_only_csv_prepares_exactly_like_its_lf_twin(tmp_path):
    rng = np.random.default_rng(5)
    n = 140  # several chunks, so workers read CR-delimited byte ranges
    images, labels = rng.integers(0, 256, (n, 48, 48)), rng.integers(0, 7, n)
    lf = write_fer_csv(tmp_path / "lf.csv", images, labels, [SPLITS[i % 3] for i in range(n)])
    cr = tmp_path / "cr.csv"
    cr.write_bytes(lf.read_bytes().replace(b"\n", b"\r"))
    prepare(lf, tmp_path / "a", config=small(), workers=1)
    summary = prepare(cr, tmp_path / "b", config=small(), workers=2)
    assert summary["source"]["data_rows"] == n
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a if not k.endswith("prepare.json"))


def test_outputs_get_the_umask_permissions(reference_csv, tmp_path):
    import os
    import stat

    path, *_ = reference_csv
    old = os.umask(0o022)
    try:
        prepare(path, tmp_path / "out", config=small(), workers=1)
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for p in [out / "manifest.csv", out / "prepare.json", out / "recipe.yaml", *out.rglob("*.jpg")]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    for p in out.rglob("*"):
        if p.is_dir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o755, p


def test_partial_folders_of_dead_runs_are_swept_and_live_ones_kept(reference_csv, tmp_path):
    import os
    import subprocess
    import sys

    path, *_ = reference_csv
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.{dead.pid}-q1w2e3r4.partial"
    (stale / "Training" / "Anger").mkdir(parents=True)
    (stale / "Training" / "Anger" / "00000.jpg").write_bytes(b"half")
    live = tmp_path / f".out.{os.getppid()}-a1b2c3d4.partial"  # our parent is alive
    live.mkdir()
    prepare(path, tmp_path / "out", config=small(), workers=1)
    assert not stale.exists() and live.exists()
    assert siblings(tmp_path / "out") == [live.name]
