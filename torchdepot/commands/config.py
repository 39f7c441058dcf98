"""``torchdepot config pip|uv|conda``: point a client at the mirror (merge, backup, atomic write).

Argument parsing and printing only: values are checked (``clientconfig.common``), the mirror
is asked what it has (``clientconfig.mirror``), and the writers plan the change.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from torchdepot.clientconfig import conda as conda_cfg
from torchdepot.clientconfig import mirror
from torchdepot.clientconfig import pip as pip_cfg
from torchdepot.clientconfig import uv as uv_cfg
from torchdepot.clientconfig.common import (
    ConfigValueError,
    Plan,
    check_name,
    check_url,
    commit,
    read_existing,
    unified_diff,
)


def split_variant_url(url: str, variant: str | None) -> tuple[str, str]:
    """``http://torchlab:8000/whl/cpu`` (the URL serve's banner shows) -> the mirror root and
    its variant; ``.../whl`` -> the root. ``--variant`` naming another variant is refused."""
    from torchdepot.model.accel import accelerator_from_dir

    parts = url.rstrip("/").rsplit("/", 2)
    if len(parts) == 3 and parts[1] == "whl" and accelerator_from_dir(parts[2]) is not None and "://" in parts[0]:
        root, named = parts[0], parts[2]
        if variant is not None and variant != named:
            raise ConfigValueError(f"--url {url!r} is the mirror's {named} index but --variant is {variant}; "
                                   f"give the mirror root --url {root}")
        return root, named
    if url.rstrip("/").endswith("/whl") and "://" in url.rstrip("/")[: -len("/whl")]:
        return url.rstrip("/")[: -len("/whl")], variant or "cpu"
    return url, variant or "cpu"


def _probe_root(url: str) -> mirror.MirrorFacts:
    """The mirror's facts; a URL with no manifest.json under it is named as not the mirror root."""
    from torchdepot.net.http import HttpStatusError

    try:
        return mirror.probe(url)
    except HttpStatusError as exc:
        if exc.status != 404:
            raise
        raise ConfigValueError(f"--url {url}: no manifest.json there (HTTP 404); --url wants the mirror root, "
                               "like http://torchlab:8000 (the part before /whl/ in the URL serve prints)") from None


def _target(file: str | None, scope: str | None, scope_file) -> Path:
    if file and scope:
        raise click.UsageError("give --file or --scope, not both")
    return Path(file) if file else scope_file(scope or "user")


def _finish(p: Plan, dry_run: bool) -> None:
    if dry_run:
        for c in p.changes:
            diff = unified_diff(c)
            click.echo(diff if diff else f"# {c.path}: already up to date", nl=not diff)
        click.echo("# dry run: nothing written", err=True)
    elif not p.changed:
        click.echo(f"{p.changes[0].path}: already up to date", err=True)
    else:
        for c, bak in commit(p):
            click.echo(f"wrote {c.path}" + (f" (backup: {bak})" if bak else ""), err=True)
    for note in p.notes:
        click.echo(f"note: {note}", err=True)
    click.echo("# equivalent environment variables (for CI):", err=True)
    for k, v in p.env:
        click.echo(f"export {k}={shlex.quote(v)}")


def _common(f):
    f = click.option("--dry-run", is_flag=True, help="Print a unified diff; write nothing.")(f)
    f = click.option("--scope", type=click.Choice(["user", "site", "global"]),
                     help="Which config file (default user; site = the ACTIVE venv/conda env).")(f)
    f = click.option("--file", "file", type=click.Path(dir_okay=False), help="Config file to merge into.")(f)
    f = click.option("--url", required=True,
                     help="Mirror base URL (http://torchlab:8000) or a local mirror directory.")(f)
    return f


@click.group("config")
def config_group() -> None:
    """Point pip, uv or conda at a torchdepot mirror (existing files merged, backed up first)."""


@config_group.command("pip")
@_common
@click.option("--variant", default=None,
              help="Accelerator index on the mirror: cpu, cu126, rocm6.4, xpu.  [default: cpu, or the one "
                   "--url names]")
def pip_cmd(url: str, file: str | None, scope: str | None, dry_run: bool, variant: str | None) -> None:
    """Add the mirror's variant index to pip.conf, keeping your index-url.

    The mirror becomes an extra-index-url (plus trusted-host for plain HTTP), and the
    builds it serves for the variant are pinned in torchdepot-constraints.txt next to
    pip.conf, so `pip install torch` takes the mirror's build while other packages still
    come from your own index. Re-run after the mirror gains a newer torch.

    \b
    Example:
      torchdepot config pip --url http://torchlab:8000 --variant cu126
      torchdepot config pip --url http://torchlab:8000/whl/cu126   # the URL serve prints
    """
    url, variant = split_variant_url(check_url(url), variant)
    variant = check_name("--variant", variant)
    path = _target(file, scope, pip_cfg.scope_file)
    facts = _probe_root(url)
    facts.check_variant(variant)
    cpath = pip_cfg.constraints_path(path)
    _finish(pip_cfg.plan(path, read_existing(path), url, variant, facts.pins_for(variant),
                         read_existing(cpath), os.environ,
                         pip_cfg.inherited_values(pip_cfg.lower_priority_files(path))), dry_run)


@config_group.command("uv")
@_common
@click.option("--variant", default="cpu", show_default=True, help="Accelerator index on the mirror: cpu, cu126, rocm6.4, xpu.")
@click.option("--default-index/--no-default-index", default=False, show_default=True,
              help="Also make the mirror uv's default index (only when it serves every package you use).")
def uv_cmd(url: str, file: str | None, scope: str | None, dry_run: bool, variant: str, default_index: bool) -> None:
    """Add the mirror to uv.toml as its first index, keeping your default index.

    \b
    Example:
      torchdepot config uv --url http://torchlab:8000 --variant cu126 --scope user
    """
    url = check_url(url)
    variant = check_name("--variant", variant)
    path = _target(file, scope, uv_cfg.scope_file)
    mirror.probe(url).check_variant(variant)
    _finish(uv_cfg.plan(path, read_existing(path), url, variant, default_index), dry_run)


@config_group.command("conda")
@_common
@click.option("--channel", "channels", multiple=True,
              help="Channel name on the mirror (repeatable; default: every channel the mirror has).")
@click.option("--offline", is_flag=True, help="Also set offline: true (only for a mirror on this machine: a directory or file:// URL).")
@click.option("--channel-alias", "alias", is_flag=True,
              help="Also point channel_alias at the mirror: EVERY named channel resolves to it (air-gapped machines).")
@click.option("--variant", default=None, hidden=True)
def conda_cmd(url: str, file: str | None, scope: str | None, dry_run: bool, channels: tuple[str, ...], offline: bool,
              alias: bool, variant) -> None:
    """Put the mirror's channels first in .condarc and make their names (-c conda-forge) resolve to
    it (custom_channels, mirrored_channels), keeping your other channels and mirrors.

    \b
    Examples:
      torchdepot config conda --url http://torchlab:8000 --channel pytorch
      torchdepot config conda --url /srv/torchdepot --offline    # a mirror on this machine
    """
    url = check_url(url)
    chans = [check_name("--channel", c) for c in channels]
    path = _target(file, scope, conda_cfg.scope_file)
    facts = mirror.probe(url)
    chans = facts.check_channels(chans) if chans else list(facts.channels)
    if not chans:
        raise ConfigValueError(f"{url}: the mirror has no conda channels")
    _finish(conda_cfg.plan(path, read_existing(path), url, chans, offline, alias), dry_run)


COMMANDS = [config_group]
