"""``torchdepot matrix``: the CI job matrix a mirror can serve (GitHub, GitLab, JSON)."""

from __future__ import annotations

from pathlib import Path

import click

from torchdepot.store import manifest as mf
from torchdepot.site.matrix import jobs, render


@click.command("matrix")
@click.option("--mirror", "root", type=click.Path(file_okay=False, path_type=Path), default=Path("mirror/out"),
              show_default=True, help="Mirror root (reads its manifest.json).")
@click.option("--envs", type=click.Path(file_okay=False, path_type=Path), default=Path("envs"), show_default=True,
              help="Lockfile folder (envs/<target-id>/).")
@click.option("--format", "fmt", type=click.Choice(["github", "gitlab", "json"]), default="github", show_default=True)
def matrix_cmd(root: Path, envs: Path, fmt: str) -> None:
    """Print one job per (variant, Python, platform) with its runner label and lock path.

    \b
    Runners: CPU jobs use hosted runners (ubuntu-latest, ubuntu-24.04-arm, windows-latest,
    macos-14, macos-13); CUDA/ROCm jobs need labels like [self-hosted, linux, x64, gpu, cuda-12.6].
    \b
    Examples:
      torchdepot matrix --format github        # {"include":[...]} for strategy.matrix / fromJSON
      torchdepot matrix --format gitlab        # parallel: matrix: for .gitlab-ci.yml
    """
    click.echo(render(jobs(mf.load(root), envs, envs.as_posix().rstrip("/") or "envs"), fmt), nl=False)


COMMANDS = [matrix_cmd]
