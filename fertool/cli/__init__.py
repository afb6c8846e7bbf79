"""The ``fertool`` command line: one module per command, each a thin wrapper.

Command modules only parse options, call the library and render results with Rich.
Each defines ``register(app)``, called here in the order ``--help`` lists the commands.
No command shows a traceback: a :class:`fertool.errors.FertoolError` becomes its
``error: ...`` lines on stderr and exit code 1, an ``OSError`` one line naming the path
and the cause, anything else one line naming the exception (usage errors exit 2,
Ctrl-C and SIGTERM 130); set ``FERTOOL_DEBUG=1`` to see the traceback.  Every line is
escaped (:func:`fertool.errors.printable`), so text from input files cannot drive the
terminal.  A closed stdout (``fertool ... | head``) ends the command quietly with
exit code 0.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from typer.core import TyperGroup

from .. import __version__
from ..errors import FertoolError, os_error_message, printable
from ._common import out


def debug_enabled() -> bool:
    return os.environ.get("FERTOOL_DEBUG", "") not in ("", "0", "false", "no")


class FertoolGroup(TyperGroup):
    """Turns every failure into ``error:`` lines on stderr and a non-zero exit code."""

    def list_commands(self, ctx: typer.Context) -> list[str]:  # keep registration order
        return list(self.commands)

    def format_commands(self, ctx: typer.Context, formatter) -> None:
        """The command list with each command's whole first sentence, wrapped (click cuts
        it at the terminal width with '...')."""
        rows = [
            (name, command.get_short_help_str(limit=400))
            for name in self.list_commands(ctx)
            if (command := self.get_command(ctx, name)) is not None and not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: typer.Context):
        try:
            with _terminate_as_interrupt():
                return super().invoke(ctx)
        except BrokenPipeError:  # from typer.echo; Rich output handles it in the console
            out.on_broken_pipe()
        except BaseException as exc:
            if debug_enabled() or _is_click_exception(exc) or not isinstance(exc, (Exception, KeyboardInterrupt)):
                raise  # --help, usage errors (click words them), SystemExit
            lines, code = failure_lines(exc)
            for line in lines:
                typer.echo(f"error: {printable(line)}", err=True)
            ctx.exit(code)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """``kill`` (SIGTERM) stops a command like Ctrl-C: temporaries are removed, a training
    stage records the status ``interrupted`` and keeps a ``last.pt`` to resume from."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. embedded): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_click_exception(exc: BaseException) -> bool:
    """Exit, abort and usage errors, which click words itself (from click or typer's own copy)."""
    return isinstance(exc, (typer.Exit, typer.Abort)) or any(
        cls.__name__ == "ClickException" and cls.__module__.endswith("click.exceptions") for cls in type(exc).__mro__
    )


#: Library errors name the parameter (``engine: unknown engine``, ``use engine=torch``); the
#: command line says the flag a user typed instead (``--engine: ...``, ``use --engine torch``).
PARAMETER_FLAGS = {
    "engine": "--engine",
    "precision": "--precision",
    "recheck_margin": "--recheck-margin",
    "sets": "--subsets",
    "modes": "--modes",
    "tolerance": "--tolerance",
    "max_images": "--max-images",
    "batch_size": "--batch-size",
    "every": "--every",
    "margin": "--margin",
    "out_dir": "--out",
    "camera": "--webcam",
    "fmt": "--format",
    "batch": "--batch",
    "samples": "--samples",
    "out_path": "--out",
}
_LEADING_PARAMETER = re.compile(r"^([a-z_]+)( [^:]*)?:")
_PARAMETER_VALUE = re.compile(r"\b([a-z_]+)=([\w.-]+)")


def flag_names(line: str) -> str:
    """``line`` with the parameter names of :data:`PARAMETER_FLAGS` written as command-line flags."""
    lead = _LEADING_PARAMETER.match(line)
    if lead and lead.group(1) in PARAMETER_FLAGS:
        line = PARAMETER_FLAGS[lead.group(1)] + line[len(lead.group(1)) :]
    return _PARAMETER_VALUE.sub(
        lambda m: f"{PARAMETER_FLAGS[m.group(1)]} {m.group(2)}" if m.group(1) in PARAMETER_FLAGS else m.group(0), line
    )


def failure_lines(exc: BaseException) -> tuple[list[str], int]:
    """The ``error:`` lines (before escaping) and the exit code for an exception."""
    if isinstance(exc, KeyboardInterrupt):
        return ["interrupted"], 130
    if isinstance(exc, FertoolError):
        return [flag_names(line) for line in str(exc).splitlines()] or [type(exc).__name__], 1
    if isinstance(exc, OSError):
        return [os_error_message(exc)], 1
    if isinstance(exc, MemoryError):
        return ["out of memory" + (f" ({exc})" if str(exc) else "")], 1
    first = (str(exc).strip().splitlines() or [""])[0]
    return [
        f"unexpected {type(exc).__name__}"
        + (f": {first}" if first else "")
        + " (this is a fertool bug: FERTOOL_DEBUG=1 shows the traceback to report)"
    ], 1


app = typer.Typer(
    cls=FertoolGroup,
    name="fertool",
    help="Facial expression recognition with LHC-Net: prepare FER2013, train in stages, "
    "add LHC modules, evaluate with the paper's TTA, analyse, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"fertool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """fertool: LHC-Net facial expression recognition toolkit."""


# The command modules import ``app``'s package only for this registration, after it exists.
from . import (  # noqa: E402
    ablate,
    augment_lhc,
    download,
    evaluate,
    export,
    import_weights,
    info,
    pipeline,
    predict,
    prepare,
    report,
    sample_data,
    train,
)

#: Command modules, in the order ``--help`` lists them (the data flow).
COMMAND_MODULES = (
    download,
    sample_data,
    prepare,
    import_weights,
    info,
    train,
    augment_lhc,
    evaluate,
    ablate,
    report,
    pipeline,
    predict,
    export,
)
for _module in COMMAND_MODULES:
    _module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
