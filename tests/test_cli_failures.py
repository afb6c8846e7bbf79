"""The CLI boundary: every command fails on an output it cannot write with one ``error:``
line naming the path and the cause, never a traceback; text from input files is escaped."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

from fertool.cli import app, failure_lines
from fertool.errors import printable
from tests.conftest import SHARED_REFERENCE, TEST_DATA, TINY_WIDTH

TINY = {
    "model": {
        "input_size": 32,
        "hidden": [8, 8],
        "bn_momentum": 0.9,
        **TINY_WIDTH,
        "lhc": [{"after": "stem", "heads": 4, "dim": 8}],
        "controller_init": [0.0],
    },
    "train": {"eval_batch_size": 16, "stages": {"1": {"optimizer": "sgd", "max_epochs": 1, "batch_size": 7}}},
    "pipeline": {"seeds": [1]},
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny CSV, recipe, backbone and LHC-Net checkpoints, an evaluated run, an image."""
    import cv2

    from fertool.checkpoint import make_checkpoint, save_checkpoint
    from fertool.data.sample import generate_sample
    from fertool.models import build_model

    root = tmp_path_factory.mktemp("failures")
    csv = generate_sample(root / "sample.csv", per_class=2, seed=0)
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    torch.manual_seed(0)
    args = {"input_size": 32, "num_classes": 7, "hidden": [8, 8], **TINY_WIDTH}
    backbone = root / "run" / "stage3" / "best.pt"
    save_checkpoint(
        backbone,
        make_checkpoint(
            arch="resnet34v2", arch_args=args, stage="3", state_dict=build_model("resnet34v2", **args).state_dict()
        ),
    )
    lhc_args = {**args, "lhc": [{"after": "stem", "heads": 4, "dim": 8}]}
    lhc = root / "run" / "stage4" / "best.pt"
    save_checkpoint(
        lhc,
        make_checkpoint(
            arch="lhc_net", arch_args=lhc_args, stage="4", state_dict=build_model("lhc_net", **lhc_args).state_dict()
        ),
    )
    image = root / "face.png"
    cv2.imwrite(str(image), (torch.rand(64, 64) * 255).byte().numpy())
    blocker = root / "blocker"  # a regular file: nothing can be created below it, even by root
    blocker.write_text("not a folder\n")
    return {
        "root": root,
        "csv": csv,
        "recipe": recipe,
        "backbone": backbone,
        "lhc": lhc,
        "image": image,
        "blocker": blocker,
    }


def _keras_file():
    for folder in (SHARED_REFERENCE, TEST_DATA):
        if (folder / "keras_resnet34_notop.h5.gz").is_file():
            return folder / "keras_resnet34_notop.h5.gz"
    return None


def _commands(d: dict, out: str) -> dict[str, list[str]]:
    """Every command that writes, with its output at ``out``."""
    commands = {
        "sample-data": ["sample-data", "--out", f"{out}.csv"],
        "prepare": ["prepare", "--csv", str(d["csv"]), "--out", out, "-q"],
        "train": [
            "train",
            "--stage",
            "1",
            "--run",
            out,
            "--csv",
            str(d["csv"]),
            "-r",
            str(d["recipe"]),
            "--device",
            "cpu",
            "-q",
        ],
        "augment-lhc": ["augment-lhc", "-c", str(d["backbone"]), "-r", str(d["recipe"]), "-o", f"{out}.pt"],
        "evaluate": ["evaluate", "-c", str(d["backbone"]), "--csv", str(d["csv"]), "-o", out, "--device", "cpu", "-q"],
        "ablate": [
            "ablate",
            "-c",
            str(d["lhc"]),
            "--csv",
            str(d["csv"]),
            "--modes",
            "off",
            "-o",
            out,
            "--device",
            "cpu",
            "-q",
        ],
        "report": ["report", str(d["root"] / "evaluated"), "-o", out],
        "pipeline": ["pipeline", "-r", str(d["recipe"]), "--csv", str(d["csv"]), "--run", out, "--device", "cpu", "-q"],
        "predict": ["predict", str(d["image"]), "-c", str(d["backbone"]), "--out", out, "--device", "cpu", "-q"],
        "export": ["export", "-c", str(d["backbone"]), "-f", "torchscript", "-o", f"{out}.pt"],
    }
    keras = _keras_file()
    if keras is not None:
        commands["import"] = ["import", str(keras), "--input-size", "32", "--out", f"{out}.pt"]
    return commands


@pytest.fixture(scope="module")
def evaluated(inputs, cli_runner_module):
    """An evaluated run for ``report``."""
    result = cli_runner_module.invoke(
        app,
        [
            "evaluate",
            "-c",
            str(inputs["backbone"]),
            "--csv",
            str(inputs["csv"]),
            "-o",
            str(inputs["root"] / "evaluated" / "stage3" / "eval-PrivateTest"),
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    return inputs


@pytest.fixture(scope="module")
def cli_runner_module():
    from typer.testing import CliRunner

    return CliRunner()


def _assert_one_clean_error(result, must_name: str, command: str) -> None:
    assert result.exit_code == 1, (command, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, (command, result.stderr)
    assert must_name in errors[0], (command, errors[0])


def test_every_command_under_an_unwritable_path_fails_in_one_line(evaluated, cli_runner_module):
    blocker = evaluated["blocker"]
    commands = _commands(evaluated, str(blocker / "sub" / "out"))
    assert len(commands) >= 10  # every writing command of the product (import with the Keras fixture)
    for name, args in commands.items():
        result = cli_runner_module.invoke(app, args)
        _assert_one_clean_error(result, str(blocker), name)
        assert blocker.read_text() == "not a folder\n", name  # nothing written over it


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "ablate", "report", "pipeline", "predict"])
def test_an_existing_file_given_as_output_folder_is_one_error_line(evaluated, cli_runner_module, command):
    blocker = evaluated["blocker"]
    args = _commands(evaluated, str(blocker))[command]
    result = cli_runner_module.invoke(app, args)
    _assert_one_clean_error(result, str(blocker), command)
    assert blocker.read_text() == "not a folder\n"


def test_failure_lines_name_path_and_cause_for_any_exception():
    lines, code = failure_lines(PermissionError(13, "Permission denied", "/x/y"))
    assert (lines, code) == (["/x/y: Permission denied"], 1)
    lines, code = failure_lines(OSError(18, "Invalid cross-device link", "/a", None, "/b"))
    assert lines == ["/a -> /b: Invalid cross-device link"]
    lines, code = failure_lines(KeyboardInterrupt())
    assert (lines, code) == (["interrupted"], 130)
    lines, _ = failure_lines(RuntimeError("boom\nsecond line"))
    assert lines[0].startswith("unexpected RuntimeError: boom") and "FERTOOL_DEBUG=1" in lines[0]
    assert len(lines) == 1


def test_debug_shows_the_traceback(inputs, cli_runner):
    args = _commands(inputs, str(inputs["blocker"] / "x"))["sample-data"]
    result = cli_runner.invoke(app, args, env={"FERTOOL_DEBUG": "1"})
    assert result.exit_code != 0 and isinstance(result.exception, OSError)


def test_escape_sequences_from_a_csv_header_never_reach_the_terminal(tmp_path, cli_runner):
    csv = tmp_path / "evil.csv"
    csv.write_bytes(b"emotion,pix\x1b]0;owned\x07els\x1b[2J,Usage\n0," + b"1 " * 2303 + b"1,Training\n")
    result = cli_runner.invoke(app, ["prepare", "--csv", str(csv), "--out", str(tmp_path / "p"), "-q"])
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "pix\\x1b]0;owned\\x07els\\x1b[2J" in result.stderr


def test_printable_escapes_controls_and_bidi_overrides_only():
    assert printable("caf\u00e9 \u4e2d ok") == "caf\u00e9 \u4e2d ok"
    assert printable("a\x1b[31mb\tc\u202ed\x9b") == "a\\x1b[31mb\\x09c\\u202ed\\x9b"
    assert printable(os.fspath("/tmp/x")) == "/tmp/x"


def test_library_errors_name_parameters_and_the_command_line_says_the_flag():
    from fertool.errors import FertoolError
    from fertool.evaluation.runtimes import choose_engine

    with pytest.raises(FertoolError) as caught:
        choose_engine("onnxruntime", "meta")
    assert str(caught.value) == "engine onnxruntime: runs on the CPU only (device is meta; use engine=torch)"
    assert failure_lines(caught.value)[0] == [
        "--engine onnxruntime: runs on the CPU only (device is meta; use --engine torch)"
    ]
    lines, _ = failure_lines(
        FertoolError("sets: must be some of single, all\nmax_images: must be >= 1\ntrain.precision: x")
    )
    assert lines == ["--subsets: must be some of single, all", "--max-images: must be >= 1", "train.precision: x"]
