"""What a person reads: help texts, tables at 80 columns, progress in a log file, `-q`
everywhere, and a quiet exit when the reader of stdout goes away."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
import typer
from rich.console import Console

from fertool.cli import COMMAND_MODULES, _common, app

COMMANDS = sorted(typer.main.get_command(app).commands)  # hidden aliases included
CLASSES = ["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Neutral"]


@pytest.fixture
def narrow(monkeypatch):
    """Route every command module's stdout console into an 80-column buffer."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, color_system=None)
    for module in COMMAND_MODULES:
        if hasattr(module, "out"):
            monkeypatch.setattr(module, "out", console)
    return buffer


@pytest.fixture
def narrow_err(monkeypatch):
    """Route every command module's stderr console into an 80-column buffer."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, color_system=None, stderr=True)
    for module in COMMAND_MODULES:
        if hasattr(module, "err"):
            monkeypatch.setattr(module, "err", console)
    return buffer


def _assert_whole(text: str, values) -> None:
    """No cell was cut, and every value is printed whole (on one line)."""
    assert "…" not in text, text
    for value in values:
        assert value in text, (value, text)


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_bool_metavars_and_no_stray_spaces(cli_runner, command):
    result = cli_runner.invoke(app, [command, "--help"], terminal_width=80)
    assert result.exit_code == 0
    text = result.output
    assert "<bool>" not in text
    assert not re.search(r"\w \.(\s|$)", text), text  # "Output folder ." from markup eaten by Rich
    assert max(len(line) for line in text.splitlines()) <= 80


def test_the_command_list_gives_whole_first_sentences(cli_runner):
    text = cli_runner.invoke(app, ["--help"], terminal_width=80).output
    listing = text[text.index("Commands:") :]
    assert "..." not in listing and max(len(line) for line in text.splitlines()) <= 80
    assert "Classify the facial expression of every face in photos, folders, videos or a webcam." in " ".join(
        listing.split()
    )


def test_report_help_keeps_its_default_in_brackets(cli_runner):
    text = " ".join(cli_runner.invoke(app, ["report", "--help"], terminal_width=80).output.split())
    assert "Output folder (default: report/ in the runs' common parent)" in text


def test_every_command_takes_quiet():
    group = typer.main.get_command(app)
    for command in COMMANDS:
        options = {opt for param in group.commands[command].params for opt in param.opts}
        assert {"-q", "--quiet"} <= options, command


# --------------------------------------------------------------------------- 80 columns


def _metrics(tta: bool) -> dict:
    """A metrics.json dict of FER2013 size (the widest numbers the tables meet)."""
    support = [491, 55, 528, 879, 594, 416, 626]
    confusion = [[s - 6 * 7 if i == j else 7 for j in range(7)] for i, s in enumerate(support)]
    rates = [[c / sum(row) for c in row] for row in confusion]
    per_class = {c: {"precision": 0.7345, "recall": 0.6666, "f1": 0.7, "support": s} for c, s in zip(CLASSES, support)}
    block = {
        "accuracy": 0.7442,
        "accuracy_ci": {"low": 0.7297, "high": 0.7584},
        "loss": 0.8123,
        "balanced_accuracy": 0.7012,
        "macro_f1": 0.7101,
        "ties": 0,
        "per_class": per_class,
        "confusion": confusion,
        "confusion_normalised": rates,
    }
    return {
        "arch": "lhc_net",
        "stage": "4",
        "split": "PrivateTest",
        "n": 3589,
        "class_names": CLASSES,
        **block,
        "tta": {"preset": "paper", **block} if tta else None,
    }


def test_evaluate_tables_fit_80_columns_without_cutting_a_number(narrow):
    from fertool.cli.evaluate import render_report

    render_report(_metrics(tta=True))
    text = narrow.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    # Every class name, every count of the confusion matrix and the summary figures, whole.
    _assert_whole(text, CLASSES + ["491", "879", "74.42%", "72.97% - 75.84%", "73.5", "66.7"])


def test_evaluate_titles_are_not_wrapped_by_a_narrow_table(narrow):
    from fertool.cli.evaluate import render_report

    render_report({**_metrics(tta=False), "n": 56})  # a small split: the summary table is narrow
    lines = narrow.getvalue().splitlines()
    assert "lhc_net stage 4 on PrivateTest (56 images)" in lines[0]
    assert any(line.startswith("per class, % (P precision, R recall, n images)") for line in lines)
    assert any(
        line.startswith("confusion, plain: rows true class, columns predicted, count and % of row") for line in lines
    )


def test_pipeline_table_fits_80_columns(narrow, narrow_err, monkeypatch, tmp_path):
    from fertool.cli import pipeline as pipeline_cli
    from fertool.pipeline import final_table

    results = {
        name: [{"accuracy": 0.5338, "tta": {"accuracy": 0.4774}, "params": 21_389_976}]
        for name in ("ResNet34v2", "LHC-Net", "LHC-NetC")
    }
    table = final_table(results)
    fake = {"run": "runs/demo", "csv": "runs/demo/data/sample.csv", "table": table, "notes": ["TTA lowered it."]}
    monkeypatch.setattr("fertool.pipeline.run_pipeline", lambda *a, **k: fake)
    pipeline_cli.pipeline_cli(
        recipe="demo",
        csv=None,
        run=tmp_path,
        seeds=None,
        device="cpu",
        jobs=None,
        devices=None,
        wait=True,
        wait_timeout=None,
        sets=None,
        quiet=True,
    )
    text = narrow.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    _assert_whole(text, ["ResNet34v2", "LHC-NetC", "53.38%", "47.74%", "21.4M", "74.42%", "32.4M"])
    notes = narrow_err.getvalue()  # where the results are and notes: stderr, stdout keeps the table only
    assert "runs/demo/report/index.html" in notes and "note: TTA lowered it." in notes
    assert "index.html" not in text and "note" not in text


def test_ablation_tables_fit_80_columns(narrow, narrow_err):
    from fertool.cli.ablate import render

    modules = [f"lhc{i}" for i in range(1, 6)]
    results = [
        {
            "mode": mode,
            "set": [m],
            "kept": [k for k in modules if k != m],
            "heads_kept": 20,
            "accuracy": 0.7301,
            "delta": -0.0141,
            "tta_accuracy": 0.7399,
            "tta_delta": -0.0043,
        }
        for mode in ("off", "detrain")
        for m in modules
    ]
    kept = {
        "modules": modules[:3],
        "heads": 20,
        "total_heads": 24,
        "accuracy": 0.7301,
        "delta": -0.0041,
        "searched": "evaluated sets",
    }
    heads = {
        m: {
            "heads": h,
            "correlation": None if h == 1 else [[1.0]],
            "mean_abs_offdiag": None if h == 1 else 0.1234,
            "note": "n/a: one head" if h == 1 else None,
        }
        for m, h in zip(modules, (8, 8, 7, 7, 1))
    }
    controller = {m: {"w": -0.25, "tanh_w": -0.2449, "gain": 0.7551} for m in modules}
    render(
        {
            "arch": "lhc_netc",
            "split": "PrivateTest",
            "n": 3589,
            "tta": "paper",
            "tolerance": 0.005,
            "full": {"accuracy": 0.7442, "tta_accuracy": 0.7442},
            "total_heads": 31,
            "results": results,
            "smallest_kept": {"off": {"accuracy": kept}},
            "heads": {"modules": heads, "controller": controller, "overall_mean_abs_offdiag": 0.1111},
        }
    )
    text = narrow.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    _assert_whole(text, ["73.01", "-1.41", "73.99", "-0.43", "12.3%", "-0.245", "0.755"])
    assert "no heads-<module>.png for lhc5 (n/a: one head)" in " ".join(narrow_err.getvalue().split())
    assert "heads-<module>.png" not in text


# --------------------------------------------------------------------------- progress and pipes


def test_progress_in_a_log_file_is_lines_with_each_phase_rate(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(_common, "err", Console(file=buffer, width=80, color_system=None))
    clock = [100.0]
    monkeypatch.setattr(_common.time, "monotonic", lambda: clock[0])
    with _common.progress_callback("stage 2", interval=30) as progress:
        for done in range(0, 201, 20):  # 200 training images in 40 s: 5 img/s
            progress(done, 200, phase="train", epoch=1, epochs=3, loss=1.5, accuracy=0.25)
            clock[0] += 4
        clock[0] -= 4
        for done in range(0, 101, 50):  # then 100 validation images in 2 s: 50 img/s
            progress(done, 100, phase="val", epoch=1, epochs=3)
            clock[0] += 1
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "stage 2 epoch 1/3: 160/200 img, 5.0 img/s, 32s, loss 1.5000 acc 0.2500",
        "stage 2 epoch 1/3: 200/200 img, 5.0 img/s, 40s, loss 1.5000 acc 0.2500 (done)",
        "stage 2 epoch 1/3 validation: 100/100 img, 50.0 img/s, 2s (done)",
    ]


def test_a_sub_second_phase_has_no_rate_and_an_interrupted_one_says_so(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(_common, "err", Console(file=buffer, width=80, color_system=None))
    clock = [100.0]
    monkeypatch.setattr(_common.time, "monotonic", lambda: clock[0])
    with pytest.raises(KeyboardInterrupt):
        with _common.progress_callback("stage 1", interval=30) as progress:
            progress(0, 56, phase="val", epoch=1, epochs=2)
            clock[0] += 0.4
            progress(56, 56, phase="val", epoch=1, epochs=2)  # 0.4 s: a rate would be noise
            progress(0, 864, phase="train", epoch=2, epochs=2)
            clock[0] += 12
            progress(96, 864, phase="train", epoch=2, epochs=2)
            raise KeyboardInterrupt  # Ctrl-C in the middle of epoch 2
    assert buffer.getvalue().splitlines() == [
        "stage 1 epoch 1/2 validation: 56/56 img, <1s (done)",
        "stage 1 epoch 2/2: 96/864 img, 8.0 img/s, 12s (interrupted)",
    ]


def _bar_line(width: int, description: str, info: str) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=True)
    bar = _common.FittingProgress(
        _common.TextColumn("{task.description}"),
        _common.BarColumn(bar_width=24),
        _common.MofNCompleteColumn(),
        _common.TextColumn("{task.fields[info]}"),
        _common.RateColumn("img"),
        _common.TimeElapsedColumn(),
        _common.TimeRemainingColumn(),
        console=console,
    )
    task = bar.add_task(description, total=864, info=info)
    bar.update(task, completed=432)
    console.print(bar.make_tasks_table(bar.tasks))
    return buffer.getvalue()


def test_the_progress_bar_drops_fields_rather_than_wrap_at_80_columns():
    description, info = "seed-1/resnet/stage4 epoch 12/12 validation", "loss 1.2345 acc 0.4321"
    wide = _bar_line(200, description, info)
    assert wide.count("\n") == 1 and info in wide and "432/864" in wide
    narrow = _bar_line(80, description, info)
    assert narrow.count("\n") == 1, narrow  # one line, not wrapped
    assert len(narrow.rstrip("\n")) <= 80
    assert description in narrow and "432/864" in narrow and "…" not in narrow  # fields dropped, nothing cut
    tiny = _bar_line(40, description, info)
    assert tiny.count("\n") == 1 and len(tiny.rstrip("\n")) <= 40  # the description is cut last


def test_quiet_progress_prints_nothing(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(_common, "err", Console(file=buffer, width=80))
    with _common.progress_callback("x", quiet=True) as progress:
        progress(1, 2, phase="train")
    assert buffer.getvalue() == ""


def test_a_closed_stdout_ends_the_command_quietly(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "fertool", "sample-data", "--out", str(tmp_path / "s.csv"), "--per-class", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # like `| head -0`: the reader is gone before the first line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "error" not in stderr and "Traceback" not in stderr


# --------------------------------------------------------------------------- stdout for results only

NOTE_WORDS = ("wrote", "note", "warning", "[yellow]note", "[yellow]warning", "annotated outputs")


def _stdout_notes(module) -> list[str]:
    """Text of every call that writes to stdout (``out.print``, ``typer.echo`` without ``err=True``)
    and starts with the words of a note."""
    import ast
    import inspect

    found = []
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute) or not node.args:
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        to_stdout = (owner == "out" and node.func.attr == "print") or (
            owner == "typer"
            and node.func.attr == "echo"
            and not any(k.arg == "err" and getattr(k.value, "value", False) for k in node.keywords)
        )
        if not to_stdout:
            continue
        first = node.args[0]
        if isinstance(first, ast.BinOp):  # "..." + "..."
            first = first.left
        if isinstance(first, ast.JoinedStr):
            first = first.values[0] if first.values else None
        text = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ""
        if text.lower().startswith(NOTE_WORDS):
            found.append(f"line {node.lineno}: {text!r}")
    return found


@pytest.mark.parametrize("module", COMMAND_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_no_command_writes_notes_on_stdout(module):
    """stdout carries results only (tables, JSON, result lines); "wrote ...", notes and warnings
    go to stderr, so that ``fertool ... > results.txt`` and ``| jq`` get results alone."""
    assert _stdout_notes(module) == []


def test_the_stdout_note_finder_finds_one():
    import types

    source = 'out.print(f"wrote {path}")\ntyper.echo("note: x")\ntyper.echo("note: y", err=True)\nout.print(table)\n'
    module = types.ModuleType("fake")
    import inspect

    original = inspect.getsource
    try:
        inspect.getsource = lambda m: source
        assert len(_stdout_notes(module)) == 2
    finally:
        inspect.getsource = original


# --------------------------------------------------------------------------- resume hints


def test_an_interrupted_train_says_how_to_resume_it(cli_runner, monkeypatch, tmp_path):
    def interrupted(recipe, stage, run, **kwargs):
        (run / "stage1").mkdir(parents=True)
        (run / "stage1" / "last.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr("fertool.engine.train.train_stage", interrupted)
    result = cli_runner.invoke(app, ["train", "-r", "demo", "-s", "1", "--run", str(tmp_path / "run")])
    assert result.exit_code == 130
    text = " ".join(result.stderr.split())
    assert f"to continue: fertool train --stage 1 --run {tmp_path / 'run'} --resume" in text
    assert text.endswith("error: interrupted")


def test_an_interrupted_pipeline_says_to_run_it_again_not_resume(cli_runner, monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fertool.pipeline.run_pipeline", interrupted)
    result = cli_runner.invoke(app, ["pipeline", "--run", str(tmp_path / "run")])
    assert result.exit_code == 130
    text = " ".join(result.stderr.split())
    assert "run the same command again" in text and "--resume" not in text  # pipeline has no --resume


def test_predict_tables_with_tta_fit_80_columns_and_keep_whole_paths(narrow):
    from fertool.cli.predict import _render
    from fertool.deploy.faces import Box
    from fertool.deploy.predict import FaceResult

    path = "/home/someone/Pictures/holidays-2024/family/IMG_20240817_153012_HDR.jpg"
    probs = dict(zip(CLASSES, (0.05, 0.01, 0.04, 0.7, 0.1, 0.05, 0.05)))
    faces = [
        FaceResult(path, None, i, Box(1024, 768, 412, 412), probs, "Happiness", probs, "Happiness") for i in range(2)
    ]
    _render(faces, [], tta="paper")
    text = narrow.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text
    assert path in "".join(line.split("│")[0].strip() for line in text.splitlines()), text  # folded, not cut
    rows = [line for line in text.splitlines() if "1024 768 412 412" in line]
    assert len(rows) == 2 and all(line.count("Happiness 0.700") == 2 for line in rows), text  # plain and TTA
    header = [line for line in text.splitlines() if "label" in line]
    assert len(header) == 1 and header[0].rstrip().endswith("TTA"), text  # one header line, nothing cut at the right
