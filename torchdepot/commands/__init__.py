"""CLI command modules. Each module defines ``COMMANDS = [...]`` of click commands;
``torchdepot.cli`` registers them all, so adding a command never edits a shared file."""
