"""``torchdepot serve``: serve a mirror over HTTP, or print an nginx config for it."""

from __future__ import annotations

import errno
import re
import sys
from pathlib import Path

import click

from torchdepot.errors import TorchdepotError
from torchdepot.model.trust import insecure_host, install_commands
from torchdepot.ship.nginx import nginx_config
from torchdepot.ship.serve import ServeLimits, client_url, make_server, server_url
from torchdepot.store import manifest as mf

_DEFAULTS = ServeLimits()
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[?[0-9A-Fa-f:.]{2,45}\]?")


def _check_public_host(ctx, param, value: str | None) -> str | None:
    # the name is printed into commands users paste: only a host name or an IP address
    if value is not None and not _HOST_NAME.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not a host name or IP address")
    return value.strip("[]") if value else value


def _index_path(root: Path) -> str:
    """The variant index to show in the banner: whl/cpu when the mirror has it, else its first."""
    try:
        indexes = sorted({t.index for t in mf.load(root).targets if t.kind == "pip" and t.index})
    except (TorchdepotError, OSError, ValueError):
        indexes = []
    return "whl/cpu" if "whl/cpu" in indexes or not indexes else indexes[0]


@click.command("serve")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("mirror/out"),
              show_default=True, help="Mirror root to serve.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (localhost unless told otherwise; 0.0.0.0 for a lab).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port (0: any free port).")
@click.option("--public-host", default=None, metavar="NAME", callback=_check_public_host,
              help="Host name clients use in the printed commands (default: --host, or this machine's "
                   "name when --host is 0.0.0.0 or ::).")
@click.option("--nginx-config", "nginx", is_flag=True, help="Print an nginx server block instead of serving.")
@click.option("--server-name", default="_", show_default=True, help="nginx server_name (with --nginx-config).")
@click.option("--workers", type=click.IntRange(1, 1024), default=_DEFAULTS.workers, show_default=True,
              help="Requests answered at once (idle connections do not hold a worker).")
@click.option("--idle-timeout", type=click.FloatRange(0.1, 3600), default=_DEFAULTS.idle_timeout,
              show_default=True, help="Seconds an idle keep-alive connection is kept.")
@click.option("--max-idle", type=click.IntRange(1, 100_000), default=_DEFAULTS.max_idle, show_default=True,
              help="Idle connections kept; past this the oldest is closed.")
@click.option("--quiet", is_flag=True, help="Do not log requests.")
@click.option("--pull-through", "pull", is_flag=True,
              help="Fetch what clients ask for and the mirror lacks from upstream, once, checked, into --root.")
@click.option("--upstream", "upstreams", multiple=True, metavar="URL",
              help="With --pull-through: PyTorch index base, in failover order (repeatable; as for mirror).")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --pull-through: take upstreams, channel and allow_hosts from this mirror spec.")
@click.option("--offline", is_flag=True, help="With --pull-through: serve only what --root holds; record misses.")
@click.option("--page-ttl", type=click.FloatRange(0, 30 * 86400), default=600.0, show_default=True,
              help="With --pull-through: seconds a page built from upstream is served before upstream is asked again.")
def serve_cmd(root: Path, host: str, port: int, public_host: str | None, nginx: bool, server_name: str, workers: int,
              idle_timeout: float, max_idle: int, quiet: bool, pull: bool, upstreams: tuple[str, ...],
              spec_path: Path | None, offline: bool, page_ttl: float) -> None:
    """Serve a mirror as static files (Range, ETag, 304, PEP 691 JSON), or print an nginx config.

    \b
    Examples:
      torchdepot serve --root mirror/out --port 8000
      torchdepot serve --root mirror/out --host 0.0.0.0 --port 8000 --public-host torchlab
      torchdepot serve --nginx-config --root /srv/torch-mirror --port 80 --server-name torch.lab
      torchdepot serve --root /srv/torch --pull-through --upstream https://download.pytorch.org/whl
    """
    if nginx:
        click.echo(nginx_config(root, port=port if port else 80, server_name=server_name), nl=False)
        return
    if (upstreams or spec_path or offline) and not pull:
        raise click.UsageError("--upstream, --spec and --offline go with --pull-through")
    cache = None
    if pull:
        from torchdepot.store.outdir import check_out_dir

        root = check_out_dir(root, what="--root")
        root.mkdir(parents=True, exist_ok=True)
        cache = _pull_through(root, upstreams, spec_path, offline, page_ttl)
    if not root.is_dir():
        raise click.BadParameter(f"{root} is not a directory", param_hint="--root")
    limits = ServeLimits(workers=workers, idle_timeout=idle_timeout, request_timeout=_DEFAULTS.request_timeout,
                         max_idle=max_idle)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if cache is not None:
            from torchdepot.ship.pullthrough import PullThroughHandler

            httpd = make_server(root, host, port, quiet=quiet, limits=limits, handler_class=PullThroughHandler,
                                cache=cache)
        else:
            httpd = make_server(root, host, port, quiet=quiet, limits=limits)
    except OSError as exc:
        reason = "address already in use (another server? pick another --port)" if exc.errno == errno.EADDRINUSE \
            else (exc.strerror or str(exc))
        raise TorchdepotError(f"cannot serve on {where}: {reason}") from None
    url = client_url(httpd, public_host or host)
    bound = server_url(httpd)
    lines = [f"Serving {root.resolve()} at {url}/" + (f"  (listening on {bound})" if url != bound else "")]
    if cache is not None:
        lines.append("  pull-through: " + ("offline, serving only what the mirror holds" if offline else
                                           "misses fetched from " + ", ".join(cache.sources.upstreams)))
    index = f"{url}/{_index_path(root)}"
    lines += [f"  {cmd}" for cmd in install_commands(index)]
    if insecure_host(index):
        lines.append("  plain HTTP: the trusted-host / allow-insecure-host options above are required off localhost")
    click.echo("\n".join(lines))
    sys.stdout.flush()
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        if cache is not None:
            cache.close()


def _pull_through(root: Path, upstreams: tuple[str, ...], spec_path: Path | None, offline: bool, page_ttl: float):
    """The cache for ``--pull-through``."""
    from torchdepot.net.hostpolicy import HostPolicy
    from torchdepot.ship.pullthrough import PullThrough, Settings, Sources

    settings = Settings(page_ttl=page_ttl, offline=offline)
    if offline:
        return PullThrough(root, Sources(upstreams=(), indexes=(), policy=HostPolicy(frozenset())), settings)
    return PullThrough(root, pull_sources(spec_path, upstreams), settings)


def pull_sources(spec_path: Path | None, upstreams: tuple[str, ...]):
    """Where pull-through misses come from, as for ``mirror``: ``upstreams`` (else the spec's,
    else the default), the channel and ``allow_hosts`` of the spec, dependency indexes and
    find-links from the pip configuration, and the sync's host policy."""
    from torchdepot.net.hostpolicy import netloc_of
    from torchdepot.net.pipconfig import pip_default_index, pip_file_host, read_pip_config
    from torchdepot.ship.pullthrough import Sources
    from torchdepot.spec.mirror import MirrorSpec, load_spec, with_overrides
    from torchdepot.sync.plan import channel_prefix, dependency_sources, host_policy

    spec = load_spec(spec_path) if spec_path is not None else MirrorSpec()
    spec = with_overrides(spec, upstreams=list(upstreams) or None)
    pip = read_pip_config()
    default_index = None if (pip.index_url or pip.no_index) else pip_default_index()
    policy = host_policy(spec, pip, default_index, pip_file_host() if default_index else None)
    indexes, find_links = dependency_sources(pip, default_index)
    conda = tuple((c.name, c.mirrors) for c in spec.conda.channels) if spec.conda is not None else ()
    mirrors = [u for _name, urls in conda for u in urls]
    return Sources(upstreams=tuple(spec.upstreams), indexes=indexes, policy=policy.with_hosts(*map(netloc_of, mirrors)),
                   prefix=channel_prefix(spec.channel), conda=conda, find_links=find_links)


COMMANDS = [serve_cmd]
