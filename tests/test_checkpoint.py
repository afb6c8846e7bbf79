"""fertool.checkpoint: damaged, foreign and hand-made files fail in one line, before any allocation."""

from __future__ import annotations

import resource

import pytest
import torch

from fertool.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from fertool.cli import app
from fertool.errors import CheckpointError
from fertool.models import build_model
from fertool.surgery import model_from_checkpoint
from tests.conftest import TINY_WIDTH

ARGS = {"input_size": 32, "num_classes": 7, "hidden": [8, 8], **TINY_WIDTH}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resnet34v2", **ARGS)
    ckpt = make_checkpoint(arch="resnet34v2", arch_args=ARGS, state_dict=model.state_dict(), stage="1", epoch=1)
    path = tmp_path_factory.mktemp("ckpt") / "good.pt"
    save_checkpoint(path, ckpt)
    return path, ckpt


def _edited(tmp_path, ckpt, **changes):
    data = {**ckpt, **changes}
    for key, value in list(changes.items()):
        if value is KeyError:
            del data[key]
    path = tmp_path / "edited.pt"
    torch.save(data, path)
    return path


def test_the_good_checkpoint_loads_and_rebuilds(good):
    path, ckpt = good
    model = model_from_checkpoint(load_checkpoint(path))
    assert torch.equal(model.state_dict()["head.fc3.weight"], ckpt["state_dict"]["head.fc3.weight"])


@pytest.mark.parametrize(
    "change,message",
    [
        ({"state_dict": KeyError}, "not a valid fertool checkpoint: 'state_dict' is missing"),
        ({"arch_args": [1, 2]}, "'arch_args' is a list, expected dict"),
        ({"epoch": "7"}, "'epoch' is a str, expected int or null"),
        ({"class_names": [1, 2]}, "'class_names' holds entries that are not strings"),
        ({"state_dict": {"stem.conv.weight": [1.0]}}, "'state_dict' holds 1 entries that are not named tensors"),
    ],
)
def test_structure_problems_are_one_line(good, tmp_path, change, message):
    path = _edited(tmp_path, good[1], **change)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_tensor_of_the_wrong_shape_is_named(good, tmp_path):
    state = dict(good[1]["state_dict"])
    state["head.fc3.weight"] = torch.zeros(3, 3)
    with pytest.raises(
        CheckpointError,
        match=r"tensor 'head.fc3.weight' has shape \[3, 3\], architecture "
        r"'resnet34v2' needs \[7, 8\]",
    ):
        load_checkpoint(_edited(tmp_path, good[1], state_dict=state))


@pytest.mark.parametrize(
    "args,message",
    [
        ({**ARGS, "hidden": [10**9, 10**9]}, "arch_args describe a model of 1,000,000,"),
        ({**ARGS, "input_size": 10**6}, "arch_args.input_size must be an integer 32..2048, got 1000000"),
        ({**ARGS, "input_size": "224"}, "arch_args.input_size must be an integer"),
        ({**ARGS, "hidden": [-4]}, "must all be positive integers"),
        ({**ARGS, "colour": True}, "unexpected keyword argument 'colour'"),
    ],
)
def test_absurd_arch_args_are_refused_before_allocating(good, tmp_path, args, message):
    path = _edited(tmp_path, good[1], arch_args=args)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing big was allocated


@pytest.mark.parametrize(
    "content,message",
    [
        (
            b"hello world\n" * 20,
            "is a text file (it begins 'hello world hello world hello world hell'), not a fertool checkpoint",
        ),
        (b"", "is empty (0 bytes), not a checkpoint (an interrupted copy or download?)"),
        (
            b"\x89HDF\r\n\x1a\n" + bytes(100),
            "is an HDF5 file (a Keras .h5?), not a fertool checkpoint; convert it with `fertool import`",
        ),
    ],
)
def test_foreign_files_are_explained(tmp_path, content, message):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: {message}"


def test_truncated_and_pickled_files_are_explained_in_full(good, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good[0].read_bytes()[:4000])
    with pytest.raises(
        CheckpointError,
        match=r"cut.pt: is truncated or corrupted \(its zip structure is "
        r"incomplete: an interrupted copy or download\?\)$",
    ):
        load_checkpoint(cut)
    pickled = tmp_path / "objects.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a whole module: needs unpickling code
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(pickled)
    message = str(info.value)
    assert len(message) > 160 + len(str(pickled))  # no longer cut at 160 characters mid-sentence
    assert message.endswith("which fertool never unpickles, so that no code from a file runs")


def test_the_cli_shows_each_bad_checkpoint_in_one_line(good, tmp_path, cli_runner):
    state = dict(good[1]["state_dict"])
    state["head.fc3.weight"] = torch.zeros(3, 3)
    files = {
        "nostate": _edited(tmp_path, good[1], state_dict=KeyError),
        "text": tmp_path / "notes.txt",
    }
    files["text"].write_text("these are my notes\n")
    for name in ("nostate", "text"):
        result = cli_runner.invoke(app, ["info", "-c", str(files[name])])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr
