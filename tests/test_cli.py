"""The CLI's command table: every command module is listed, every listed command exists."""

import importlib
import pkgutil

from click.testing import CliRunner

from torchdepot import commands
from torchdepot.cli import COMMAND_MODULES, main


def test_every_command_module_is_registered_and_resolves():
    modules = {m.name for m in pkgutil.iter_modules(commands.__path__)}
    defined = {}
    for m in modules:
        for cmd in getattr(importlib.import_module(f"torchdepot.commands.{m}"), "COMMANDS", []):
            defined[cmd.name] = m
    assert defined == COMMAND_MODULES


def test_help_lists_every_command_and_errors_are_one_line():
    runner = CliRunner()
    out = runner.invoke(main, ["--help"]).output
    for name in COMMAND_MODULES:
        assert name in out
    res = runner.invoke(main, ["parse", "not-a-wheel"])
    assert res.exit_code == 1 and "not a wheel filename" in res.output
