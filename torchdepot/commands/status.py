"""``torchdepot status MIRROR``: what a mirror holds (targets, torch versions, sizes) and how its
last sync ended. Argument parsing and printing only; the figures are :mod:`torchdepot.site.status`."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("status")
@click.argument("mirror", type=click.Path(file_okay=False, path_type=Path), default=Path("mirror/out"))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_cmd(mirror: Path, as_json: bool) -> None:
    """Print a mirror's targets (who added each), torch versions, sizes, last sync and its verify state.

    \b
    Example:
      torchdepot status mirror/out
      torchdepot status /srv/torch --json
    """
    from torchdepot.ship.pullthrough import read_misses, summarize
    from torchdepot.site.status import mirror_status, render
    from torchdepot.store import manifest as mf
    from torchdepot.sync.regional import listed_by_accelerator

    status = mirror_status(mirror, mf.load(mirror), listed_by_accelerator(mirror))
    misses = summarize(read_misses(mirror))  # what serve --pull-through was asked for and lacked
    if as_json:
        doc = status.to_json()
        if misses.files or misses.pages:
            doc["pull_through_misses"] = {"files": misses.files, "fetched": misses.fetched,
                                          "not_served": misses.not_served, "pages": misses.pages,
                                          "projects": dict(misses.projects)}
        click.echo(json.dumps(doc, indent=1, sort_keys=True))
    else:
        click.echo("\n".join([render(status), *misses.lines()]))


COMMANDS = [status_cmd]
