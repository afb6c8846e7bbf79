"""The authors' FER2013 split files (data_train/val/test.csv: ';'-separated, label first, pixels
from the third column on) accepted wherever a FER2013 CSV is (fertool/data/authors_split.py)."""

from __future__ import annotations

import pytest

from fertool.cli import app
from fertool.data.authors_split import is_split_source, to_kaggle_csv
from fertool.data.csv import iter_rows
from fertool.errors import DataError

FILES = {"Training": "data_train.csv", "PublicTest": "data_val.csv", "PrivateTest": "data_test.csv"}
HEADER = ";".join(["emotion", "Usage"] + [f"pixel{i}" for i in range(2304)])


@pytest.fixture(scope="module")
def kaggle_and_split(tmp_path_factory):
    """The synthetic sample as Kaggle's fer2013.csv (rows ordered Training, PublicTest, PrivateTest)
    and the same rows as the authors' three split files, written here independently of fertool's
    converter: 'label;Usage;p1;...;p2304' as their get_data reads it."""
    from fertool.data.sample import generate_sample

    root = tmp_path_factory.mktemp("split")
    sample = generate_sample(root / "sample.csv", per_class=3, seed=1)
    rows = list(iter_rows(sample))
    kaggle = root / "fer2013.csv"
    split = root / "authors"
    split.mkdir()
    lines = ["emotion,pixels,Usage"]
    for usage, name in FILES.items():
        mine = [r for r in rows if r.usage == usage]
        lines += [f"{r.label},{' '.join(str(int(v)) for v in r.pixels.ravel())},{usage}" for r in mine]
        text = [HEADER] + [";".join([str(r.label), usage] + [str(int(v)) for v in r.pixels.ravel()]) for r in mine]
        (split / name).write_text("\n".join(text) + "\n")
    kaggle.write_text("\n".join(lines) + "\n")
    return kaggle, split


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FERTOOL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_prepared_images_are_byte_identical_to_the_kaggle_csvs(cli_runner, kaggle_and_split, tmp_path, home):
    kaggle, split = kaggle_and_split
    assert is_split_source(split) and is_split_source(split / "data_val.csv") and not is_split_source(kaggle)
    outs = {}
    for label, source in (("kaggle", kaggle), ("authors", split)):
        outs[label] = tmp_path / label
        result = cli_runner.invoke(app, ["prepare", "--csv", str(source), "--out", str(outs[label]), "-q"])
        assert result.exit_code == 0, result.output
    jpgs = {label: sorted(p.relative_to(out) for p in out.rglob("*.jp*g")) for label, out in outs.items()}
    assert jpgs["kaggle"] and jpgs["kaggle"] == jpgs["authors"]
    for rel in jpgs["kaggle"]:
        assert (outs["kaggle"] / rel).read_bytes() == (outs["authors"] / rel).read_bytes(), rel
    assert {p.parts[0] for p in jpgs["kaggle"]} == set(FILES)  # every split present


def test_conversion_is_cached_by_content(kaggle_and_split, tmp_path):
    _, split = kaggle_and_split
    first = to_kaggle_csv(split, tmp_path)
    mtime = first.stat().st_mtime_ns
    assert to_kaggle_csv(split, tmp_path) == first and first.stat().st_mtime_ns == mtime
    single = to_kaggle_csv(split / "data_test.csv", tmp_path)
    assert single != first
    assert {r.usage for r in iter_rows(single)} == {"PrivateTest"}


def test_bad_rows_are_reported_as_file_line_and_nothing_is_written(kaggle_and_split, tmp_path):
    _, split = kaggle_and_split
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in FILES.values():
        (bad / name).write_bytes((split / name).read_bytes())
    lines = (bad / "data_val.csv").read_text().splitlines()
    fields = lines[1].split(";")
    lines[1] = ";".join(["9"] + fields[1:])  # unknown label, line 2
    lines[2] = ";".join(fields[:-1])  # a pixel missing, line 3
    (bad / "data_val.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        to_kaggle_csv(bad, tmp_path / "cache")
    text = str(info.value)
    assert f"{bad / 'data_val.csv'}:2: unknown emotion label 9" in text
    assert f"{bad / 'data_val.csv'}:3: expected 2306 ';'-separated fields" in text
    assert "data_train.csv" not in text
    assert not list((tmp_path / "cache").glob("*.csv"))


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "data_test.csv missing"),
        ("header", "not the authors' split format"),
        ("name", "must be named data_train.csv"),
    ],
)
def test_wrong_split_sources_are_one_clear_error(kaggle_and_split, tmp_path, cli_runner, home, case, message):
    _, split = kaggle_and_split
    folder = tmp_path / "f"
    folder.mkdir()
    for name in ("data_train.csv", "data_val.csv"):
        (folder / name).write_bytes((split / name).read_bytes())
    target = folder
    if case == "header":
        (folder / "data_test.csv").write_text("a;b;c\n1;2;3\n")
    if case == "name":
        target = tmp_path / "test_split.csv"
        target.write_bytes((split / "data_test.csv").read_bytes())
    result = cli_runner.invoke(app, ["prepare", "--csv", str(target), "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1
    assert result.output.count("error:") == 1 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_train_from_the_split_folder_equals_training_from_the_kaggle_csv(cli_runner, kaggle_and_split, tmp_path, home):
    """One tiny stage 1 from each source: same images, same seed, so the same validation figures."""
    import json

    import yaml

    from tests.test_cli_train import TINY

    kaggle, split = kaggle_and_split
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    metrics = {}
    for label, source in (("kaggle", kaggle), ("authors", split)):
        run = tmp_path / f"run-{label}"
        result = cli_runner.invoke(
            app,
            [
                "train",
                "-r",
                str(recipe),
                "--stage",
                "1",
                "--run",
                str(run),
                "--csv",
                str(source),
                "--device",
                "cpu",
                "-q",
            ],
        )
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in (run / "stage1" / "metrics.jsonl").read_text().splitlines()]
        metrics[label] = [{k: r[k] for k in r if k.startswith(("val_", "train_"))} for r in rows]
    assert metrics["kaggle"] and metrics["kaggle"] == metrics["authors"]
