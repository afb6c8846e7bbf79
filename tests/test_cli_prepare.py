"""`fertool prepare` and `fertool sample-data` through the CLI: exit codes, messages, files."""

from __future__ import annotations

import json

import pytest

from fertool.cli import app


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory):
    from fertool.data.sample import generate_sample

    return generate_sample(tmp_path_factory.mktemp("sample") / "sample.csv", per_class=4, seed=0)


def test_sample_data_writes_and_refuses_to_overwrite(cli_runner, tmp_path):
    path = tmp_path / "s.csv"
    result = cli_runner.invoke(app, ["sample-data", "--out", str(path), "--per-class", "4", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert f"{path}: 42 synthetic faces" in result.stdout and "wrote" not in result.stdout
    assert f"wrote {path}" in result.stderr and "synthetic" in result.stderr
    first = path.read_bytes()
    result = cli_runner.invoke(app, ["sample-data", "--out", str(path), "--per-class", "4"])
    assert (
        result.exit_code == 1 and result.stderr.strip() == f"error: {path}: file exists (use --overwrite to replace it)"
    )
    assert path.read_bytes() == first
    result = cli_runner.invoke(app, ["sample-data", "--out", str(path), "--per-class", "4", "--overwrite"])
    assert result.exit_code == 0 and path.read_bytes() != first  # seed 0 now
    assert cli_runner.invoke(app, ["sample-data", "--out", str(path), "--per-class", "0"]).exit_code == 2


def test_prepare_prints_counts_and_canonical_warnings(cli_runner, sample_csv, tmp_path):
    out = tmp_path / "out"
    result = cli_runner.invoke(
        app, ["prepare", "--csv", str(sample_csv), "--out", str(out), "--quiet", "--set", "prepare.size=32"]
    )
    assert result.exit_code == 0, result.output
    assert "42 images" in result.stdout and "Happiness" in result.stdout and "PrivateTest" in result.stdout
    assert "warning: not the canonical FER2013" in result.stderr
    assert "  - 42 rows, the canonical FER2013 has 35,887" in result.stderr
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["recipe"]["size"] == 32 and summary["images"] == 42
    assert "size: 32" in (out / "recipe.yaml").read_text()

    # a second run into the same folder is refused, --overwrite replaces
    result = cli_runner.invoke(app, ["prepare", "--csv", str(sample_csv), "--out", str(out), "--quiet"])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {out}: directory exists and is not empty (use --overwrite to replace it)"
    result = cli_runner.invoke(
        app,
        ["prepare", "--csv", str(sample_csv), "--out", str(out), "--quiet", "--overwrite", "--set", "prepare.size=16"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "prepare.json").read_text())["recipe"]["size"] == 16


def test_prepare_progress_bar_is_on_stderr(cli_runner, sample_csv, tmp_path):
    result = cli_runner.invoke(
        app, ["prepare", "--csv", str(sample_csv), "--out", str(tmp_path / "o"), "--set", "prepare.size=16"]
    )
    assert result.exit_code == 0, result.output
    assert " img" in result.stderr and " img" not in result.stdout  # "prepare: 42/42 img, ..."


def test_prepare_bad_rows_exit_1_with_lines_and_write_nothing(cli_runner, sample_csv, tmp_path):
    bad = tmp_path / "bad.csv"
    lines = sample_csv.read_text().splitlines()
    lines[3] = lines[3].replace(",Training", ",Validation")
    lines[5] = "8" + lines[5][1:]
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = cli_runner.invoke(app, ["prepare", "--csv", str(bad), "--out", str(out), "--quiet"])
    assert result.exit_code == 1
    err = result.stderr.splitlines()
    assert err[0] == f"error: {bad}: 2 bad rows; nothing was written (--skip-bad writes the good rows):"
    assert err[1].startswith(f"error: {bad}:4: unknown Usage 'Validation'")
    assert err[2].startswith(f"error: {bad}:6: unknown emotion label 8")
    assert not out.exists()

    result = cli_runner.invoke(
        app, ["prepare", "--csv", str(bad), "--out", str(out), "--quiet", "--skip-bad", "--set", "prepare.size=16"]
    )
    assert result.exit_code == 0, result.output
    assert "warning: skipped 2 bad rows (listed in prepare.json)" in result.stderr
    assert [s["line"] for s in json.loads((out / "prepare.json").read_text())["skipped"]] == [4, 6]


@pytest.mark.parametrize(
    "content, message",
    [
        ("pixels\n1 2 3\n", "test.csv, which has no labels"),
        ("id,image\n1,2\n", "not a FER2013 CSV: header 'id,image'"),
        ("", "empty file"),
    ],
)
def test_prepare_refuses_wrong_files(cli_runner, tmp_path, content, message):
    path = tmp_path / "x.csv"
    path.write_text(content)
    result = cli_runner.invoke(app, ["prepare", "--csv", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 1 and result.stderr.startswith(f"error: {path}") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_prepare_usage_errors_exit_2(cli_runner, tmp_path):
    assert cli_runner.invoke(app, ["prepare", "--out", str(tmp_path / "o")]).exit_code == 2  # --csv missing
    result = cli_runner.invoke(app, ["prepare", "--csv", "x.csv", "--out", str(tmp_path / "o"), "--workers", "0"])
    assert result.exit_code == 2
    result = cli_runner.invoke(
        app, ["prepare", "--csv", "x.csv", "--out", str(tmp_path / "o"), "--set", "prepare.jpeg_quality=101"]
    )
    assert result.exit_code == 1 and "prepare.jpeg_quality: must be between 1 and 100, got 101" in result.stderr


def test_prepare_source_options_must_make_sense(cli_runner, tmp_path):
    for args in (
        [],
        ["--csv", "a.csv", "--folder", "d"],
        ["--folder", "d", "--ferplus", "l.csv"],
        ["--csv", "a.csv", "--label-mode", "crossentropy"],
    ):
        result = cli_runner.invoke(app, ["prepare", "--out", str(tmp_path / "o"), *args])
        assert result.exit_code == 2, (args, result.output)
    assert not (tmp_path / "o").exists()


def test_prepare_ferplus_and_folder_from_the_cli(cli_runner, tmp_path):
    from fertool.data.sample import generate_ferplus_sample, generate_folder_sample

    fp = generate_ferplus_sample(tmp_path / "fp", per_class=2)
    result = cli_runner.invoke(
        app,
        [
            "prepare",
            "--csv",
            str(fp / "fer2013.csv"),
            "--ferplus",
            str(fp / "fer2013new.csv"),
            "--label-mode",
            "crossentropy",
            "--out",
            str(tmp_path / "p1"),
            "-q",
            "--set",
            "prepare.size=16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Contempt" in result.stdout and "of 8 classes" in result.stdout and "FER+: dropped" in result.stderr
    assert json.loads((tmp_path / "p1" / "prepare.json").read_text())["label_mode"] == "crossentropy"
    folder = generate_folder_sample(tmp_path / "f", per_class=4)
    result = cli_runner.invoke(
        app,
        [
            "prepare",
            "--folder",
            str(folder),
            "--out",
            str(tmp_path / "p2"),
            "-q",
            "--set",
            "prepare.size=16",
            "--set",
            "data.classes=[surprise, sad, neutral, happy, anger]",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p2" / "prepare.json").read_text())["classes"] == [
        "surprise",
        "sad",
        "neutral",
        "happy",
        "anger",
    ]
    assert "carved" in result.stderr
