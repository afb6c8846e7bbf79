"""The ``fertool`` command line: one module per command, each a thin wrapper.

Command modules only parse options, call the library and render results with Rich.
Each defines ``register(app)``; a command whose module is absent is simply not offered.
Any :class:`fertool.errors.FertoolError` becomes one ``error: ...`` line on stderr and
exit code 1 (usage errors exit 2); set ``FERTOOL_DEBUG=1`` to see the traceback.  A closed
stdout (``fertool ... | head``) ends the command quietly with exit code 0.
"""

from __future__ import annotations

import importlib
import os

import typer
from typer.core import TyperGroup

from .. import __version__
from ..errors import FertoolError
from ._common import out

#: Command modules, in the order ``--help`` lists them (the data flow).
COMMAND_MODULES = (
    "sample_data",
    "prepare",
    "import_weights",
    "info",
    "train",
    "augment_lhc",
    "evaluate",
    "ablate",
    "report",
    "pipeline",
    "predict",
    "export",
)


def debug_enabled() -> bool:
    return os.environ.get("FERTOOL_DEBUG", "") not in ("", "0", "false", "no")


class FertoolGroup(TyperGroup):
    """Turns library errors into one line on stderr and exit code 1."""

    def list_commands(self, ctx: typer.Context) -> list[str]:  # keep registration order
        return list(self.commands)

    def format_commands(self, ctx: typer.Context, formatter) -> None:
        """The command list with each command's whole first sentence, wrapped (click cuts
        it at the terminal width with '...')."""
        rows = [(name, command.get_short_help_str(limit=400)) for name in self.list_commands(ctx)
                if (command := self.get_command(ctx, name)) is not None and not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except FertoolError as exc:
            if debug_enabled():
                raise
            for line in str(exc).splitlines() or [type(exc).__name__]:
                typer.echo(f"error: {line}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            typer.echo("error: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # from typer.echo; Rich output handles it in the console
            out.on_broken_pipe()


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


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name == f"{__name__}.{_name}":
            continue
        raise
    _module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
