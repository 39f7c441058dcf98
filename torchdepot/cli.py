"""The ``torchdepot`` command line. Each subcommand lives in ``torchdepot/commands/``.

Every error the user can cause ends as one line on stderr and a non-zero exit, never a
traceback: :class:`~torchdepot.errors.TorchdepotError` and ``OSError`` are caught here.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import TorchdepotError


def _one_line(exc: BaseException) -> str:
    # Messages quote user input (file names, YAML keys); keep the error a single line anyway.
    return " ".join(str(exc).splitlines()) or type(exc).__name__


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TorchdepotError as exc:
            click.echo(f"torchdepot: error: {_one_line(exc)}", err=True)
            sys.exit(1)
        except BrokenPipeError:
            # `torchdepot ls | head`: the reader left; not an error worth a message.
            try:
                sys.stdout = None  # type: ignore[assignment]  # stop the interpreter re-flushing
            finally:
                sys.exit(0)
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            click.echo(f"torchdepot: error: {where}{exc.strerror or exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("torchdepot: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="torchdepot")
def main() -> None:
    """Offline PyTorch mirrors, locks and verification for pip, uv and conda."""


def _register() -> None:
    # One module per command family; each exposes COMMANDS (a list of click commands).
    import importlib
    import pkgutil

    from . import commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        module = importlib.import_module(f"{commands.__name__}.{mod}")
        for cmd in getattr(module, "COMMANDS", []):
            main.add_command(cmd)


_register()
