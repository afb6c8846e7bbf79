"""The ``fertool`` command itself: version, help on every command, the one-line error path."""

from __future__ import annotations

import subprocess
import sys

import typer

from fertool import __version__
from fertool.cli import app
from fertool.errors import FertoolError

COMMANDS = [name for name, command in typer.main.get_command(app).commands.items() if not command.hidden]


def test_version(cli_runner):
    result = cli_runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fertool {__version__}"


def test_every_command_of_the_product_is_registered_with_help(cli_runner):
    assert sorted(COMMANDS) == sorted(
        [
            "prepare",
            "sample-data",
            "train",
            "augment-lhc",
            "evaluate",
            "ablate",
            "report",
            "info",
            "pipeline",
            "predict",
            "export",
            "import",
            "download",
            "reproduce",
        ]
    )
    listing = cli_runner.invoke(app, ["--help"])
    assert listing.exit_code == 0
    for command in COMMANDS:
        assert command in listing.output, command
        result = cli_runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert f"fertool {command}" in result.output


def test_a_library_error_is_one_line_on_stderr_and_exit_1(cli_runner, tmp_path):
    missing = tmp_path / "missing.pt"
    result = cli_runner.invoke(app, ["evaluate", "-c", str(missing), "--csv", str(tmp_path / "x.csv")])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.pt" in lines[0]


def test_usage_errors_exit_2(cli_runner):
    assert cli_runner.invoke(app, ["evaluate"]).exit_code == 2  # --checkpoint is required
    assert cli_runner.invoke(app, ["no-such-command"]).exit_code == 2


def test_fertool_debug_shows_the_traceback(cli_runner, tmp_path):
    args = ["evaluate", "-c", str(tmp_path / "missing.pt")]
    result = cli_runner.invoke(app, args, env={"FERTOOL_DEBUG": "1"})
    assert result.exit_code == 1 and isinstance(result.exception, FertoolError)
    # And as a real process: the traceback reaches stderr.
    proc = subprocess.run(
        [sys.executable, "-m", "fertool", *args],
        capture_output=True,
        text=True,
        env={"FERTOOL_DEBUG": "1", "PATH": ""},
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr
    plain = subprocess.run([sys.executable, "-m", "fertool", *args], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and plain.stderr.startswith("error: ")
