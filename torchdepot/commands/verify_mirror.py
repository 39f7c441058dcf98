"""``torchdepot verify-mirror``: re-hash a mirror against its manifest; ``--repair`` fixes it."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("verify-mirror")
@click.argument("root", required=False, default="mirror/out", type=click.Path(file_okay=False))
@click.option("--repair", is_flag=True, help="Refetch missing/corrupt files from their manifest url (host policy: "
                                             "the spec's upstreams and the pip configuration's hosts); remove the "
                                             "mirror's own partial downloads, temp files and staging dirs.")
@click.option("--move-unknown", is_flag=True, help="With --repair: move files the manifest does not list (orphans, "
                                                   "unknown root entries) to .torchdepot/aside/<time>/. Never deleted.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="HOST",
              help="With --repair: also refetch from HOST (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quick", is_flag=True, help="Trust the hash cache for files whose size and mtime are unchanged.")
@click.option("--wait", type=float, default=None, metavar="SECONDS",
              help="Wait this long for a running sync to release the mirror lock (default: fail at once).")
def verify_mirror_cmd(root: str, repair: bool, move_unknown: bool, allow_hosts: tuple[str, ...], as_json: bool,
                      quick: bool, wait: float | None) -> None:
    """Check every file of the mirror at ROOT (default mirror/out) against manifest.json.

    Reports missing and corrupt files, files the manifest does not list (orphans) and root
    entries that are no part of a mirror (unknown), leftover partial downloads, temp files
    and staging dirs of killed runs, and index links that do not resolve to a verified file.
    Exits 1 when anything is wrong and was not repaired.

    \b
    Example:
      torchdepot verify-mirror /srv/torch --repair
      torchdepot verify-mirror /srv/torch --repair --move-unknown
    """
    from torchdepot.sync.check import report_json, verify_mirror_locked

    if (move_unknown or allow_hosts) and not repair:
        raise click.UsageError("--move-unknown and --allow-host need --repair")

    report = verify_mirror_locked(Path(root), repair=repair, wait=wait, trust_cache=quick, move_unknown=move_unknown,
                                  allow_hosts=allow_hosts)
    if as_json:
        click.echo(report_json(report))
    else:
        for p in report.problems:
            mark = "repaired" if p.repaired else "PROBLEM"
            click.echo(f"{mark}\t{p.kind}\t{p.path}\t{p.detail}")
        click.echo(report.summary(), err=not report.ok)
    if not report.ok:
        sys.exit(1)


COMMANDS = [verify_mirror_cmd]
