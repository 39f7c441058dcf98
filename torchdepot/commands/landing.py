"""``torchdepot landing``: (re)generate the mirror's index.html landing page."""

from __future__ import annotations

from pathlib import Path

import click

from torchdepot.store import manifest as mf
from torchdepot.site.landing import write_landing


@click.command("landing")
@click.option("--mirror", "root", type=click.Path(file_okay=False, path_type=Path), default=Path("mirror/out"),
              show_default=True, help="Mirror root (reads its manifest.json).")
def landing_cmd(root: Path) -> None:
    """Regenerate ROOT/index.html: the variant matrix, install commands and driver minimums.

    \b
    Example:
      torchdepot landing --mirror /srv/torch-mirror
    """
    path = write_landing(root, mf.load(root))
    click.echo(f"wrote {path}")


COMMANDS = [landing_cmd]
