"""Helpers shared by the command modules: consoles, progress, tables, common options."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ..errors import printable


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader of stdout went away (``fertool ... | head -1``): stop quietly with exit
        code 0, as ``head`` users expect (Rich's default exits 1)."""
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)


#: Results go to stdout; progress and notes to stderr so stdout stays pipeable.
out = _Console()
err = _Console(stderr=True)

RecipeOption = typer.Option(
    None, "--recipe", "-r", metavar="NAME|FILE", help="Recipe YAML file or shipped recipe name (paper, demo, ...)."
)
SetOption = typer.Option(
    None,
    "--set",
    metavar="KEY=VALUE",
    help="Override a recipe key: dotted.key=value (repeatable), e.g. --set train.stages.2.lr=0.005",
)
QuietOption = typer.Option(
    False,
    "--quiet",
    "-q",
    help="No progress bars and no 'wrote ...' notes; log lines, warnings, results and errors still print.",
)
EngineOption = typer.Option(
    "auto",
    "--engine",
    metavar="auto|torch|onnxruntime",
    help="What runs the network: torch, onnxruntime (CPU, float32; needs the onnxruntime package), "
    "or auto (onnxruntime on the CPU when installed, else torch).",
)


def safe(text: object) -> Text:
    """Untrusted text (a file name, a name stored in a checkpoint) for a Rich console or table:
    control characters escaped (:func:`fertool.errors.printable`) and never read as markup."""
    return Text(printable(text))


def shown(text: object) -> str:
    """Untrusted text to put inside a Rich markup string (``f"wrote {shown(path)}"``): control
    characters escaped and the brackets of markup escaped."""
    return escape(printable(text))


def _cell(text: str) -> Text:
    """A table cell: each of its lines escaped (the tables' own cells are two lines, count and %)."""
    return Text("\n".join(printable(line) for line in text.split("\n")))


def log_line(message: str) -> None:
    """One log line on stderr: wrapped on a terminal, one physical line in a log file."""
    err.print(f"[dim]·[/dim] {shown(message)}", highlight=False, soft_wrap=not err.is_terminal)


def load_recipe_from_options(recipe: str | None, sets: list[str] | None):
    """Load the recipe named on the command line with its ``--set`` overrides."""
    from ..recipe import load_recipe

    return load_recipe(recipe, sets or ())


def number_table(
    title: str | None, header: Sequence[str], rows: Iterable[Sequence[str]], *, left: int = 1, **kwargs
) -> Table:
    """A Rich table that never cuts a value with '…'.

    At 80 columns (a standard terminal, or any log file) a wide table squeezes its columns;
    every column is at least as wide as its widest value, a header longer than that puts
    one word per line, and a value that still does not fit folds onto a second line.  The first ``left``
    columns are left-aligned (names), the others right-aligned (numbers).
    """
    rows = [[str(_cell(str(cell))) for cell in row] for row in rows]
    kwargs.setdefault("show_edge", False)  # four more columns for the values
    if title:  # a table narrower than its title would wrap it ("PrivateTest (56 / images)")
        kwargs.setdefault("min_width", min(len(title), 80))
    table = Table(title=safe(title) if title else None, title_justify="left", **kwargs)
    for i, name in enumerate(header):
        widest = max((len(line) for row in rows for line in row[i].splitlines()), default=0)
        if len(name) > widest:  # one word per line: "paper\nparams" is as wide as "27.6M"
            name = "\n".join(name.split())
        table.add_column(name, justify="left" if i < left else "right", overflow="fold", min_width=widest)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``2,731 img/s``."""

    def __init__(self, unit: str = "img") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if (task.elapsed or 0.0) < 1.0:  # no rate for a sub-second phase: too few samples to mean anything
            return Text("")
        if speed is None:
            return Text(f"-- {self.unit}/s", style="progress.data.speed")
        return Text(
            f"{speed:,.1f} {self.unit}/s" if speed < 10 else f"{speed:,.0f} {self.unit}/s", style="progress.data.speed"
        )


def describe_phase(base: str, fields: dict) -> tuple[str, str]:
    """``(description, info)`` of a progress report from its fields.

    Library functions report ``progress(done, total, **fields)`` (:data:`fertool.utils.Progress`);
    the fields name the phase: the training engine sends ``phase`` (cache, train, val),
    ``epoch``/``epochs`` and ``loss``/``accuracy``; ``predict`` sends ``description``.
    """
    phase, epoch = fields.get("phase"), fields.get("epoch")
    if phase == "cache":
        description = f"{base}: decoding images"
    elif epoch is not None:
        description = f"{base} epoch {epoch}/{fields.get('epochs', '?')}" + (" validation" if phase == "val" else "")
    elif fields.get("description"):
        description = f"{base}: {fields['description']}"
    else:
        description = base
    info = ""
    if fields.get("loss") is not None:
        info = f"loss {fields['loss']:.4f} acc {fields.get('accuracy', float('nan')):.4f}"
    return description, info


class _LogProgress:
    """Progress for a stderr that is not a terminal (a log file, a pipe): one plain line per
    ``interval`` seconds and one when a phase ends, with that phase's own rate."""

    def __init__(self, base: str, unit: str, interval: float) -> None:
        self.base, self.unit, self.interval = base, unit, interval
        self.key = None
        self.last = (0, None, "", "")  # done, total, description, info

    def _line(self, final: bool, ending: str = "done") -> None:
        done, total, description, info = self.last
        seconds = max(time.monotonic() - self.start, 1e-9)
        count = f"{done:,}/{total:,}" if total else f"{done:,}"
        text = f"{description}: {count} {self.unit}"
        if seconds >= 1.0 and done > self.first:  # no rate for a sub-second phase (0.0 img/s said nothing)
            text += f", {(done - self.first) / seconds:,.1f} {self.unit}/s"
        text += f", {seconds:,.0f}s" if seconds >= 1.0 else ", <1s"
        err.print(
            text + (f", {info}" if info else "") + (f" ({ending})" if final else ""),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        self.printed = time.monotonic()

    def __call__(self, done: int, total: int | None = None, **fields) -> None:
        key = (fields.get("phase"), fields.get("epoch"), fields.get("description"))
        if key != self.key:
            self.close()
            self.key, self.start, self.printed, self.first = key, time.monotonic(), time.monotonic(), done
            self.open = True
        self.last = (done, total, *describe_phase(self.base, fields))
        if total is not None and done >= total:
            self.close()
        elif time.monotonic() - self.printed >= self.interval:
            self._line(final=False)

    def close(self, ending: str = "done") -> None:
        """End the open phase's line with ``(done)``, or ``(interrupted)`` when it was cut short."""
        if getattr(self, "open", False):
            self._line(final=True, ending=ending)
            self.open = False


class FittingProgress(Progress):
    """A Rich progress display whose line never wraps: when the row is wider than the
    console it drops fields, least useful first (loss/accuracy, elapsed time, a narrower
    bar, the rate, the bar, the remaining time), and at last cuts the description."""

    #: Column indexes (into the constructor's columns) in the order they are dropped.
    DROP_ORDER = (3, 5, "narrow-bar", 4, 1, 6)

    def __init__(self, *columns, console: Console, **kwargs) -> None:
        self.all_columns, self.fit_console = tuple(columns), console
        self.narrow_bar = BarColumn(bar_width=10)
        super().__init__(*columns, console=console, **kwargs)

    def _layouts(self) -> Iterator[list]:
        kept, narrow = list(range(len(self.all_columns))), False
        for step in (None, *self.DROP_ORDER):
            if step == "narrow-bar":
                narrow = True
            elif step in kept:
                kept = [i for i in kept if i != step]
            yield [
                self.narrow_bar if narrow and isinstance(self.all_columns[i], BarColumn) else self.all_columns[i]
                for i in kept
            ]

    @staticmethod
    def _width(column, task: Task) -> int:
        if isinstance(column, BarColumn):
            return column.bar_width or 40
        rendered = column.render(task)
        return rendered.cell_len if isinstance(rendered, Text) else len(str(rendered))

    def make_tasks_table(self, tasks: Iterable[Task]) -> Table:
        # Local columns only: Rich's refresh thread renders too, so nothing shared is changed here.
        tasks = [task for task in tasks if task.visible]
        width = self.fit_console.width
        for columns in self._layouts():
            row = max((sum(self._width(c, task) for c in columns) + len(columns) - 1 for task in tasks), default=0)
            if row <= width:
                break
        table_columns = [column.get_table_column().copy() for column in columns]
        for column in table_columns:
            column.no_wrap = True
        table_columns[0].overflow = "ellipsis"  # the description: cut only when nothing else is left to drop
        table = Table.grid(*table_columns, padding=(0, 1), expand=self.expand)
        for task in tasks:
            table.add_row(*(column.render(task) for column in columns))
        return table


@contextmanager
def progress_callback(
    description: str, *, quiet: bool = False, unit: str = "img", transient: bool = False, interval: float = 30.0
) -> Iterator[Progress]:
    """Yield the one progress callback the library functions take: ``callback(done, total, **fields)``.

    On a terminal it drives a Rich bar on stderr (count, rate, elapsed, remaining; reset
    when the phase changes, so each phase has its own rate).  When stderr is not a terminal
    it writes a plain line every ``interval`` seconds and at the end of every phase.  With
    ``quiet`` it does nothing.  Library functions never print themselves.
    """
    if quiet:
        yield lambda done, total=None, **fields: None
        return
    if not err.is_terminal:
        log = _LogProgress(description, unit, interval)
        try:
            yield log
        except KeyboardInterrupt:
            log.close("interrupted")
            raise
        except BaseException:
            log.close("stopped")
            raise
        log.close()
        return
    bar = FittingProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
    )
    state: dict = {"task": None, "key": None}

    def callback(done: int, total: int | None = None, **fields) -> None:
        key = (fields.get("phase"), fields.get("epoch"), fields.get("description"))
        text, info = describe_phase(description, fields)
        if state["task"] is None:
            state["task"] = bar.add_task(text, total=total, info=info)
        elif key != state["key"]:
            bar.reset(state["task"], total=total, description=text, info=info)
        state["key"] = key
        bar.update(state["task"], completed=done, total=total, description=text, info=info)

    with bar:
        yield callback
