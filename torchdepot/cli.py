"""The ``torchdepot`` command line. Each subcommand lives in ``torchdepot/commands/``.

Every error the user can cause ends as one line on stderr and a non-zero exit, never a
traceback: :class:`~torchdepot.errors.TorchdepotError` and ``OSError`` are caught here.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from torchdepot import __version__
from torchdepot.errors import TorchdepotError


def _one_line(exc: BaseException) -> str:
    # Messages quote user input (file names, YAML keys); keep the error a single line anyway.
    return " ".join(str(exc).splitlines()) or type(exc).__name__


# command name -> module in torchdepot.commands defining it (in its COMMANDS list).
# Modules are imported only when their command runs: the CLI starts without loading
# requests, rattler, ruamel or zstandard for commands that do not need them.
COMMAND_MODULES = {
    "bundle": "bundle",
    "unbundle": "bundle",
    "conda": "conda",
    "config": "config",
    "doctor": "doctor",
    "landing": "landing",
    "lock": "lock",
    "ls": "ls",
    "matrix": "matrix",
    "mirror": "mirror",
    "parse": "parse",
    "publish": "publish",
    "recipes": "recipes",
    "serve": "serve",
    "verify": "verify",
    "verify-mirror": "verify_mirror",
}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(name)
        if module is None:
            return None
        mod = importlib.import_module(f"{__package__}.commands.{module}")
        return next((c for c in mod.COMMANDS if c.name == name), None)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TorchdepotError as exc:
            click.echo(f"torchdepot: error: {_one_line(exc)}", err=True)
            sys.exit(1)
        except BrokenPipeError:
            # `torchdepot ls | head`: the reader left; not an error worth a message. Point
            # stdout at devnull so the interpreter's final flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
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
