"""``torchdepot lock``: per-target lockfiles in envs/ from a mirror's manifest."""

from __future__ import annotations

from pathlib import Path

import click

from torchdepot.lockfiles import DEFAULT_BASE
from torchdepot.lockfiles.write import lock_mirror


def _mirror_dir(mirror: str | None, spec: str | None) -> Path:
    if mirror:
        return Path(mirror)
    if spec:
        from torchdepot.spec.mirror import load_spec

        return Path(load_spec(spec).out)
    return Path("mirror/out")


@click.command("lock")
@click.option("--mirror", type=click.Path(file_okay=False), help="Mirror root (has manifest.json). Default: the spec's out.")
@click.option("--spec", type=click.Path(dir_okay=False), help="Mirror spec (YAML); its 'out' is the mirror.")
@click.option("--out", "out", default="envs", show_default=True, type=click.Path(file_okay=False), help="Where the per-target folders go.")
@click.option("--base-url", default=DEFAULT_BASE, show_default=True,
              help="Prefix of every URL in the locks. The default placeholder is expanded by pip/uv/conda from the "
                   "TORCHDEPOT_MIRROR environment variable; give a real URL for tools that do not expand it.")
def lock_cmd(mirror: str | None, spec: str | None, out: str, base_url: str) -> None:
    """Write envs/<target-id>/ (environment.yml, requirements.lock, pylock.toml, conda-<subdir>.lock, variant.json).

    Re-running on the same mirror gives byte-identical files.

    \b
    Example:
      torchdepot lock --mirror mirror/out --out envs
    """
    root = _mirror_dir(mirror, spec)
    res = lock_mirror(root, Path(out), base_url)
    for rel in res.written:
        click.echo(f"wrote {Path(out) / rel}")
    click.echo(f"{len(res.targets)} target(s): {len(res.written)} file(s) written, {len(res.unchanged)} unchanged", err=True)


COMMANDS = [lock_cmd]
