"""``torchdepot bundle`` / ``torchdepot unbundle``: carry a mirror across an air gap."""

from __future__ import annotations

from pathlib import Path

import click

from torchdepot.model.sizes import format_size
from torchdepot.ship.bundle import parse_size, plan_bundle, unbundle, write_bundle


@click.command("bundle")
@click.option("--mirror", "root", type=click.Path(file_okay=False, path_type=Path), default=Path("mirror/out"),
              show_default=True, help="Mirror root to bundle.")
@click.option("--targets", "targets", multiple=True, metavar="ID",
              help="Target ids to include (repeatable, e.g. cpu-py311-linux-x86_64); default: all.")
@click.option("--envs", type=click.Path(file_okay=False, path_type=Path), default=Path("envs"), show_default=True,
              help="Lockfile folder (envs/<target-id>/) to include when it exists.")
@click.option("--since", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The other side's manifest.json: include only files it lacks (incremental bundle).")
@click.option("--split", "split", metavar="SIZE", help="Split into FILE.000, FILE.001... of at most SIZE (e.g. 4G).")
@click.option("--zstd", is_flag=True, help="Compress the tar with zstd (streaming).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Bundle file to write.")
def bundle_cmd(root: Path, targets: tuple[str, ...], envs: Path, since: Path | None, split: str | None,
               zstd: bool, out: Path) -> None:
    """Write part of a mirror (targets' files, indexes, conda repodata, locks) as one tar.

    \b
    Examples:
      torchdepot bundle --mirror mirror/out --targets cpu-py311-linux-x86_64 --zstd --out torch-cpu.tar.zst
      torchdepot bundle --since /media/usb/manifest.json --split 4G --out /media/usb/update.tar
    """
    plan = plan_bundle(root, list(targets) or None, envs if envs.is_dir() else None, since)
    parts, doc = write_bundle(plan, out, zstd=zstd, split=parse_size(split) if split else None)
    size = sum(p.stat().st_size for p in parts)
    skipped = f", {plan.skipped} already on the other side" if since else ""
    click.echo(f"bundled {len(doc['files'])} files ({format_size(plan.total_bytes)}) for {len(plan.target_ids)} "
               f"target(s){skipped} -> {', '.join(str(p) for p in parts)} ({format_size(size)})")


@click.command("unbundle")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--to", "dest", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Mirror root to create or merge into.")
def unbundle_cmd(bundle: Path, dest: Path) -> None:
    """Check every hash in BUNDLE (or BUNDLE.000...), then merge it into a mirror atomically.

    \b
    Example:
      torchdepot unbundle /media/usb/torch-cpu.tar.zst --to /srv/torch-mirror
    """
    report = unbundle(bundle, dest)
    kind = "incremental bundle" if report.incremental else "bundle"
    click.echo(f"unbundled {kind}: {len(report.published)} files published, {len(report.unchanged)} already present; "
               f"targets: {', '.join(report.targets) or 'none'} -> {dest}")


COMMANDS = [bundle_cmd, unbundle_cmd]
