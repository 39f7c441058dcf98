"""``torchdepot env create``: a persistent environment from a lock (mirror only), optionally a Jupyter kernel."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from torchdepot.lockfiles import BASE_ENV
from torchdepot.verify.env import (
    KERNEL_NAME_RULE,
    EnvCreateError,
    Kernel,
    check_kernel_name,
    create_env,
)
from torchdepot.verify.run import mirror_url


def _kernel_name(ctx, param, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_kernel_name(value)
    except EnvCreateError:  # a usage error: click's exit 2
        raise click.BadParameter(KERNEL_NAME_RULE) from None


@click.group("env")
def env_group() -> None:
    """Persistent environments built from envs/<target-id> locks."""


@env_group.command("create")
@click.argument("lock_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--prefix", required=True, type=click.Path(path_type=Path),
              help="Where the environment goes (must not exist, or be empty; it is kept).")
@click.option("--mirror", help=f"Mirror dir or URL (default: ${BASE_ENV}, else mirror/out).")
@click.option("--register-kernel", "kernel", metavar="NAME", callback=_kernel_name,
              help="Install ipykernel from the mirror and register the env as Jupyter kernel NAME "
                   "(in the user's Jupyter data dir; JUPYTER_DATA_DIR respected).")
@click.option("--display-name", metavar="TEXT", help="The kernel's name in Jupyter's menus (default: NAME).")
def create_cmd(lock_dir: Path, prefix: Path, mirror: str | None, kernel: str | None, display_name: str | None) -> None:
    """Create a persistent environment at PREFIX from LOCK_DIR (an envs/<target-id> folder).

    Pins are checked against the mirror's manifest, installed with their hashes from the
    mirror only (no user pip/uv configuration), and the torch smoke test runs.

    \b
    Example:
      torchdepot env create envs/cpu-py311-linux-x86_64 --prefix ~/envs/torch-cpu \\
          --mirror http://torchlab:8000 --register-kernel torch-cpu --display-name "PyTorch (CPU)"
    """
    if display_name and not kernel:
        raise click.UsageError("--display-name needs --register-kernel NAME")
    url = mirror_url(mirror or os.environ.get(BASE_ENV) or "mirror/out")
    res = create_env(lock_dir, prefix, url, Kernel(kernel, display_name) if kernel else None)
    for c in res.checks:
        click.echo(f"  {c.name}: {c.status}" + (f" ({c.detail})" if c.detail else ""), err=True)
    if not res.ok:
        bad = next(c for c in res.checks if c.status == "fail")
        click.echo(f"torchdepot: error: {res.prefix}: {bad.name}: {bad.detail} (environment kept for inspection)",
                   err=True)
        sys.exit(1)
    click.echo(f"created {res.prefix} in {res.seconds:.1f}s; activate: source {res.prefix}/bin/activate")
    if res.kernel_dir is not None:
        click.echo(f"registered Jupyter kernel {kernel} at {res.kernel_dir} (jupyter kernelspec list shows it)")


COMMANDS = [env_group]
