"""``torchdepot serve``: serve a mirror over HTTP, or print an nginx config for it."""

from __future__ import annotations

from pathlib import Path

import click

from torchdepot.ship.serve import make_server, nginx_config, server_url


@click.command("serve")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("mirror/out"),
              show_default=True, help="Mirror root to serve.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (localhost unless told otherwise; 0.0.0.0 for a lab).")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: any free port).")
@click.option("--nginx-config", "nginx", is_flag=True, help="Print an nginx server block instead of serving.")
@click.option("--server-name", default="_", show_default=True, help="nginx server_name (with --nginx-config).")
@click.option("--quiet", is_flag=True, help="Do not log requests.")
def serve_cmd(root: Path, host: str, port: int, nginx: bool, server_name: str, quiet: bool) -> None:
    """Serve a mirror as static files (Range, ETag, 304), or print an nginx config.

    \b
    Examples:
      torchdepot serve --root mirror/out --port 8000
      torchdepot serve --nginx-config --root /srv/torch-mirror --port 80 --server-name torch.lab
    """
    if nginx:
        click.echo(nginx_config(root, port=port if port else 80, server_name=server_name), nl=False)
        return
    if not root.is_dir():
        raise click.BadParameter(f"{root} is not a directory", param_hint="--root")
    httpd = make_server(root, host, port, quiet=quiet)
    url = server_url(httpd)
    click.echo(f"Serving {root.resolve()} at {url}/  (pip install --index-url {url}/whl/cpu torch)", err=False)
    import sys
    sys.stdout.flush()
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


COMMANDS = [serve_cmd]
