"""fertool/protocol.py: the paper's constants and the small rules built on them."""

from __future__ import annotations

import pytest

from fertool.protocol import TABLE2, checkpoint_kind, normalise_stage, paper_set, stage_dir


def test_stage_names_and_folders(tmp_path):
    assert [normalise_stage(s) for s in (1, "stage2", " 3 ", "c", "Controller")] == [
        "1",
        "2",
        "3",
        "controller",
        "controller",
    ]
    assert stage_dir(tmp_path, 4) == tmp_path / "stage4" and stage_dir(tmp_path, "ctrl") == tmp_path / "controller"
    with pytest.raises(ValueError, match="unknown stage"):
        normalise_stage("5")


def test_which_model_a_checkpoint_holds():
    assert checkpoint_kind({"arch": "resnet34v2", "arch_args": {}}) == "backbone"
    assert checkpoint_kind({"arch": "lhc_net", "arch_args": {}}) == "lhc"
    assert checkpoint_kind({"arch": "lhc_netc", "arch_args": {}}) == "controller"
    # torchvision's trunk carries its modules as arguments
    assert checkpoint_kind({"arch": "resnet34_tv", "arch_args": {"lhc": [{"after": "stem"}]}}) == "lhc"
    assert (
        checkpoint_kind({"arch": "resnet34_tv", "arch_args": {"lhc": [{}], "controller_init": [0.0]}}) == "controller"
    )


def test_the_paper_run_sets():
    other = [dict(m, heads=1) for m in TABLE2]
    assert paper_set("resnet34v2", "stage4", None) == "A"  # stage 4 without LHC modules
    assert paper_set("lhc_net", "stage4", [dict(m) for m in TABLE2]) == "C"
    assert paper_set("lhc_net", "stage4", None) == "C"  # no recipe: the default, Table 2
    assert paper_set("lhc_net", "stage4", other) == "B"
    assert paper_set("resnet34v2", "stage3", None) is None and paper_set("lhc_netc", "controller", None) is None
