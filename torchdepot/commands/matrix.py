"""``torchdepot matrix``: the CI job matrix a mirror can serve (GitHub, GitLab, JSON)."""

from __future__ import annotations

from pathlib import Path

import click

from torchdepot.errors import TorchdepotError
from torchdepot.site.matrix import jobs, render
from torchdepot.store import manifest as mf


@click.command("matrix")
@click.option("--mirror", "root", type=click.Path(file_okay=False, path_type=Path), default=Path("mirror/out"),
              show_default=True, help="Mirror root (reads its manifest.json).")
@click.option("--envs", type=click.Path(file_okay=False, path_type=Path), default=Path("envs"), show_default=True,
              help="Lockfile folder (envs/<target-id>/).")
@click.option("--format", "fmt", type=click.Choice(["github", "gitlab", "json"]), default="github", show_default=True)
def matrix_cmd(root: Path, envs: Path, fmt: str) -> None:
    """Print one job per (variant, Python, platform) with its runner label and lock path.

    Only targets whose lock exists under --envs get a job (a matrix never names a missing
    file); the others are listed on stderr with the `torchdepot lock` command that writes them.

    \b
    Runners: CPU jobs use hosted runners (ubuntu-latest, ubuntu-24.04-arm, windows-latest,
    macos-14, macos-13); CUDA/ROCm jobs need labels like [self-hosted, linux, x64, gpu, cuda-12.6].
    \b
    Examples:
      torchdepot matrix --format github        # {"include":[...]} for strategy.matrix / fromJSON
      torchdepot matrix --format gitlab        # parallel: matrix: for .gitlab-ci.yml
    """
    result = jobs(mf.load(root), envs, envs.as_posix().rstrip("/") or "envs")
    fix = f"torchdepot lock --mirror {root} --out {envs}"
    if not result.jobs:
        raise TorchdepotError(f"{envs}: no lock for any of the mirror's {len(result.unlocked)} target(s); run: {fix}")
    if result.unlocked:
        click.echo(f"matrix: left out {len(result.unlocked)} target(s) with no lock in {envs} "
                   f"({', '.join(result.unlocked)}); run: {fix}", err=True)
    click.echo(render(result.jobs, fmt), nl=False)


COMMANDS = [matrix_cmd]
