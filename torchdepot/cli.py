"""The ``torchdepot`` command line. Each subcommand lives in ``torchdepot/commands/``.

Every failure ends as one line on stderr, never a traceback (:mod:`torchdepot.commands.guard`):
bad input exits 1, an unexpected exception exits 1 naming the command and the error type
(``--debug`` shows the traceback instead), Ctrl-C exits 130, and usage errors keep click's exit 2.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import click

from torchdepot import __version__
from torchdepot.commands import loading
from torchdepot.commands.guard import one_line_errors

_COMMAND_KEY = "torchdepot.command"


# command name -> module in torchdepot.commands defining it (in its COMMANDS list).
# Modules are imported only when their command runs: the CLI starts without loading
# requests, rattler, ruamel or zstandard for commands that do not need them.
COMMAND_MODULES = {
    "bundle": "bundle",
    "unbundle": "bundle",
    "conda": "conda",
    "config": "config",
    "doctor": "doctor",
    "env": "env",
    "landing": "landing",
    "lock": "lock",
    "ls": "ls",
    "matrix": "matrix",
    "mirror": "mirror",
    "parse": "parse",
    "publish": "publish",
    "recipes": "recipes",
    "serve": "serve",
    "status": "status",
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
        with loading():
            mod = importlib.import_module(f"{__package__}.commands.{module}")
        return next((c for c in mod.COMMANDS if c.name == name), None)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        # Named in the one-line report of an unexpected error, even one raised while the
        # command's module is imported.
        ctx.meta[_COMMAND_KEY] = args[0] if args else ""
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta[_COMMAND_KEY] = name or ctx.meta[_COMMAND_KEY]
        return name, cmd, rest

    def invoke(self, ctx: click.Context):
        with one_line_errors("torchdepot", lambda: f"torchdepot {ctx.meta.get(_COMMAND_KEY, '')}".strip(),
                             debug=bool(ctx.params.get("debug"))):
            return super().invoke(ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit status: 0 ok; 1 error (one line on stderr, naming the input); 2 usage error "
                    "(bad option or argument); 130 interrupted (Ctrl-C).")
@click.version_option(__version__, prog_name="torchdepot")
@click.option("--debug", is_flag=True, envvar="TORCHDEPOT_DEBUG",
              help="Show the traceback of an unexpected error instead of one line (also TORCHDEPOT_DEBUG=1).")
def main(debug: bool) -> None:
    """Offline PyTorch mirrors, locks and verification for pip, uv and conda."""


def entry() -> None:
    """The console script (and ``python -m torchdepot``): :data:`main`, then a plain exit.

    py-rattler 0.28 can abort while the interpreter finalizes after it ran (its runtime's
    threads outlive the GIL: "PyGILState_Release ... finalizing", exit 134/139), which would turn
    a finished ``mirror`` into a crash. When rattler was loaded, the streams are flushed and the
    process leaves with its real exit status without finalizing; nothing is left to clean up
    by then, since every file is written atomically and every lock released."""
    try:
        main.main(prog_name="torchdepot")
        code: int = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # a message given to sys.exit: printed as Python would
            print(exc.code, file=sys.stderr)
            code = 1
    if "rattler" in sys.modules:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    raise SystemExit(code)
