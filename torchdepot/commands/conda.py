"""``torchdepot conda ls``: what a conda channel offers, as the same matrix as ``torchdepot ls``.

Rows are version x accelerator (read from each build string), columns Python versions,
cells the subdirs that have a build (:mod:`torchdepot.site.availability`). ``--json``
prints one object per record. This module only parses options and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from torchdepot.site.availability import CONDA_LEGEND, channel_records, conda_matrix, render


def _channel_url(text: str) -> str:
    if "://" in text:
        return text.rstrip("/")
    return Path(text).resolve().as_uri()


def record_json(rec) -> dict:
    """:meth:`CondaRecord.to_json` plus ``depends``; the channel is the one asked for, so it is left out."""
    d = rec.to_json()
    del d["channel"]
    d["depends"] = list(rec.depends)
    return d


@click.group("conda")
def conda_group() -> None:
    """Inspect conda channels (the conda side of a torchdepot mirror)."""


@conda_group.command("ls")
@click.option("--channel", "channel", required=True, metavar="URL",
              help="Channel base URL (http(s)://.../pytorch, file:// or a directory).")
@click.option("--subdir", "subdirs", multiple=True, metavar="S", help="Subdir(s) to read (default: linux-64 and noarch).")
@click.option("--package", "packages", multiple=True, metavar="NAME",
              help="Package(s) to list (table default: pytorch; JSON default: every record).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
def ls_cmd(channel: str, subdirs: tuple[str, ...], packages: tuple[str, ...], as_json: bool) -> None:
    """List a channel's builds with the accelerator and Python each build string states.

    \b
    Example:
      torchdepot conda ls --channel http://mirror.local/conda/pytorch --subdir linux-64
      torchdepot conda ls --channel mirror/out/conda/pytorch --json --package pytorch
    """
    url = _channel_url(channel)
    subdirs = tuple(dict.fromkeys(subdirs or ("linux-64", "noarch")))
    # the table reads only its packages (natively, per name); --json without --package reads all
    records = channel_records(url, subdirs, packages or (() if as_json else ("pytorch",)))
    if as_json:
        for r in records:
            if not packages or r.name in packages:
                sys.stdout.write(json.dumps(record_json(r), sort_keys=True) + "\n")
        return
    for pkg in packages or ("pytorch",):
        sel = [r for r in records if r.name == pkg]
        click.echo(f"{render(conda_matrix(pkg, sel))}\n{CONDA_LEGEND}" if sel else f"{pkg}: no records in {', '.join(subdirs)}")


COMMANDS = [conda_group]
