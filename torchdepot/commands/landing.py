"""``torchdepot landing``: (re)generate the mirror's index.html landing page."""

from __future__ import annotations

from pathlib import Path

import click

from torchdepot.site.landing import write_landing
from torchdepot.store import manifest as mf


@click.command("landing")
@click.option("--mirror", "root", type=click.Path(file_okay=False, path_type=Path), default=Path("mirror/out"),
              show_default=True, help="Mirror root (reads its manifest.json).")
@click.option("--base-url", metavar="URL", default=None,
              help="The mirror's address as clients reach it (e.g. http://torchlab:8000): every command on the page "
                   "names it, with --trusted-host for a plain-HTTP LAN host. Default: the address the page is "
                   "loaded from, filled in by a script.")
def landing_cmd(root: Path, base_url: str | None) -> None:
    """Regenerate ROOT/index.html: the variant matrix, install commands and driver minimums.

    \b
    Example:
      torchdepot landing --mirror /srv/torch-mirror
      torchdepot landing --mirror /srv/torch-mirror --base-url http://torchlab:8000
    """
    if base_url is not None:
        from torchdepot.clientconfig.common import check_url

        base_url = check_url(base_url, "--base-url")
    path = write_landing(root, mf.load(root), base_url)
    click.echo(f"wrote {path}")


COMMANDS = [landing_cmd]
