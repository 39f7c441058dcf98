"""``torchdepot publish``: copy a mirror to any rclone remote, files first and indexes last."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from torchdepot.ship.rclone import plan, publish


@click.command("publish")
@click.option("--to", "dest", required=True, metavar="DEST",
              help="rclone destination: a remote path (s3:bucket/torch, myftp:/srv/torch) or a local dir.")
@click.option("--mirror", "root", type=click.Path(file_okay=False, path_type=Path), default=Path("mirror/out"),
              show_default=True, help="Mirror root to publish.")
@click.option("--rclone-arg", "extra", multiple=True, metavar="ARG",
              help="Extra argument for every rclone call (repeatable), e.g. --rclone-arg=--transfers=16.")
@click.option("--dry-run", is_flag=True, help="Print the rclone commands in upload order; copy nothing.")
def publish_cmd(dest: str, root: Path, extra: tuple[str, ...], dry_run: bool) -> None:
    """Upload a mirror through rclone: packages, then locks, then indexes, then manifest.json and index.html.

    \b
    Examples:
      torchdepot publish --mirror mirror/out --to s3:lab-bucket/torch
      torchdepot publish --mirror mirror/out --to /var/www/torch --dry-run
    """
    if dry_run:
        for step in plan(root, dest, list(extra)):
            click.echo(f"{step.name}: rclone {shlex.join(step.argv)}")
        return
    steps = publish(root, dest, list(extra), echo=lambda m: click.echo(m, err=True))
    click.echo(f"published {root} -> {dest} ({len(steps)} steps, indexes last)")


COMMANDS = [publish_cmd]
