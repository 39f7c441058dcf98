"""``torchdepot mirror``: build or update the offline pip mirror from a spec."""

from __future__ import annotations

from pathlib import Path

import click

from ..spec import load_spec, with_overrides

DEFAULT_SPEC = "mirror/mirror.yaml"


@click.command("mirror")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False), default=DEFAULT_SPEC, show_default=True,
              help="Mirror spec (YAML).")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (overrides the spec's out).")
@click.option("--upstream", "upstreams", multiple=True, metavar="URL",
              help="PyTorch index base, in failover order (repeatable; overrides the spec's upstreams).")
@click.option("--jobs", type=click.IntRange(1, 64), help="Parallel downloads.")
@click.option("--dry-run", is_flag=True, help="Print the plan (per target: packages, files, size); write nothing.")
@click.option("--on-hash-mismatch", type=click.Choice(["fail", "warn"]),
              help="When upstream's sha256 disagrees with the bytes: fail (default) or publish and record.")
@click.option("--wait", type=float, default=None, metavar="SECONDS",
              help="Wait this long for another run holding the mirror lock (default: fail at once).")
def mirror_cmd(spec_path, out, upstreams, jobs, dry_run, on_hash_mismatch, wait) -> None:
    """Mirror torch (+ dependencies) for every target in the spec, laid out like download.pytorch.org.

    \b
    Example:
      torchdepot mirror --spec mirror/mirror.yaml --out /srv/torch --jobs 8
      pip install --index-url file:///srv/torch/whl/cpu torch
    """
    from ..mirror import sync

    spec = load_spec(spec_path)
    spec = with_overrides(spec, out=out, upstreams=list(upstreams) or None, jobs=jobs,
                          on_hash_mismatch=on_hash_mismatch)
    result = sync(spec, dry_run=dry_run, wait=wait, out=Path(spec.out))
    if not dry_run:
        idx = "published" if result.index_changed else "unchanged"
        click.echo(f"mirror {result.out}: {len(result.targets)} targets; {result.summary}; "
                   f"index {idx} (generation {result.generation}); total {result.seconds:.1f} s")


COMMANDS = [mirror_cmd]
