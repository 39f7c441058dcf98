"""``torchdepot config pip|uv|conda``: point a client at the mirror (merge, backup, atomic write)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from torchdepot.clientconfig import conda as conda_cfg
from torchdepot.clientconfig import pip as pip_cfg
from torchdepot.clientconfig import uv as uv_cfg
from torchdepot.clientconfig.common import Planned, check_url, commit, read_existing, unified_diff
from torchdepot.errors import TorchdepotError


def _target(module, file: str | None, scope: str | None) -> Path:
    if file and scope:
        raise click.UsageError("give --file or --scope, not both")
    return Path(file) if file else module.scope_file(scope or "user")


def _finish(p: Planned, dry_run: bool) -> None:
    if dry_run:
        diff = unified_diff(p)
        click.echo(diff if diff else f"# {p.path}: already up to date", nl=not diff)
        click.echo(f"# dry run: {p.path} not written", err=True)
    elif not p.changed:
        click.echo(f"{p.path}: already up to date", err=True)
    else:
        bak = commit(p)
        click.echo(f"wrote {p.path}" + (f" (backup: {bak})" if bak else ""), err=True)
    for note in p.notes:
        click.echo(f"note: {note}", err=True)
    click.echo("# equivalent environment variables (for CI):", err=True)
    for k, v in p.env:
        click.echo(f"export {k}={shlex.quote(v)}")


def _common(f):
    f = click.option("--dry-run", is_flag=True, help="Print a unified diff; write nothing.")(f)
    f = click.option("--scope", type=click.Choice(["user", "site", "global"]), help="Which config file (default user).")(f)
    f = click.option("--file", "file", type=click.Path(dir_okay=False), help="Config file to merge into.")(f)
    f = click.option("--url", required=True, help="Mirror base URL, e.g. http://mirror.lab:8080")(f)
    return f


@click.group("config")
def config_group() -> None:
    """Point pip, uv or conda at a torchdepot mirror (existing files merged, backed up first)."""


@config_group.command("pip")
@_common
@click.option("--variant", default="cpu", show_default=True, help="Accelerator index: cpu, cu128, rocm6.4, xpu.")
def pip_cmd(url: str, file: str | None, scope: str | None, dry_run: bool, variant: str) -> None:
    """Set index-url (and trusted-host for plain HTTP) in pip.conf.

    \b
    Example:
      torchdepot config pip --url http://mirror.lab:8080 --variant cu128 --scope user --dry-run
    """
    url = check_url(url)
    path = _target(pip_cfg, file, scope)
    _finish(pip_cfg.plan(path, read_existing(path), url, variant), dry_run)


@config_group.command("uv")
@_common
@click.option("--variant", default="cpu", show_default=True, help="Accelerator index: cpu, cu128, rocm6.4, xpu.")
@click.option("--default-index/--no-default-index", default=True, show_default=True,
              help="Also make the mirror uv's default index (it serves torch's dependencies).")
def uv_cmd(url: str, file: str | None, scope: str | None, dry_run: bool, variant: str, default_index: bool) -> None:
    """Add [[index]] entries for the mirror to uv.toml.

    \b
    Example:
      torchdepot config uv --url http://mirror.lab:8080 --variant cpu --file ./uv.toml
    """
    url = check_url(url)
    path = _target(uv_cfg, file, scope)
    _finish(uv_cfg.plan(path, read_existing(path), url, variant, default_index), dry_run)


def _mirror_channels(url: str) -> list[str]:
    """The conda channels a mirror publishes, from its manifest.json."""
    from torchdepot.store.manifest import MANIFEST_NAME
    from torchdepot.store.manifest import fetch as fetch_manifest

    m = fetch_manifest(url)
    chans = sorted({t.channel.split("/", 1)[-1] for t in m.targets if t.kind == "conda" and t.channel})
    if not chans:
        murl = url.rstrip("/") + "/" + MANIFEST_NAME
        raise TorchdepotError(f"{murl}: the mirror has no conda channels (give --channel NAME)")
    return chans


@config_group.command("conda")
@_common
@click.option("--channel", "channels", multiple=True, help="Channel name on the mirror (repeatable; default: read from the mirror's manifest.json).")
@click.option("--offline", is_flag=True, help="Also set offline: true.")
@click.option("--variant", default=None, hidden=True)
def conda_cmd(url: str, file: str | None, scope: str | None, dry_run: bool, channels: tuple[str, ...], offline: bool, variant) -> None:
    """Set channels/channel_alias/custom_channels/default_channels in .condarc (no defaults).

    \b
    Example:
      torchdepot config conda --url http://mirror.lab:8080 --channel conda-forge --offline --scope user
    """
    url = check_url(url)
    path = _target(conda_cfg, file, scope)
    chans = list(channels) or _mirror_channels(url)
    _finish(conda_cfg.plan(path, read_existing(path), url, chans, offline), dry_run)


COMMANDS = [config_group]
