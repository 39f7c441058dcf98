"""``torchdepot verify-mirror``: re-hash a mirror against its manifest; ``--repair`` fixes it."""

from __future__ import annotations

import sys

import click


@click.command("verify-mirror")
@click.argument("root", required=False, default="mirror/out", type=click.Path(file_okay=False))
@click.option("--repair", is_flag=True, help="Refetch missing/corrupt files from their manifest url; "
                                             "remove orphans, partial downloads and temp leftovers.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quick", is_flag=True, help="Trust the hash cache for files whose size and mtime are unchanged.")
@click.option("--wait", type=float, default=None, metavar="SECONDS",
              help="Wait this long for a running sync to release the mirror lock (default: fail at once).")
def verify_mirror_cmd(root: str, repair: bool, as_json: bool, quick: bool, wait: float | None) -> None:
    """Check every file of the mirror at ROOT (default mirror/out) against manifest.json.

    Reports missing and corrupt files, files the manifest does not list, leftover partial
    downloads and temp files, and index links that do not resolve to a verified file.
    Exits 1 when anything is wrong and was not repaired.

    \b
    Example:
      torchdepot verify-mirror /srv/torch --repair
    """
    from torchdepot.sync.check import report_json, verify_mirror_locked

    report = verify_mirror_locked(root, repair=repair, wait=wait, trust_cache=quick)
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
