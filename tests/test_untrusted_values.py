"""Untrusted text escaped at every output; non-finite weights and class lists that do not fit
refused where they enter (issue 26)."""

from __future__ import annotations

import re

import pytest
import torch

from fertool.checkpoint import load_checkpoint, save_checkpoint
from fertool.cli import app
from fertool.errors import CheckpointError
from tests.test_ablation import ckpts  # noqa: F401 - a fixture: an LHC-Net checkpoint for ablate
from tests.test_predict import make_tiny_checkpoint

HOSTILE = "x\x1b[2J\x1b]0;owned\x07\nfake: line[bold]"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("untrusted") / "tiny.pt")


def _variant(tiny, tmp_path, name, change):
    ckpt = torch.load(tiny, weights_only=True)
    change(ckpt)
    path = tmp_path / name
    save_checkpoint(path, ckpt)
    return path


def _assert_clean(text):
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b" in text  # shown, escaped
    assert not any(line.startswith("fake: line") for line in text.splitlines())


def test_predict_error_lines_escape_file_names(tiny, tmp_path, cli_runner):
    bad = tmp_path / (HOSTILE + ".png")
    bad.write_bytes(b"not an image")
    res = cli_runner.invoke(app, ["predict", str(bad), "-c", str(tiny), "-q"])
    assert res.exit_code == 1
    _assert_clean(res.output)


def test_info_escapes_class_names_from_a_checkpoint(tiny, tmp_path, cli_runner):
    path = _variant(tiny, tmp_path, "named.pt", lambda c: c.update(class_names=[HOSTILE] + [f"c{i}" for i in range(6)]))
    res = cli_runner.invoke(app, ["info", "-c", str(path)])
    assert res.exit_code == 0, res.output
    _assert_clean(res.output)
    assert "line[bold]" in res.output  # not eaten as markup


def test_nan_weights_are_refused_by_evaluate_and_predict(tiny, tmp_path, cli_runner):
    def poison(c):
        key = next(k for k, v in c["state_dict"].items() if v.is_floating_point() and "weight" in k)
        c["state_dict"][key] = torch.full_like(c["state_dict"][key], float("nan"))

    path = _variant(tiny, tmp_path, "nan.pt", poison)
    with pytest.raises(CheckpointError, match="holds NaN or infinite values"):
        load_checkpoint(path)
    photo = tmp_path / "p.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(photo), np.full((64, 64, 3), 128, np.uint8))
    res = cli_runner.invoke(app, ["predict", str(photo), "-c", str(path), "-q"])
    assert res.exit_code == 1 and "p nan" not in res.output and "NaN or infinite" in res.output


def test_class_names_of_the_wrong_length_are_refused(tiny, tmp_path):
    path = _variant(tiny, tmp_path, "five.pt", lambda c: c.update(class_names=list("abcde")))
    with pytest.raises(CheckpointError, match="records 5 class names for a model of 7 classes"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stages.9.lr=1", "must name only the stages 1, 2, 3, 4, controller"),
        ("model.lhc.-1.heads=2", "no list item -1"),
        ("model.input_size=100000", "model.input_size: must be between 1 and 2,048"),
        ("model.input_size=99999999999999999999", "must be between 1 and 2,048"),
        ("model.hidden=[4096, 100000000]", "each 1 to 65,536"),
        ("model.lhc.0.heads=100000", "must be between 1 and 1,024"),
        ("x=" + "[" * 5000 + "]" * 5000, "nested deeper than a recipe may be (32 levels)"),
    ],
)
def test_recipe_sizes_and_counts_are_bounded(override, message):
    from fertool.errors import RecipeError
    from fertool.recipe import load_recipe

    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(None, overrides=[override])


def test_a_deeply_nested_recipe_file_is_one_error_line(tmp_path, cli_runner):
    path = tmp_path / "deep.yaml"
    path.write_text("model: " + "[" * 5000 + "]" * 5000 + "\n")
    res = cli_runner.invoke(app, ["info", "-r", str(path)])
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert "nested deeper than a recipe may be (32 levels)" in res.output


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` and holds no pixels (a few dozen bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20000, 32000])
def test_images_over_the_pixel_cap_are_refused_before_decoding(tmp_path, side):
    from fertool.data.cache import _decode
    from fertool.deploy.predict import read_image
    from fertool.errors import DataError

    path = tmp_path / "huge.png"
    path.write_bytes(_png_header(side, side))
    for read in (read_image, _decode):
        with pytest.raises(DataError, match=f"{side}x{side} pixels, more than the 100,000,000"):
            read(path)


def test_a_garbage_cascade_is_one_error_naming_the_file(tmp_path):
    from fertool.deploy.faces import load_detector
    from fertool.errors import FertoolError

    path = tmp_path / "garbage.xml"
    path.write_text('<?xml version="1.0"?><opencv_storage><cascade>garbage</cascade></opencv_storage>')
    with pytest.raises(FertoolError, match=f"^{re.escape(str(path))}: not a readable OpenCV cascade file$"):
        load_detector(str(path))


def test_a_tf_checkpoint_file_names_only_files_inside_its_folder(tmp_path):
    from fertool.models.tf_bundle import latest_prefix

    folder = tmp_path / "ckpt"
    folder.mkdir()
    outside = tmp_path / "other"
    outside.mkdir()
    (outside / "model.index").write_bytes(b"")
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{outside / "model"}"\n')
    assert latest_prefix(folder) == folder / "model"  # an absolute path: its name, here
    (folder / "checkpoint").write_text('model_checkpoint_path: "../other/model"\n')
    with pytest.raises(CheckpointError, match="leads out of"):
        latest_prefix(folder)
    (folder / "checkpoint").write_text('model_checkpoint_path: "sub/model"\n')
    assert latest_prefix(folder) == folder / "sub" / "model"


def test_a_damaged_png_is_not_decodable_and_libpng_stays_silent(capfd):
    """A PNG with a flipped IDAT byte (libpng: 'IDAT: CRC error') or cut in half (OpenCV:
    'PNG input buffer is incomplete') never reaches OpenCV: nothing is written on fd 2."""
    import cv2
    import numpy as np

    from fertool.imagecap import decode_image

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    data = cv2.imencode(".png", pixels)[1].tobytes()
    i = data.index(b"IDAT") + 100
    flipped = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
    capfd.readouterr()
    assert decode_image(flipped, "flipped.png") is None
    assert decode_image(data[: len(data) // 2], "cut.png") is None
    assert capfd.readouterr().err == ""
    assert np.array_equal(decode_image(data, "whole.png"), pixels)  # an intact PNG decodes as before


def _hostile_cases(tiny, tmp_path, request):
    """(command line, expected exit code) of every command that echoes a file name: a name with
    an escape sequence, a bell, a newline and markup goes through its error or its output."""
    import yaml

    from tests.test_ablation import TINY_LHC, _write_csv
    from tests.test_report import _five_runs

    name = tmp_path / HOSTILE
    name.mkdir()
    garbage = tmp_path / (HOSTILE + ".pt")
    garbage.write_bytes(b"not a checkpoint")
    csv = _write_csv(tmp_path / "fer.csv", counts=(("PrivateTest", 2),))
    bad_csv = tmp_path / (HOSTILE + ".csv")
    bad_csv.write_text("emotion,pixels,Usage\n9,1 2 3,Training\n")
    h5 = tmp_path / (HOSTILE + ".h5")
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    recipe = tmp_path / "tiny-lhc.yaml"  # LHC modules that fit the tiny model's 32x32 input
    recipe.write_text(yaml.safe_dump({"model": {"input_size": 32, "lhc": TINY_LHC}}))
    return {
        "evaluate": (["evaluate", "-c", str(garbage), "--csv", str(csv), "--device", "cpu"], 1),
        "evaluate-out": (["evaluate", "-c", str(tiny), "--csv", str(csv), "-o", str(name / "e"), "--device", "cpu"], 0),
        "ablate": (["ablate", "-c", str(garbage), "--csv", str(csv), "--device", "cpu"], 1),
        "ablate-out": lambda: (
            ["ablate", "-c", str(request.getfixturevalue("ckpts")["paths"]["trained"]), "--csv", str(csv)]
            + ["--out", str(name / "a"), "--modes", "off", "--subsets", "single", "--pictures", "0", "--device", "cpu"],
            0,
        ),
        "report": (["report", str(name)], 1),
        "report-out": lambda: (
            _five_runs(name / "runs") or ["report", str(name / "runs"), "--out", str(name / "o"), "--no-tta"],
            0,
        ),
        "export": (["export", "-c", str(garbage), "-f", "torchscript", "-o", str(tmp_path / "x.pt")], 1),
        "export-out": (["export", "-c", str(tiny), "-f", "torchscript", "-o", str(name / "m.pt"), "--samples", "2"], 0),
        "import": (["import", str(h5), "-o", str(tmp_path / "i.pt")], 1),
        "train": (["train", "-s", "1", "--run", str(tmp_path / "r"), "-r", str(tmp_path / (HOSTILE + ".yaml"))], 1),
        "augment-lhc": (["augment-lhc", "-c", str(garbage), "-o", str(tmp_path / "a.pt")], 1),
        "augment-lhc-out": (
            ["augment-lhc", "-c", str(tiny), "-o", str(name / "a.pt"), "-r", str(recipe)],
            0,
        ),
        "prepare": (["prepare", "--csv", str(bad_csv), "--out", str(tmp_path / "p")], 1),
        "prepare-out": (["prepare", "--csv", str(csv), "--out", str(name / "p"), "--workers", "1"], 0),
        "download": (["download", HOSTILE], 1),
    }


CASES = [
    "evaluate",
    "evaluate-out",
    "ablate",
    "ablate-out",
    "report",
    "report-out",
    "export",
    "export-out",
    "import",
    "train",
    "augment-lhc",
    "augment-lhc-out",
    "prepare",
    "prepare-out",
    "download",
]


@pytest.mark.parametrize("case", CASES)
def test_every_command_escapes_the_names_it_echoes(tiny, tmp_path, cli_runner, case, request):
    entry = _hostile_cases(tiny, tmp_path, request)[case]
    args, code = entry() if callable(entry) else entry
    res = cli_runner.invoke(app, args)
    assert res.exit_code == code, res.output
    _assert_clean(res.output)
    assert "line[bold]" in res.output  # shown, not eaten as markup


def test_log_lines_and_sample_data_escape_names(tmp_path, cli_runner, monkeypatch):
    """The log lines of train/pipeline (run folders, checkpoint paths) and sample-data's own lines."""
    import io

    from rich.console import Console

    from fertool.cli import _common

    buffer = io.StringIO()
    monkeypatch.setattr(_common, "err", Console(file=buffer, width=200, color_system=None))
    _common.log_line(f"resuming from {HOSTILE}/last.pt")
    _assert_clean(buffer.getvalue())
    assert "line[bold]" in buffer.getvalue()
    res = cli_runner.invoke(app, ["sample-data", "--out", str(tmp_path / (HOSTILE + ".csv")), "--per-class", "1"])
    assert res.exit_code == 0, res.output
    _assert_clean(res.output)
