"""One line per failure, never a traceback: the error policy of every entry point.

``torchdepot`` (cli.py) and ``tools/fetch`` (commands.mirror.fetch_tool) both run their command
inside :func:`one_line_errors`:

- :class:`~torchdepot.errors.TorchdepotError` (bad input the user can fix): ``<prog>: error: <message>``, exit 1;
- ``OSError``: the file and the system's reason, exit 1;
- any other exception (a bug): ``<prog>: error: <command>: unexpected <Type>: <message>`` and a
  hint to rerun with ``--debug``, exit 1; with ``debug`` the exception propagates (traceback);
- ``KeyboardInterrupt``: ``<prog>: interrupted``, exit 130 (128 + SIGINT, as shells report it);
- a closed stdout (``torchdepot ls | head``): exit 0 silently.

click's own exceptions (usage errors, exit 2; ``--help``) pass through untouched.
This module defines no command (no ``COMMANDS``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import click

from torchdepot.errors import TorchdepotError, one_line

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def one_line_errors(prog: str, command: str | Callable[[], str], debug: bool = False) -> Iterator[None]:
    """Run the body under the policy above; ``command`` (or a function giving it, when the
    name is known only later) is named in the report of an unexpected error."""
    def fail(message: str, code: int = EXIT_ERROR) -> None:
        click.echo(f"{prog}: {message}", err=True)
        sys.exit(code)

    try:
        yield
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise  # usage errors (exit 2) and --help/--version: click's conventions
    except TorchdepotError as exc:
        fail(f"error: {one_line(exc)}")
    except BrokenPipeError:
        # The reader left; not an error worth a message. Point stdout at devnull so the
        # interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as exc:
        if debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        fail(f"error: {where}{exc.strerror or one_line(exc)}")  # strerror: the OS's one short line
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if debug:
            raise
        name = command() if callable(command) else command
        fail(f"error: {name}: unexpected {type(exc).__name__}: {one_line(exc, 200)} "
             "(a bug; rerun with --debug for the traceback)")
