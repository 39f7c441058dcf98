"""CLI command modules. Each module defines ``COMMANDS = [...]`` of click commands and is
named in ``torchdepot.cli.COMMAND_MODULES``, which imports it only when one of its commands runs."""
