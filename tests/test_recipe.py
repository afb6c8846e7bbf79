import pytest
import yaml

from fertool.errors import RecipeError
from fertool.recipe import RECIPES_DIR, TABLE2, load_recipe, save_recipe, to_dict


def test_defaults_are_the_paper():
    r = load_recipe()
    assert r.prepare.size == 224 and r.prepare.jpeg_quality == 100 and r.prepare.subsampling == "4:4:4"
    assert [m.heads for m in r.model.lhc] == [8, 8, 7, 7, 1]
    assert [m.dim for m in r.model.lhc] == [196, 196, 56, 14, 25]
    s = r.train.stages
    assert (s["1"].optimizer, s["1"].lr, s["1"].batch_size, s["1"].patience) == ("adam", 1e-4, 48, 30)
    assert (s["2"].augment.rotation, s["2"].augment.shift, s["2"].augment.zoom) == (10, 0.1, 0.1)
    assert s["controller"].model == "controller" and s["controller"].patience == 1
    assert r.model.controller_init == (0.0, 0.0, 0.0, -1.0, -0.5)


def test_every_problem_reported_together_with_location(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(
        "train:\n  stages:\n    2:\n      lr: -0.01\n      optimiser: sgd\n"
        "model:\n  lhc:\n    - {after: stem, heads: 0, dim: 4}\n"
        "prepare:\n  jpeg_quality: high\n"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    problems = info.value.problems
    assert f"{path}: train.stages.2.lr: must be > 0, got -0.01" in problems
    assert f"{path}: train.stages.2.optimiser: unknown key (did you mean 'optimizer'?)" in problems
    assert f"{path}: model.lhc.0.heads: must be between 1 and 1,024, got 0" in problems
    assert f"{path}: prepare.jpeg_quality: must be an integer, got 'high'" in problems
    # controller_init no longer matches the module count is only checked once fields are valid
    assert len(problems) == 4


def test_set_overrides_are_typed_and_checked():
    r = load_recipe(None, ["train.stages.2.lr=0.005", "model.lhc.0.heads=4", "model.hidden=[8, 4]"])
    assert r.train.stages["2"].lr == 0.005
    assert r.model.lhc[0].heads == 4
    assert r.model.hidden == (8, 4)
    with pytest.raises(RecipeError, match=r"model.input_size: must be an integer, got 'big'"):
        load_recipe(None, ["model.input_size=big"])
    with pytest.raises(RecipeError, match=r"no list item 7 \(the list has 5\)"):
        load_recipe(None, ["model.lhc.7.heads=1"])
    with pytest.raises(RecipeError, match="expected dotted.key=value"):
        load_recipe(None, ["model.input_size"])


def test_cross_field_check_controller_init():
    with pytest.raises(RecipeError, match=r"model.controller_init: needs one value per LHC module \(5\), got 2"):
        load_recipe(None, ["model.controller_init=[0, 0]"])


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  input_size: [1,\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: line \d+: invalid YAML"):
        load_recipe(path)


def test_unknown_recipe_name_lists_shipped():
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe("no-such-recipe")


def test_round_trip_through_saved_yaml(tmp_path):
    r = load_recipe(None, ["model.input_size=64", "train.stages.4.patience=2"])
    save_recipe(r, tmp_path / "recipe.yaml")
    again = load_recipe(tmp_path / "recipe.yaml")
    assert again == r
    assert load_recipe(to_dict(r)) == r


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    load_recipe(path)
    # and contain no key that merely repeats an unknown section
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_table2_matches_spec():
    assert [(m.after, m.heads, m.dim, m.pool, m.kernel, m.scale) for m in TABLE2] == [
        ("stem", 8, 196, 3, 3, 1.0),
        ("stage1_unit3", 8, 196, 3, 3, 1.0),
        ("stage2_unit4", 7, 56, 3, 3, 1.0),
        ("stage3_unit6", 7, 14, 3, 3, 1.0),
        ("stage4_unit3", 1, 25, 3, 3, 1.0),
    ]


def _float_keys(cls, prefix=""):
    """Dotted keys of every float (or tuple of floats) field in the recipe schema, with defaults."""
    import dataclasses
    import typing

    from fertool.recipe import Recipe

    keys = []
    hints = typing.get_type_hints(cls)
    default = cls() if cls is not Recipe else Recipe()
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        value = getattr(default, f.name)
        if tp is float:
            keys.append((key, False))
        elif typing.get_args(tp)[:1] == (float,):
            keys.append((key, True))
        elif dataclasses.is_dataclass(tp):
            keys += _float_keys(tp, key + ".")
        elif isinstance(value, dict):
            for name, item in value.items():
                if dataclasses.is_dataclass(item):
                    keys += _float_keys(type(item), f"{key}.{name}.")
    return keys


def test_nan_and_inf_are_refused_for_every_float_of_the_recipe():
    keys = _float_keys(__import__("fertool.recipe", fromlist=["Recipe"]).Recipe)
    assert ("train.stages.1.lr", False) in keys and ("model.controller_init", True) in keys
    assert ("tta.presets.paper.identity_weight", False) in keys and ("model.lhc", False) not in keys
    for key, is_list in keys:
        for text in (".nan", ".inf", "-.inf"):
            value = f"[{text}]" if is_list else text
            with pytest.raises(RecipeError, match="must be a finite number"):
                load_recipe(None, [f"{key}={value}"])
    with pytest.raises(RecipeError, match=r"model.lhc.0.scale: must be a finite number, got nan"):
        load_recipe(None, ["model.lhc.0.scale=.nan"])


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  amp: false  # r\u00e9sum\u00e9\n".encode("latin-1"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == f"{path}: not UTF-8 text (byte 0xe9 at offset 24); save the recipe as UTF-8"


def test_resume_changes_refuse_what_shapes_the_stage_and_accept_the_documented_safe_keys():
    from fertool.recipe import resume_changes

    saved = to_dict(load_recipe("demo"))
    same = resume_changes(saved, load_recipe("demo", ["train.stages.2.lr=0.5", "tta.preset=flip"]), "1", epochs_done=3)
    assert same == ([], [])  # other stages and sections do not shape stage 1
    changed = load_recipe(
        "demo",
        [
            "train.stages.1.lr=0.5",
            "model.lhc.0.heads=4",
            "train.eval_batch_size=7",
            "data.csv=x.csv",
            "train.stages.1.max_epochs=20",
        ],
    )
    refused, accepted = resume_changes(saved, changed, "1", epochs_done=3)
    assert refused == ["model.lhc.0.heads: 8 -> 4", "train.stages.1.lr: 0.001 -> 0.5"]
    assert accepted == [
        "data.csv: null -> 'x.csv'",
        "train.eval_batch_size: 128 -> 7",
        "train.stages.1.max_epochs: 12 -> 20",
    ]
    fewer = load_recipe("demo", ["train.stages.1.max_epochs=2"])
    assert resume_changes(saved, fewer, "1", epochs_done=3)[0] == [
        "train.stages.1.max_epochs: 12 -> 2 (3 epochs already trained)"
    ]
    assert resume_changes(saved, fewer, "1", epochs_done=2) == ([], ["train.stages.1.max_epochs: 12 -> 2"])


def test_resume_changes_fill_keys_an_older_fertool_did_not_write_with_defaults():
    from fertool.recipe import resume_changes

    saved = to_dict(load_recipe("demo"))
    del saved["train"]["stages"]["1"]["eps"], saved["prepare"]["colour"]  # both at their defaults in demo
    assert resume_changes(saved, load_recipe("demo"), "1", epochs_done=1) == ([], [])


def test_a_removed_key_is_an_error_that_says_so_but_a_stored_recipe_still_loads(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  num_workers: 4\n")
    with pytest.raises(RecipeError, match="train.num_workers: removed"):
        load_recipe(old)
    with pytest.raises(RecipeError, match="--set train.num_workers: removed"):
        load_recipe(None, ["train.num_workers=2"])
    stored = to_dict(load_recipe(None))
    stored["train"]["num_workers"] = 0  # a checkpoint written by an earlier version
    assert load_recipe(stored, stored=True) == load_recipe(None)


def test_the_paper_recipe_spells_out_the_built_in_defaults():
    assert load_recipe("paper") == load_recipe(None)
